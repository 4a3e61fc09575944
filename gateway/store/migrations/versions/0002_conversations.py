"""conversations: stage history, participants, email kind and sort time

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "record_stage_changes",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("org_id", sa.String(length=63), nullable=False),
        sa.Column("record_id", Id, nullable=False),
        sa.Column("from_stage", sa.String(length=100), nullable=True),
        sa.Column("to_stage", sa.String(length=100), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cause", sa.String(length=32), nullable=False),
        sa.Column("email_id", Id, nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name=op.f("fk_record_stage_changes_org_id_organisations")),
        sa.ForeignKeyConstraint(["record_id"], ["records.id"], name=op.f("fk_record_stage_changes_record_id_records")),
        sa.ForeignKeyConstraint(["email_id"], ["emails.id"], name=op.f("fk_record_stage_changes_email_id_emails")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_record_stage_changes")),
    )
    op.create_index(op.f("ix_record_stage_changes_record_id"), "record_stage_changes", ["record_id"])
    op.create_table(
        "record_participants",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("org_id", sa.String(length=63), nullable=False),
        sa.Column("record_id", Id, nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name=op.f("fk_record_participants_org_id_organisations")),
        sa.ForeignKeyConstraint(["record_id"], ["records.id"], name=op.f("fk_record_participants_record_id_records")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_record_participants")),
        sa.UniqueConstraint("record_id", "address", name=op.f("uq_record_participants_record_id_address")),
    )
    with op.batch_alter_table("emails") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="message"))
        batch.add_column(sa.Column("sort_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("emails") as batch:
        batch.drop_column("sort_at")
        batch.drop_column("kind")
    op.drop_table("record_participants")
    op.drop_index(op.f("ix_record_stage_changes_record_id"), table_name="record_stage_changes")
    op.drop_table("record_stage_changes")
