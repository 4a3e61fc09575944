"""Quota buckets: tokens used per organisation, mail class and local day (the
arithmetic -- limits, days, resets -- is gateway/quota.py).  Exact across gateway
processes: a bucket row is created once (an insert that does nothing on the unique
(org_id, mail_class, day)), and tokens are taken by one conditional UPDATE
(used + n <= limit) on it, never a read then a write; a row lock (PostgreSQL) or
the write lock (SQLite) orders concurrent takers, so together they never exceed
the limit.  Giving back is one UPDATE as well, never below zero."""

from __future__ import annotations

from datetime import date

from sqlalchemy import Connection, select, update

from gateway.store import models as m
from gateway.store.sql import insert_for, now

_BUCKETS = m.QuotaBucket.__table__


def ensure_bucket(conn: Connection, org_id: str, mail_class: str, day: date, limit: int) -> None:
    """The day's bucket, empty, unless it is there already."""
    conn.execute(
        insert_for(conn, _BUCKETS)
        .values(org_id=org_id, mail_class=mail_class, day=day, used=0, day_limit=limit, updated_at=now())
        .on_conflict_do_nothing(index_elements=["org_id", "mail_class", "day"])
    )


def take(conn: Connection, org_id: str, mail_class: str, day: date, count: int, limit: int) -> int | None:
    """Take ``count`` tokens if the bucket has that many left under ``limit``, in one
    conditional UPDATE; the tokens used now, or None when they were not taken."""
    table = _BUCKETS
    return conn.execute(
        update(table)
        .where(table.c.org_id == org_id, table.c.mail_class == mail_class, table.c.day == day,
               table.c.used + count <= limit)
        .values(used=table.c.used + count, day_limit=limit, updated_at=now())
        .returning(table.c.used)
    ).scalar_one_or_none()


def first_refusal(conn: Connection, org_id: str, mail_class: str, day: date) -> bool:
    """Mark the day's bucket exhausted; True only for the first refusal of the day (one
    conditional UPDATE: exact across processes)."""
    table = _BUCKETS
    return conn.execute(
        update(table)
        .where(table.c.org_id == org_id, table.c.mail_class == mail_class, table.c.day == day,
               table.c.exhausted_at.is_(None))
        .values(exhausted_at=now())
    ).rowcount == 1


def give_back(conn: Connection, org_id: str, mail_class: str, day: date, count: int) -> None:
    """Return ``count`` tokens to the day's bucket (one UPDATE; never below zero)."""
    table = _BUCKETS
    conn.execute(
        update(table)
        .where(table.c.org_id == org_id, table.c.mail_class == mail_class,
               table.c.day == day, table.c.used >= count)
        .values(used=table.c.used - count, updated_at=now())
    )


def used(conn: Connection, org_id: str, day: date) -> dict[str, int]:
    """Tokens used on the day, per mail class that has a bucket."""
    table = _BUCKETS
    return dict(conn.execute(
        select(table.c.mail_class, table.c.used).where(table.c.org_id == org_id, table.c.day == day)
    ).all())
