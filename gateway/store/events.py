"""The outbox (issue 14): events written in the transaction of the change they tell
about, put in their organisation's feed order after commit, read by the pull feed and
the webhook deliveries, pruned after the retention.

Feed order is commit order.  Ids come from a sequence (PostgreSQL) that does not
follow commit order across concurrent transactions, so a reader going "after id N"
could pass over an event committed late with a smaller id.  Instead, ``sequence()``
gives each committed event the next ``seq`` of its organisation, under the lock of
the organisation's counter row (one sequencer at a time, in any number of
processes): it only sees committed events, so an event committed later always gets
a greater seq.  Events of one record are written under the record's row lock, so
their ids -- and so their seqs -- follow the record's history too.  An event is in
no feed and no webhook until it has its seq (the daemon sequences right after its
own commits, and every ``poll_seconds`` for other processes')."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple, Sequence

from sqlalchemy import Connection, Row, delete, func, insert, select, text, update

from gateway.store import models as m
from gateway.store.prepared import PerDialect, Prepared
from gateway.store.sql import insert_for, now

_EVENTS, _COUNTERS = m.Event.__table__, m.EventCounter.__table__
_DELIVERIES = m.WebhookDelivery.__table__

# Events sequenced per organisation per step (a step is one short transaction).
SEQUENCE_BATCH = 1000


class NewEvent(NamedTuple):
    type: str
    data: dict[str, Any]
    record_id: int | None = None


def append(conn: Connection, org_id: str, events: Sequence[NewEvent]) -> None:
    """Write ``events`` (one batch on the driver's cursor: on the filing's hot path),
    in the caller's transaction."""
    if not events:
        return
    at = now()
    _insert(conn).run_many(conn, [{"org_id": org_id, "type": e.type, "data": e.data, "record_id": e.record_id,
                                   "created_at": at} for e in events])


_insert = PerDialect(lambda conn: Prepared(insert(_EVENTS), conn.dialect,
                                           ("org_id", "type", "data", "record_id", "created_at")))


def unsequenced_orgs(conn: Connection) -> list[str]:
    """Organisations with committed events that have no seq yet."""
    return list(conn.execute(select(_EVENTS.c.org_id).where(_EVENTS.c.seq.is_(None)).distinct()).scalars())


def sequence(conn: Connection, org_id: str, limit: int = SEQUENCE_BATCH) -> int:
    """Give the organisation's committed events without a seq the next seqs, in id
    order; how many.  Three statements however many events: the counter row locked,
    one UPDATE numbering them (row_number over their ids), the counter moved.  The
    caller commits (the counter row's lock is held till then)."""
    last = conn.execute(select(_COUNTERS.c.last).where(_COUNTERS.c.org_id == org_id).with_for_update()
                        ).scalar_one_or_none()
    if last is None:
        conn.execute(insert_for(conn, _COUNTERS).values(org_id=org_id, last=0).on_conflict_do_nothing())
        last = conn.execute(select(_COUNTERS.c.last).where(_COUNTERS.c.org_id == org_id).with_for_update()
                            ).scalar_one()
    numbered = conn.execute(_NUMBER, {"org_id": org_id, "last": last, "limit": limit}).rowcount
    if numbered:
        conn.execute(update(_COUNTERS).where(_COUNTERS.c.org_id == org_id).values(last=last + numbered))
    return numbered


# UPDATE ... FROM: SQLite 3.33+ and PostgreSQL alike.
_NUMBER = text(
    "UPDATE events SET seq = :last + numbered.n "
    "FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM events "
    "      WHERE org_id = :org_id AND seq IS NULL ORDER BY id LIMIT :limit) AS numbered "
    "WHERE events.id = numbered.id")


def head(conn: Connection, org_id: str) -> int:
    """The organisation's last seq given (0: none yet)."""
    return conn.execute(select(_COUNTERS.c.last).where(_COUNTERS.c.org_id == org_id)).scalar_one_or_none() or 0


def feed(conn: Connection, org_id: str, after: int, limit: int,
         types: Sequence[str] | None = None) -> Sequence[Row[Any]]:
    """Up to ``limit`` of the organisation's sequenced events after seq ``after``,
    in feed order (seq, type, record_id, created_at, data)."""
    query = (select(_EVENTS.c.seq, _EVENTS.c.type, _EVENTS.c.record_id, _EVENTS.c.created_at, _EVENTS.c.data)
             .where(_EVENTS.c.org_id == org_id, _EVENTS.c.seq > after))
    if types:
        query = query.where(_EVENTS.c.type.in_(list(types)))
    return conn.execute(query.order_by(_EVENTS.c.seq).limit(limit)).all()


def pending_count(conn: Connection) -> int:
    """Events not yet in a feed (no seq)."""
    return conn.execute(select(func.count()).select_from(_EVENTS).where(_EVENTS.c.seq.is_(None))).scalar_one()


def prune(conn: Connection, before: datetime, limit: int = 5000) -> int:
    """Delete up to ``limit`` sequenced events created before ``before`` with their
    webhook deliveries (delivered, failed or still pending: kept no longer than the
    events); how many events."""
    ids = list(conn.execute(select(_EVENTS.c.id).where(_EVENTS.c.created_at < before, _EVENTS.c.seq.is_not(None))
                            .order_by(_EVENTS.c.id).limit(limit)).scalars())
    if not ids:
        return 0
    conn.execute(delete(_DELIVERIES).where(_DELIVERIES.c.event_id.in_(ids)))
    conn.execute(delete(_EVENTS).where(_EVENTS.c.id.in_(ids)))
    return len(ids)
