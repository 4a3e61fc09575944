"""quarantine and delivery failure counts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "delivery_failures",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("org_id", sa.String(length=63), nullable=False),
        sa.Column("route", sa.String(length=100), nullable=False),
        sa.Column("message_key", sa.String(length=1000), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name=op.f("fk_delivery_failures_org_id_organisations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_failures")),
        sa.UniqueConstraint("org_id", "route", "message_key", name=op.f("uq_delivery_failures_org_id_route_message_key")),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("org_id", sa.String(length=63), nullable=False),
        sa.Column("route", sa.String(length=100), nullable=False),
        sa.Column("route_ref", sa.String(length=320), nullable=False),
        sa.Column("message_key", sa.String(length=1000), nullable=False),
        sa.Column("envelope_sender", sa.String(length=320), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replay_email_id", Id, nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name=op.f("fk_quarantine_org_id_organisations")),
        sa.ForeignKeyConstraint(["replay_email_id"], ["emails.id"], name=op.f("fk_quarantine_replay_email_id_emails")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantine")),
        sa.UniqueConstraint("org_id", "route", "message_key", name=op.f("uq_quarantine_org_id_route_message_key")),
    )


def downgrade() -> None:
    op.drop_table("quarantine")
    op.drop_table("delivery_failures")
