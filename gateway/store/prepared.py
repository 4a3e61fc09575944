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

PostgreSQL: inside a write transaction these statements go through psycopg's
pipeline mode, so a statement whose result nobody reads (``run``, ``run_many``) costs
no round trip of its own: it travels with the next one that is read (``scalar``,
``rows``: a flush) or with the COMMIT (one sync).  BEGIN travels with the first.
A filing thus waits on the server only where it needs an answer (the idempotency
claim, the people lookup, the ids of new rows) -- issue 17 counts them in
tests/test_roundtrips.py.  The pipeline ends before any statement SQLAlchemy runs
itself (it reads results at once) and at COMMIT or ROLLBACK (``install``).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Generic, Iterable, TypeVar

import sqlalchemy.exc
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import Dialect

# conn.info key (the pooled connection's): the psycopg pipeline it is in, if any.
_PIPELINE = "gateway_pipeline"
_OWN_TX = "gateway_own_transaction"  # conn.info: we sent BEGIN (the driver is in autocommit until it ends)
_PIPELINED: "weakref.WeakSet[Engine]" = weakref.WeakSet()  # engines with install()ed events
_IDLE = 0  # libpq's PQTRANS_IDLE


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
        self.pipelines = dialect.name == "postgresql"

    def _args(self, params: dict[str, Any]) -> Any:
        values = dict(params)
        for name, process in self.processors.items():
            if name in values:
                values[name] = process(values[name])
        return [values[name] for name in self.order] if self.order is not None else values

    def _cursor(self, conn: Connection) -> Any:
        driver = conn.connection.driver_connection
        if (self.pipelines and not driver.autocommit and conn.in_transaction()  # type: ignore[union-attr]
                and conn.engine in _PIPELINED):
            _enter_pipeline(conn, driver)
        return driver.cursor()  # type: ignore[union-attr]

    def execute(self, conn: Connection, params: dict[str, Any]) -> Any:
        """Run with ``params`` (every bind by name); returns the DB-API cursor.  In a
        pipeline the result is there once read (fetch*), or after the COMMIT."""
        args = self._args(params)
        cursor = None
        try:
            cursor = self._cursor(conn)
            cursor.execute(self.sql, args)
        except self.dialect.loaded_dbapi.Error as exc:
            if cursor is not None:
                cursor.close()
            raise _wrap(conn, exc, self.sql, args) from exc
        return cursor

    def run_many(self, conn: Connection, rows: Iterable[dict[str, Any]]) -> None:
        """Run once per row (the driver's executemany: one batch)."""
        args = [self._args(row) for row in rows]
        cursor = None
        try:
            cursor = self._cursor(conn)
            cursor.executemany(self.sql, args)
        except self.dialect.loaded_dbapi.Error as exc:
            raise _wrap(conn, exc, self.sql, args) from exc
        finally:
            if cursor is not None:
                cursor.close()

    def rows(self, conn: Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Every row (tuples); closes the cursor."""
        cursor = self.execute(conn, params)
        try:
            return cursor.fetchall()  # type: ignore[no-any-return]
        except self.dialect.loaded_dbapi.Error as exc:  # in a pipeline: this or an earlier statement
            raise _wrap(conn, exc, self.sql, params) from exc
        finally:
            cursor.close()

    def scalar(self, conn: Connection, params: dict[str, Any]) -> Any:
        """The first column of the first row, or None (closes the cursor)."""
        cursor = self.execute(conn, params)
        try:
            row = cursor.fetchone()
        except self.dialect.loaded_dbapi.Error as exc:  # in a pipeline: this or an earlier statement
            raise _wrap(conn, exc, self.sql, params) from exc
        finally:
            cursor.close()
        return None if row is None else row[0]

    def run(self, conn: Connection, params: dict[str, Any]) -> None:
        """Run for its effect only: in a pipeline it is sent, and its outcome (an
        error too) is known at the next read or at the COMMIT."""
        cursor = self.execute(conn, params)
        if _PIPELINE not in conn.info:
            cursor.close()


T = TypeVar("T")
K = TypeVar("K")


class Shapes(Generic[K]):
    """Statements of one dialect that vary in shape (a list's length, optional
    clauses): ``build(key)`` compiled on the first use of each key."""

    def __init__(self, dialect: Dialect, build: Callable[[K], Any]):
        self._dialect, self._build = dialect, build
        self._built: dict[K, Prepared] = {}

    def __call__(self, key: K) -> Prepared:
        found = self._built.get(key)
        if found is None:
            found = self._built[key] = Prepared(self._build(key), self._dialect)
        return found


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


# --- PostgreSQL: pipeline mode over a write transaction ---------------------------------


def _wrap(conn: Connection, exc: Exception, sql: str, args: Any) -> sqlalchemy.exc.DBAPIError:
    """The driver's error as SQLAlchemy raises it, and on a lost connection what
    SQLAlchemy does too: this connection and the pool's older ones are discarded
    (the caller's transaction may be tried again on a new one)."""
    dialect = conn.dialect
    driver = conn.connection.driver_connection
    gone = dialect.is_disconnect(exc, driver, None)
    if gone:
        conn.info.pop(_PIPELINE, None)
        if not conn.invalidated:
            conn.engine.pool._invalidate(conn.connection, exc)  # type: ignore[arg-type]  # noqa: SLF001
            conn.invalidate(exc)
    return sqlalchemy.exc.DBAPIError.instance(sql, args, exc, dialect.loaded_dbapi.Error, dialect=dialect,
                                              connection_invalidated=gone)


def _enter_pipeline(conn: Connection, driver: Any) -> None:
    """Into pipeline mode; at the transaction's first statement our own BEGIN goes
    first, queued (psycopg's own would cost a round trip: it syncs after BEGIN to learn
    the transaction status).  For that the driver is in autocommit mode until the
    COMMIT or ROLLBACK (``install``), so it sends no BEGIN of its own; statements
    SQLAlchemy runs meanwhile are still inside ours."""
    info = conn.info
    if _PIPELINE in info:
        return
    begin = driver.pgconn.transaction_status == _IDLE
    if begin:
        driver.autocommit = True
        info[_OWN_TX] = True
    pipeline = driver.pipeline()
    pipeline.__enter__()
    info[_PIPELINE] = pipeline
    if begin:
        driver.cursor().execute(driver._get_tx_start_command())  # noqa: SLF001 - BEGIN [ISOLATION LEVEL ...]


def end_pipeline(conn: Connection, *, commit: bool = False) -> None:
    """Leave the pipeline (if any): one sync, which brings every outstanding result --
    and raises the first error among them.  ``commit``: end the transaction we began
    (COMMIT travels with the sync)."""
    info = conn.info
    pipeline = info.pop(_PIPELINE, None)
    own = info.get(_OWN_TX, False) if commit else False
    if pipeline is None and not own:
        return
    driver = conn.connection.driver_connection
    try:
        if commit:
            driver.cursor().execute("COMMIT")  # type: ignore[union-attr]
        if pipeline is not None:
            pipeline.__exit__(None, None, None)
    except conn.dialect.loaded_dbapi.Error as exc:
        if pipeline is not None:
            _quietly_leave(pipeline)
        raise _wrap(conn, exc, "COMMIT" if commit else "(pipeline sync)", ()) from exc
    if own:
        _give_back(conn)


def _give_back(conn: Connection) -> None:
    """The driver back in its own transaction handling (after our COMMIT or ROLLBACK)."""
    if not conn.invalidated and conn.info.pop(_OWN_TX, False):
        driver = conn.connection.driver_connection
        try:
            if driver.pgconn.transaction_status != _IDLE:  # type: ignore[union-attr]
                driver.rollback()  # type: ignore[union-attr]
            driver.autocommit = False  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - a broken connection: the pool discards it
            conn.invalidate()


def _quietly_leave(pipeline: Any) -> None:
    try:
        pipeline.__exit__(RuntimeError, RuntimeError("abandoned"), None)
    except Exception:  # noqa: BLE001 - the connection is rolled back or discarded next
        pass


def install(engine: Engine) -> None:
    """PostgreSQL engines: end a connection's pipeline before SQLAlchemy runs a
    statement on it, send COMMIT within it, abandon it on ROLLBACK or when the
    connection goes back to the pool."""
    _PIPELINED.add(engine)

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Connection, *_args: Any) -> None:
        if _PIPELINE in conn.info:
            end_pipeline(conn)

    @event.listens_for(engine, "commit")
    def _commit(conn: Connection) -> None:
        # COMMIT goes with the pipeline's last sync; the driver's own commit() that
        # SQLAlchemy calls next finds the transaction ended and sends nothing.
        end_pipeline(conn, commit=True)

    @event.listens_for(engine, "rollback")
    def _rollback(conn: Connection) -> None:
        if conn.invalidated:  # lost: the pool discards it (and conn.info would try to reconnect)
            return
        pipeline = conn.info.pop(_PIPELINE, None)
        if pipeline is not None:
            _quietly_leave(pipeline)
        _give_back(conn)

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_conn: Any, record: Any) -> None:
        pipeline = record.info.pop(_PIPELINE, None)
        if pipeline is not None:
            _quietly_leave(pipeline)
        if record.info.pop(_OWN_TX, False):
            try:
                dbapi_conn.rollback()
                dbapi_conn.autocommit = False
            except Exception:  # noqa: BLE001 - the pool's reset finds it broken and discards it
                pass
