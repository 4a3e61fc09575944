"""The database schema. Every tenant-owned table carries org_id (shard key).

Uniqueness that must hold across gateway processes is a constraint here, never a
Python check: one lead and one contact per normalised address per organisation,
one filing per (organisation, route, message key).
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Organisation(Base):
    __tablename__ = "organisations"
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("org_id", "email"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str] = mapped_column(String(200), default="")
    last_name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(100))
    # False when the user is gone from the rules; rows stay for history.
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class DropboxAddress(Base):
    """The secret part of a user's dropbox address (SPEC 2.2).

    The token is the primary key: a regenerate replaces the row's token, so the old
    address stops working in every process at the next lookup.
    """

    __tablename__ = "dropbox_addresses"
    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Person:
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    # Normalised address (gateway.addresses.normalise).
    email: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str] = mapped_column(String(200), default="")
    last_name: Mapped[str] = mapped_column(String(320), default="")
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    source: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The CRM's own id (API and import), unique per organisation when given.
    external_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Lead(_Person, Base):
    __tablename__ = "leads"
    __table_args__ = (
        UniqueConstraint("org_id", "email"),
        Index("uq_leads_org_id_external_id", "org_id", "external_id", unique=True),
        Index("ix_leads_org_id_updated_at", "org_id", "updated_at"),
        # Ids never reused: links of a deleted person stay its history (0008).
        {"sqlite_autoincrement": True},
    )


class Contact(_Person, Base):
    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("org_id", "email"),
        Index("uq_contacts_org_id_external_id", "org_id", "external_id", unique=True),
        Index("ix_contacts_org_id_updated_at", "org_id", "updated_at"),
        # Ids never reused: links of a deleted person stay its history (0008).
        {"sqlite_autoincrement": True},
    )


class Pipeline(Base):
    __tablename__ = "pipelines"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    name: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Record(Base):
    """A pipeline record (a deal or a ticket)."""

    __tablename__ = "records"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"), index=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id"))
    stage: Mapped[str] = mapped_column(String(100))
    title: Mapped[str] = mapped_column(Text)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StageChange(Base):
    """A record's stage history: every change, with its cause."""

    __tablename__ = "record_stage_changes"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    record_id: Mapped[int] = mapped_column(ForeignKey("records.id"), index=True)
    from_stage: Mapped[str | None] = mapped_column(String(100), nullable=True)
    to_stage: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # created | reply | manual
    cause: Mapped[str] = mapped_column(String(32))
    email_id: Mapped[int | None] = mapped_column(ForeignKey("emails.id"), nullable=True)
    # Who moved it, when a person did (an API token's name).
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)


class Participant(Base):
    """Addresses that took part in a record's conversation (its contact, every sender).
    A subject token only threads mail from one of them."""

    __tablename__ = "record_participants"
    __table_args__ = (UniqueConstraint("record_id", "address"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    record_id: Mapped[int] = mapped_column(ForeignKey("records.id"))
    address: Mapped[str] = mapped_column(String(320))


class Email(Base):
    """One stored message; raw bytes live in email_raw."""

    __tablename__ = "emails"
    __table_args__ = (Index("ix_emails_org_message_id", "org_id", "message_id"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    message_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    from_name: Mapped[str] = mapped_column(Text, default="")
    from_address: Mapped[str] = mapped_column(Text, default="")
    to_addresses: Mapped[list] = mapped_column(JSON, default=list)
    cc_addresses: Mapped[list] = mapped_column(JSON, default=list)
    date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    direction: Mapped[str] = mapped_column(String(16))  # inbound | outbound
    source: Mapped[str] = mapped_column(String(32))  # dropbox | alias | relay
    filed_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    text_body: Mapped[str] = mapped_column(Text, default="")
    html_body: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    in_reply_to: Mapped[list] = mapped_column(JSON, default=list)
    references: Mapped[list] = mapped_column(JSON, default=list)
    # message | auto_reply | bounce | loop (SPEC 3 / issue 3: noise never reopens)
    kind: Mapped[str] = mapped_column(String(16), default="message", server_default="message")
    # private | custom | public: the filing user's sharing setting at filing time
    # (SPEC 2.12); alias and outbound mail are public within the organisation.
    visibility: Mapped[str] = mapped_column(String(10), server_default="public")
    # Conversation order: Date, or arrival when Date is missing, bad or in the future.
    sort_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The text its author wrote: quoted history and signature apart (issue 15).
    new_text: Mapped[str] = mapped_column(Text, server_default="")
    # A forward filed as its original: who forwarded it, and their note above it.
    forwarded_by: Mapped[str | None] = mapped_column(String(320), nullable=True)
    forward_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A meeting invitation's fields (gateway/parse/invitations.py; shape in gateway/views.py).
    invitation: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class EmailRaw(Base):
    __tablename__ = "email_raw"
    email_id: Mapped[int] = mapped_column(ForeignKey("emails.id"), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    content: Mapped[bytes] = mapped_column(LargeBinary)


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    email_id: Mapped[int] = mapped_column(ForeignKey("emails.id"), index=True)
    filename: Mapped[str] = mapped_column(Text, default="")
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)


class Link(Base):
    """An email filed under a lead, contact or record."""

    __tablename__ = "links"
    __table_args__ = (
        UniqueConstraint("email_id", "kind", "target_id"),
        Index("ix_links_org_kind_target", "org_id", "kind", "target_id"),
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    email_id: Mapped[int] = mapped_column(ForeignKey("emails.id"))
    kind: Mapped[str] = mapped_column(String(16))  # lead | contact | record
    target_id: Mapped[int] = mapped_column(Id)


class QuotaBucket(Base):
    """Tokens used per organisation, class and local day (gateway.quota)."""

    __tablename__ = "quota_buckets"
    __table_args__ = (UniqueConstraint("org_id", "mail_class", "day"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    mail_class: Mapped[str] = mapped_column(String(16))
    day: Mapped[date] = mapped_column(Date)
    used: Mapped[int] = mapped_column(Integer)
    day_limit: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The first refusal of the day (quota.exhausted is told once per bucket).
    exhausted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DeliveryFailure(Base):
    """Internal errors per (organisation, route, message): after too many, quarantine."""

    __tablename__ = "delivery_failures"
    __table_args__ = (UniqueConstraint("org_id", "route", "message_key"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    route: Mapped[str] = mapped_column(String(100))
    message_key: Mapped[str] = mapped_column(String(1000))
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Quarantined(Base):
    """A message kept whole because filing it kept failing with our own error."""

    __tablename__ = "quarantine"
    __table_args__ = (UniqueConstraint("org_id", "route", "message_key"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    route: Mapped[str] = mapped_column(String(100))
    # The alias address or the dropbox user's e-mail: how to find the route again.
    route_ref: Mapped[str] = mapped_column(String(320))
    message_key: Mapped[str] = mapped_column(String(1000))
    envelope_sender: Mapped[str] = mapped_column(String(320))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    replay_email_id: Mapped[int | None] = mapped_column(ForeignKey("emails.id"), nullable=True)


class HeldMessage(Base):
    """A message held for review instead of filed (issue 16): kept whole with its route,
    answered 250, filed when a reviewer approves it (through the same filing code, on
    the delivery's own idempotency key) or kept as rejected; both are pruned after
    [review] retention_days."""

    __tablename__ = "review_queue"
    __table_args__ = (
        UniqueConstraint("delivery_id"),
        Index("ix_review_queue_org_id_status", "org_id", "status", "id"),
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    route: Mapped[str] = mapped_column(String(100))
    # The dropbox user's e-mail or the alias address: how to find the route again.
    route_ref: Mapped[str] = mapped_column(String(320))
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"))
    envelope_sender: Mapped[str] = mapped_column(String(320))
    sender: Mapped[str] = mapped_column(String(320))  # the From address, for the listing
    subject: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(String(32))  # authentication | ...
    evidence: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10))  # pending | approved | rejected
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    decision_note: Mapped[str | None] = mapped_column(Text, nullable=True)  # a rejection's reason
    email_id: Mapped[int | None] = mapped_column(ForeignKey("emails.id"), nullable=True)  # what approval filed


class SenderCount(Base):
    """New records per sender address and window (issue 16's loop and flood guard):
    one row per (organisation, sender, window start), raised by one upsert in the
    filing's transaction -- its row lock makes concurrent filings from one sender,
    in any process, count one after another."""

    __tablename__ = "sender_counts"
    __table_args__ = (UniqueConstraint("org_id", "sender", "window_start"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    sender: Mapped[str] = mapped_column(String(320))
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    count: Mapped[int] = mapped_column(Integer)


class Delivery(Base):
    """One accepted delivery to one route: the idempotency key and why it went so.

    (org_id, route, message_key) is unique: the same message delivered again to
    the same route files nothing new.  message_key is the Message-ID together with
    the content digest, or the digest alone when there is none (deliveries.message_key).
    """

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("org_id", "route", "message_key"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    route: Mapped[str] = mapped_column(String(100))
    message_key: Mapped[str] = mapped_column(String(1000))
    email_id: Mapped[int | None] = mapped_column(ForeignKey("emails.id"), nullable=True)
    decision: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    """A bearer token of the CRM's API: per organisation, optionally bound to a user
    (then it sees what that user may see), read or write.  Only its SHA-256 is kept."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    scope: Mapped[str] = mapped_column(String(8))  # read | write
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Event(Base):
    """The outbox (issue 14): one row per change a CRM is told about, written in the
    transaction of the change.  ``seq`` is the event's place in its organisation's
    feed, given after commit by the sequencer (gateway/store/events.py) in commit
    order; until then the event is in no feed and no webhook."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("org_id", "seq"),
        Index("ix_events_unsequenced", "org_id", "id", postgresql_where="seq IS NULL", sqlite_where="seq IS NULL"),
        Index("ix_events_org_id_created_at", "org_id", "created_at"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    type: Mapped[str] = mapped_column(String(40))
    # Events of one record reach each endpoint in order.
    record_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    data: Mapped[dict] = mapped_column(JSON)


class EventCounter(Base):
    """The last ``seq`` given per organisation (the sequencer's lock, too)."""

    __tablename__ = "event_counters"
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"), primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger)


class WebhookEndpoint(Base):
    """A `[[webhooks]]` entry of an organisation's rules, by URL; ``cursor`` is the
    last seq handed to its deliveries."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (UniqueConstraint("org_id", "url"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list | None] = mapped_column(JSON, nullable=True)  # None: every type
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookDelivery(Base):
    """One event for one endpoint: pending (due at next_attempt_at; taken by one
    process until lease_until), delivered, or failed after the last retry."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        Index("ix_webhook_deliveries_due", "endpoint_id", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_event_id", "event_id"),
        Index("ix_webhook_deliveries_leased", "endpoint_id", "lease_until",
              postgresql_where="status = 'pending'", sqlite_where="status = 'pending'"),
        Index("ix_webhook_deliveries_record_order", "endpoint_id", "record_id", "seq",
              postgresql_where="status = 'pending'", sqlite_where="status = 'pending'"),
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    record_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(10))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
