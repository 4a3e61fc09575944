"""Small helpers every store module uses: the time stamp and the dialect's INSERT
(for ON CONFLICT, which SQLite and PostgreSQL spell alike)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import Connection, Row, Select, Table
from sqlalchemy.dialects import postgresql, sqlite


def now() -> datetime:
    return datetime.now(timezone.utc)


def insert_for(conn: Connection, table: Any):  # type: ignore[no-untyped-def]
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def tenant_rows(conn: Connection, query: Select[Any], table: Table, org_id: str | None) -> Sequence[Row[Any]]:
    """The rows of ``query`` on ``table`` -- only ``org_id``'s when given -- by id."""
    if org_id:
        query = query.where(table.c.org_id == org_id)
    return conn.execute(query.order_by(table.c.id)).all()
