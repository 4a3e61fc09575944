"""The CRM's API: tokens, people the CRM owns, sharing, who moved a record

- api_tokens: bearer tokens per organisation (only a SHA-256 of each is kept; the
  token is 160 random bits, so a slow hash adds nothing), optionally bound to a user,
  with a scope (read | write), revocable.
- emails.visibility: private | custom | public, from the filing user's sharing
  setting at filing time (SPEC 2.12).  Mail filed before this revision: dropbox mail
  becomes private (the setting of that time is unknown: the narrowest is the safe
  guess), alias and outbound mail public within the organisation.
- leads/contacts: external_id (the CRM's own id; unique per organisation when
  given) and updated_at (for updated_since=; set to created_at for existing rows).
- record_stage_changes.actor: who moved a record (a token's name) when a person did.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(63), sa.ForeignKey("organisations.id", name="fk_api_tokens_org_id_organisations"),
                  nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("user_id", _ID, sa.ForeignKey("users.id", name="fk_api_tokens_user_id_users"), nullable=True),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )
    op.create_index("ix_api_tokens_org_id", "api_tokens", ["org_id"])
    op.add_column("emails", sa.Column("visibility", sa.String(10), nullable=False, server_default="public"))
    op.execute("UPDATE emails SET visibility = 'private' WHERE source = 'dropbox'")
    for table in ("leads", "contacts"):
        op.add_column(table, sa.Column("external_id", sa.String(255), nullable=True))
        op.add_column(table, sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        op.execute(f"UPDATE {table} SET updated_at = created_at")
        op.create_index(f"uq_{table}_org_id_external_id", table, ["org_id", "external_id"], unique=True)
        op.create_index(f"ix_{table}_org_id_updated_at", table, ["org_id", "updated_at"])
    op.add_column("record_stage_changes", sa.Column("actor", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("record_stage_changes", "actor")
    for table in ("leads", "contacts"):
        op.drop_index(f"ix_{table}_org_id_updated_at", table)
        op.drop_index(f"uq_{table}_org_id_external_id", table)
        op.drop_column(table, "updated_at")
        op.drop_column(table, "external_id")
    op.drop_column("emails", "visibility")
    op.drop_index("ix_api_tokens_org_id", "api_tokens")
    op.drop_table("api_tokens")
