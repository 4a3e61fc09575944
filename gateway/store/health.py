"""The database itself rather than an aggregate: whether it answers at all, for the
readiness probe (gateway/probes.py).  It reads no table, so it needs no exactness
and says nothing about the schema; the probe learns that from the quarantine count
it reads next (store/quarantine.py)."""

from __future__ import annotations

from sqlalchemy import Connection, text


def ping(conn: Connection) -> None:
    """SELECT 1; raises when the database does not answer."""
    conn.execute(text("SELECT 1"))
