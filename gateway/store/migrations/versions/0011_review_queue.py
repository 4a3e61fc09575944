"""The review queue: mail held for review instead of filed; new records counted per
sender and window (issue 16)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "review_queue",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(63), sa.ForeignKey("organisations.id"), nullable=False),
        sa.Column("route", sa.String(100), nullable=False),
        sa.Column("route_ref", sa.String(320), nullable=False),
        sa.Column("delivery_id", _ID, sa.ForeignKey("deliveries.id"), nullable=False),
        sa.Column("envelope_sender", sa.String(320), nullable=False),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("decided_at", _TS, nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=True),
        sa.Column("email_id", _ID, sa.ForeignKey("emails.id"), nullable=True),
        sa.UniqueConstraint("delivery_id", name="uq_review_queue_delivery_id"),
    )
    op.create_index("ix_review_queue_org_id_status", "review_queue", ["org_id", "status", "id"])
    op.create_table(
        "sender_counts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(63), sa.ForeignKey("organisations.id"), nullable=False),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("window_start", _TS, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.UniqueConstraint("org_id", "sender", "window_start", name="uq_sender_counts_org_id_sender_window_start"),
    )


def downgrade() -> None:
    op.drop_table("sender_counts")
    op.drop_index("ix_review_queue_org_id_status", "review_queue")
    op.drop_table("review_queue")
