"""The review queue's rows (issue 16): a held message is written in the transaction that
claims its delivery (one row per delivery: a unique constraint), and decided by one
conditional UPDATE ... WHERE status = 'pending', so of two reviewers (or two
processes) deciding at once exactly one decides.  gateway/review.py is the logic."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import Connection, Row, bindparam, delete, func, literal_column, select, update

from gateway.message import ParsedMessage
from gateway.store import models as m
from gateway.store.prepared import PerDialect, Prepared
from gateway.store.sql import insert_for, now, tenant_rows

_QUEUE, _COUNTS = m.HeldMessage.__table__, m.SenderCount.__table__

# Text kept of a hold's evidence and of a rejection's reason.
TEXT_MAX = 2000
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"


def hold(conn: Connection, org_id: str, route: str, route_ref: str, delivery_id: int, envelope_sender: str,
         sender: str, parsed: ParsedMessage, reason: str, evidence: str, at: datetime) -> int:
    """Keep the message for review; its id."""
    return conn.execute(_QUEUE.insert().values(
        org_id=org_id, route=route, route_ref=route_ref, delivery_id=delivery_id, envelope_sender=envelope_sender,
        sender=sender, subject=parsed.subject, message_id=parsed.message_id, content=parsed.raw, reason=reason,
        evidence=evidence[:TEXT_MAX], status=PENDING, created_at=at,
    ).returning(_QUEUE.c.id)).scalar_one()


_LISTED = [c for c in _QUEUE.c if c.name != "content"]


def listing(conn: Connection, org_id: str | None = None, status: str | None = None, *, after: int = 0,
            limit: int | None = None) -> Sequence[Row[Any]]:
    """The held messages (of ``org_id``, in ``status`` when given; with an id above
    ``after``; at most ``limit``) without their content, by id."""
    query = select(*_LISTED).where(_QUEUE.c.id > after)
    if status is not None:
        query = query.where(_QUEUE.c.status == status)
    if limit is not None:
        query = query.limit(limit)
    return tenant_rows(conn, query, _QUEUE, org_id)


def get(conn: Connection, held_id: int, org_id: str | None = None, *, lock: bool = False) -> Row[Any] | None:
    """One held message, its content too (``lock``: FOR UPDATE until the transaction ends)."""
    query = select(_QUEUE).where(_QUEUE.c.id == held_id)
    if org_id is not None:
        query = query.where(_QUEUE.c.org_id == org_id)
    if lock:
        query = query.with_for_update()
    return conn.execute(query).one_or_none()


def decide(conn: Connection, held_id: int, status: str, by: str, note: str | None = None,
           email_id: int | None = None) -> bool:
    """Approve or reject a pending message; False when it was decided already."""
    done = conn.execute(update(_QUEUE).where(_QUEUE.c.id == held_id, _QUEUE.c.status == PENDING).values(
        status=status, decided_at=now(), decided_by=by[:200], decision_note=(note or None) and note[:TEXT_MAX],
        email_id=email_id))
    return done.rowcount == 1


def pending_per_org(conn: Connection) -> dict[str, tuple[int, datetime]]:
    """Per organisation with pending messages: how many, and when the oldest was held."""
    rows = conn.execute(select(_QUEUE.c.org_id, func.count(), func.min(_QUEUE.c.created_at))
                        .where(_QUEUE.c.status == PENDING).group_by(_QUEUE.c.org_id)).all()
    return {org: (int(count), oldest) for org, count, oldest in rows}


def prune(conn: Connection, decided_before: datetime) -> int:
    """Delete the messages decided before the time (and the sender counts of windows
    that ended before it); how many messages."""
    conn.execute(delete(_COUNTS).where(_COUNTS.c.window_start < decided_before))
    return conn.execute(delete(_QUEUE).where(_QUEUE.c.status != PENDING,
                                             _QUEUE.c.decided_at < decided_before)).rowcount


def _count_statement(conn: Connection) -> Prepared:
    stmt = insert_for(conn, _COUNTS).values(org_id=bindparam("org_id"), sender=bindparam("sender"),
                                            window_start=bindparam("window_start"), count=bindparam("count"))
    stmt = stmt.on_conflict_do_update(index_elements=["org_id", "sender", "window_start"],
                                      set_={"count": _COUNTS.c.count + literal_column("1")}).returning(_COUNTS.c.count)
    return Prepared(stmt, conn.dialect)


# On the alias route's hot path: compiled once, run on the driver's cursor (store/prepared.py).
_count = PerDialect(_count_statement)


def count_new_record(conn: Connection, org_id: str, sender: str, window_start: datetime) -> int:
    """One more new record from ``sender`` in the window: the count so far, this one
    included (one upsert; its row lock holds concurrent ones until this transaction
    ends)."""
    return int(_count(conn).scalar(conn, {"org_id": org_id, "sender": sender, "window_start": window_start,
                                         "count": 1}))
