"""quota buckets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "quota_buckets",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("org_id", sa.String(length=63), nullable=False),
        sa.Column("mail_class", sa.String(length=16), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("day_limit", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name=op.f("fk_quota_buckets_org_id_organisations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_buckets")),
        sa.UniqueConstraint("org_id", "mail_class", "day", name=op.f("uq_quota_buckets_org_id_mail_class_day")),
    )


def downgrade() -> None:
    op.drop_table("quota_buckets")
