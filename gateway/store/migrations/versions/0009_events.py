"""Events for CRMs: the outbox, its per-organisation feed order, webhook endpoints and
their deliveries (issue 14)

- events: one row per change a CRM is told about, written in the transaction of the
  change; seq (the place in the organisation's feed) is given after commit, in
  commit order, by the sequencer; ids never reused (AUTOINCREMENT on SQLite).
- event_counters: the last seq per organisation.
- webhook_endpoints: the [[webhooks]] of the rules, by (organisation, url), with the
  last seq handed to deliveries.
- webhook_deliveries: one event for one endpoint, pending / delivered / failed.
- quota_buckets.exhausted_at: the first refusal of a day (told once).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def _org() -> sa.Column:
    return sa.Column("org_id", sa.String(63), sa.ForeignKey("organisations.id"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        _org(),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("record_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.UniqueConstraint("org_id", "seq", name="uq_events_org_id_seq"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_unsequenced", "events", ["org_id", "id"],
                    postgresql_where=sa.text("seq IS NULL"), sqlite_where=sa.text("seq IS NULL"))
    op.create_index("ix_events_org_id_created_at", "events", ["org_id", "created_at"])
    op.create_table(
        "event_counters",
        sa.Column("org_id", sa.String(63), sa.ForeignKey("organisations.id"), primary_key=True),
        sa.Column("last", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        _org(),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("events", sa.JSON(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("last_success_at", _TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", _TS, nullable=True),
        sa.UniqueConstraint("org_id", "url", name="uq_webhook_endpoints_org_id_url"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        _org(),
        sa.Column("endpoint_id", _ID, sa.ForeignKey("webhook_endpoints.id"), nullable=False),
        sa.Column("event_id", _ID, sa.ForeignKey("events.id"), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("record_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("lease_until", _TS, nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_id"),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["endpoint_id", "status", "next_attempt_at"])
    op.create_index("ix_webhook_deliveries_event_id", "webhook_deliveries", ["event_id"])
    # The pass's questions answered by seeks, however large a dead endpoint's backlog:
    # attempts in flight, and a record's earlier event still pending.
    pending = sa.text("status = 'pending'")
    op.create_index("ix_webhook_deliveries_leased", "webhook_deliveries", ["endpoint_id", "lease_until"],
                    postgresql_where=pending, sqlite_where=pending)
    op.create_index("ix_webhook_deliveries_record_order", "webhook_deliveries", ["endpoint_id", "record_id", "seq"],
                    postgresql_where=pending, sqlite_where=pending)
    op.add_column("quota_buckets", sa.Column("exhausted_at", _TS, nullable=True))


def downgrade() -> None:
    op.drop_column("quota_buckets", "exhausted_at")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_table("event_counters")
    op.drop_table("events")
