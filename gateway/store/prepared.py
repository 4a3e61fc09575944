"""The filing hot path's statements, compiled once and run on the driver's cursor.

A prebuilt SQLAlchemy statement still costs ~20 us per execution in SQLAlchemy
(execution context, result object, events) on top of SQLite's ~5 us; a 1 KB
dropbox filing runs six of them.  Here SQLAlchemy compiles each statement once per
dialect -- SQL text, parameter order and type conversions (DateTime, JSON,
LargeBinary) -- and the values go straight to the DB-API cursor of the connection
SQLAlchemy manages, inside its transaction.  Driver errors are wrapped the way
SQLAlchemy wraps them (OperationalError, IntegrityError...), so callers see one kind.

Only statements whose every value is given by the caller qualify: a column default
SQLAlchemy would compute at execution time is refused when the statement is built.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterable, TypeVar

import sqlalchemy.exc
from sqlalchemy import Connection
from sqlalchemy.engine import Dialect


class Prepared:
    def __init__(self, statement: Any, dialect: Dialect, keys: Iterable[str] | None = None):
        compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys is not None else None)
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
            raise ValueError(f"statement needs defaults computed at execution: {compiled.string}")
        self.sql: str = compiled.string
        self.dialect = dialect
        self.order: tuple[str, ...] | None = tuple(compiled.positiontup) if compiled.positional else None
        processors = compiled._bind_processors  # noqa: SLF001 - the compiled type conversions
        self.processors = {name: fn for name, fn in processors.items() if fn is not None}
        self.names = set(compiled.binds)

    def _args(self, params: dict[str, Any]) -> Any:
        values = dict(params)
        for name, process in self.processors.items():
            if name in values:
                values[name] = process(values[name])
        return [values[name] for name in self.order] if self.order is not None else values

    def execute(self, conn: Connection, params: dict[str, Any]) -> Any:
        """Run with ``params`` (every bind by name); returns the DB-API cursor."""
        args = self._args(params)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, args)
        except self.dialect.loaded_dbapi.Error as exc:
            cursor.close()
            raise sqlalchemy.exc.DBAPIError.instance(self.sql, args, exc, self.dialect.loaded_dbapi.Error,
                                                     dialect=self.dialect) from exc
        return cursor

    def run_many(self, conn: Connection, rows: Iterable[dict[str, Any]]) -> None:
        """Run once per row (the driver's executemany: one batch)."""
        args = [self._args(row) for row in rows]
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(self.sql, args)
        except self.dialect.loaded_dbapi.Error as exc:
            raise sqlalchemy.exc.DBAPIError.instance(self.sql, args, exc, self.dialect.loaded_dbapi.Error,
                                                     dialect=self.dialect) from exc
        finally:
            cursor.close()

    def scalar(self, conn: Connection, params: dict[str, Any]) -> Any:
        """The first column of the first row, or None (closes the cursor)."""
        cursor = self.execute(conn, params)
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else row[0]

    def run(self, conn: Connection, params: dict[str, Any]) -> None:
        self.execute(conn, params).close()


T = TypeVar("T")


class PerDialect(Generic[T]):
    """A module's statements, built once per dialect on first use: ``build(conn)``."""

    def __init__(self, build: Callable[[Connection], T]):
        self._build = build
        self._built: dict[str, T] = {}

    def __call__(self, conn: Connection) -> T:
        found = self._built.get(conn.dialect.name)
        if found is None:
            found = self._built[conn.dialect.name] = self._build(conn)
        return found
