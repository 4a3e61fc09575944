"""The quarantine: failure counts per (organisation, route, message key) and the
messages kept whole after too many (gateway/quarantine.py decides when).  Both
tables carry a unique constraint on (org_id, route, message_key), and every write
here is one statement on it -- an upsert that adds one attempt and returns the new
count, an insert that keeps a message only once -- so concurrent failures of the
same message in several processes count exactly and quarantine it once."""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import Connection, Row, func, select, update

from gateway.store import models as m
from gateway.store.sql import insert_for, now, tenant_rows

_FAILURES, _QUARANTINE = m.DeliveryFailure.__table__, m.Quarantined.__table__

# Errors are kept to this many characters.
ERROR_MAX = 2000


def count_failure(conn: Connection, org_id: str, route: str, message_key: str, error: str) -> int:
    """One more failure of the message on the route; the count so far (one statement)."""
    table = _FAILURES
    stmt = insert_for(conn, table).values(
        org_id=org_id, route=route, message_key=message_key, attempts=1,
        last_error=error[:ERROR_MAX], updated_at=now())
    stmt = stmt.on_conflict_do_update(
        index_elements=["org_id", "route", "message_key"],
        set_={"attempts": table.c.attempts + 1, "last_error": error[:ERROR_MAX], "updated_at": now()},
    ).returning(table.c.attempts)
    return conn.execute(stmt).scalar_one()


def keep(conn: Connection, org_id: str, route: str, route_ref: str, message_key: str, envelope_sender: str,
         content: bytes, attempts: int, error: str) -> int | None:
    """Keep the message; its id, or None when it is kept already."""
    table = _QUARANTINE
    return conn.execute(
        insert_for(conn, table).values(
            org_id=org_id, route=route, route_ref=route_ref, message_key=message_key,
            envelope_sender=envelope_sender, content=content, attempts=attempts, error=error[:ERROR_MAX],
            created_at=now())
        .on_conflict_do_nothing(index_elements=["org_id", "route", "message_key"])
        .returning(table.c.id)
    ).scalar_one_or_none()


def listing(conn: Connection, org_id: str | None = None) -> Sequence[Row[Any]]:
    """The kept messages (of ``org_id`` when given) without their content, by id."""
    table = _QUARANTINE
    query = select(table.c.id, table.c.org_id, table.c.route, table.c.route_ref, table.c.message_key,
                   table.c.envelope_sender, table.c.attempts, table.c.error, table.c.created_at,
                   table.c.replayed_at, table.c.replay_email_id)
    return tenant_rows(conn, query, table, org_id)


def get(conn: Connection, quarantine_id: int) -> Row[Any] | None:
    """One kept message (every column, its content too)."""
    return conn.execute(select(_QUARANTINE).where(_QUARANTINE.c.id == quarantine_id)).one_or_none()


def mark_replayed(conn: Connection, quarantine_id: int, email_id: int | None) -> None:
    """The kept message was filed: as ``email_id``, or as nothing (dropped, or a duplicate)."""
    conn.execute(update(_QUARANTINE).where(_QUARANTINE.c.id == quarantine_id)
                 .values(replayed_at=now(), replay_email_id=email_id))


def waiting_per_org(conn: Connection) -> dict[str, int]:
    """The number of kept messages not replayed yet, per organisation (those with
    none left out)."""
    rows = conn.execute(select(_QUARANTINE.c.org_id, func.count()).where(_QUARANTINE.c.replayed_at.is_(None))
                        .group_by(_QUARANTINE.c.org_id)).all()
    return {org: int(count) for org, count in rows}
