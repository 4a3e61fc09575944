"""Small helpers every store module uses: the time stamp and the dialect's INSERT
(for ON CONFLICT, which SQLite and PostgreSQL spell alike)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite


def now() -> datetime:
    return datetime.now(timezone.utc)


def insert_for(conn: Connection, table: Any):  # type: ignore[no-untyped-def]
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
