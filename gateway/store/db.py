"""Engines for SQLite (embedded default) and PostgreSQL, transactions, schema upgrades.

``Database`` is how the rest of the gateway writes: the caller opens the transaction
(write, rolled_back, or a savepoint of the loop writer's batch) and passes the
connection to the store functions, so what happens to a write is visible where it is
made.

SQLite: WAL so readers never wait for the writer; write transactions start with
BEGIN IMMEDIATE so two writers queue on the lock (busy timeout) instead of failing
with "database is locked" when a read lock is upgraded.
PostgreSQL: psycopg 3; statement_timeout and lock_timeout bound every wait, so a
stuck database turns into 451 4.3.0 rather than a hung SMTP session.

Commands that only look (export, record show, quota status, email raw, explain,
check, quarantine list) open the database with make_readonly_engine: it never
creates, migrates or writes (SQLite mode=ro; PostgreSQL read-only transactions),
and require_current_schema tells them to run `gateway db upgrade` instead.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, TypeVar
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool

from gateway.errors import UserError
from gateway.store import prepared

T = TypeVar("T")
_MIGRATIONS = Path(__file__).with_name("migrations")
_upgrade_lock = threading.Lock()


def normalise_url(url: str) -> str:
    """postgresql:// and postgres:// mean psycopg 3 (the driver we ship)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, timeout_seconds: float = 10.0, pool_size: int = 8, *, pipelines: bool = True) -> Engine:
    """``pipelines``: PostgreSQL, our compiled statements in psycopg's pipeline mode
    with our own BEGIN and COMMIT (store/prepared.py; off for the dry run, whose
    refusal to commit must come before any COMMIT is sent)."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": timeout_seconds, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        _sqlite_setup(engine)
        return engine
    parsed, connect_args = pg_connect_args(parsed, timeout_seconds)
    engine = create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=timeout_seconds,
        connect_args=connect_args,
    )
    _ping_when_idle(engine)
    if pipelines:
        prepared.install(engine)
    return engine


# A pooled PostgreSQL connection unused this long is pinged before use (a restart or a
# firewall may have cut it meanwhile).  Under load connections come back within
# milliseconds and are not pinged: SQLAlchemy's pool_pre_ping cost a round trip per
# filing (issue 17).  A connection lost in between fails its statement; the pool then
# drops it with all older ones, and the filing is tried again (gateway/delivery.py).
IDLE_PING_SECONDS = 2.0
_CHECKED_IN = "gateway_checked_in"


def _ping_when_idle(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connected(_dbapi_conn: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(_CHECKED_IN, 0.0) < IDLE_PING_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # The pool discards this connection and checks out another (or connects).
            raise sqlalchemy_exc.DisconnectionError(str(exc)) from exc


def pg_connect_args(parsed: Any, timeout_seconds: float, extra: str = "") -> tuple[Any, dict[str, Any]]:
    """libpq connection arguments: our timeouts (and ``extra`` settings) added to any
    options given in the URL (e.g. a search_path), which are kept."""
    millis = int(timeout_seconds * 1000)
    options = parsed.query.get("options", "")
    options = options if isinstance(options, str) else " ".join(options)
    parsed = parsed.difference_update_query(["options"])
    return parsed, {
        "connect_timeout": max(1, int(timeout_seconds)),
        "options": f"{options} {extra} -c statement_timeout={millis} -c lock_timeout={millis}".strip(),
    }


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # Take transaction control from pysqlite so BEGIN IMMEDIATE is possible.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def make_readonly_engine(url: str, timeout_seconds: float = 10.0) -> Engine:
    """An engine that cannot change the database, for the commands that only look.

    SQLite: the file is opened with mode=ro -- never created (a missing file raises
    SchemaNotCurrent), its journal mode left alone, query_only on as well; a command
    sees one snapshot (BEGIN on first use).  PostgreSQL: every transaction is READ
    ONLY (the server refuses any write) and REPEATABLE READ (one snapshot).
    """
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:" or not Path(database).is_file():
            raise SchemaNotCurrent("missing", f"no database at {database or '(memory)'}: run `gateway db upgrade` "
                                              "(`gateway serve` also creates it)")
        engine = create_engine("sqlite://", creator=sqlite_opener(str(Path(database).resolve()), "ro", timeout_seconds),
                               poolclass=QueuePool, pool_size=2, max_overflow=2)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA query_only=ON")

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine
    parsed, connect_args = pg_connect_args(parsed, timeout_seconds, "-c default_transaction_read_only=on")
    return create_engine(
        parsed,
        pool_size=2,
        max_overflow=2,
        pool_timeout=timeout_seconds,
        isolation_level="REPEATABLE READ",
        connect_args=connect_args,
    )


def sqlite_opener(path: str, mode: str, timeout_seconds: float) -> Callable[[], sqlite3.Connection]:
    """A connection factory for an existing SQLite file opened with ``mode`` (``ro``:
    read only; ``rw``: read-write): never created.  A URI, so the path may hold any
    character (quoted) and the mode applies."""
    uri = f"file:{quote(path)}?mode={mode}"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=timeout_seconds, check_same_thread=False)

    return connect


def make_dry_run_engine(url: str, timeout_seconds: float = 10.0) -> Engine:
    """An engine for `gateway explain`: the real filing code runs on it in transactions
    that are rolled back (Database.rolled_back), and it refuses any COMMIT, so a code path that
    forgot the dry run fails instead of writing.  The database must exist and be up
    to date (checked first through a read-only engine), so nothing is created here.

    PostgreSQL: rows are rolled back, but sequences that INSERTs drew ids from stay
    advanced (nextval is not transactional): explain may skip ids, never store rows.
    """
    engine = make_engine(url, timeout_seconds, pool_size=1, pipelines=False)

    @event.listens_for(engine, "commit")
    def _refuse_commit(conn: Connection) -> None:
        raise RuntimeError("a dry run must not commit")

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


class Database:
    """One database and the ways to use it.  The caller opens the transaction and
    passes the connection down; what happens to the writes is visible at the call:

    - ``write()``: committed on success, rolled back on error;
    - ``rolled_back()``: the same statements, always rolled back (`gateway explain`);
    - ``writing(fn, *args)``: ``fn(conn, *args)`` inside ``write()`` (a worker's job);
    - ``read()``: one connection for reading outside any write transaction;
    - the SQLite loop writer (store/writer.py) runs jobs in its batch transaction,
      each in its own ``savepoint``.

    SQLite has one writer at a time.  Threads of this process queue on
    ``writer_lock``, which wakes the next one the moment the writer is done, instead
    of each polling the database lock in SQLite's busy handler (sleeps of up to
    100 ms; measured: workers spent 56-71 % of their time there at 10 connections).
    Other processes still meet at the database lock with the busy timeout.
    """

    def __init__(self, engine: Engine, timeout_seconds: float = 10.0):
        self.engine = engine
        self.timeout_seconds = timeout_seconds
        self.writer_lock: threading.Lock | None = threading.Lock() if is_sqlite(engine) else None

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.engine)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back on error."""
        with self._queued(), _transaction(self.engine) as (conn, trans):
            yield conn
            trans.commit()

    @contextmanager
    def rolled_back(self) -> Iterator[Connection]:
        """A write transaction that is always rolled back: the real statements run,
        nothing stays (`gateway explain`)."""
        with self._queued(), _transaction(self.engine) as (conn, _trans):
            yield conn

    def writing(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(conn, *args) in a write transaction, committed on success."""
        with self.write() as conn:
            return fn(conn, *args)

    def read(self) -> Connection:
        """A connection for one read outside any transaction.  PostgreSQL: in
        autocommit, which saves the BEGIN and ROLLBACK round trips around it (the RCPT
        lookup of a dropbox address took four round trips, now two)."""
        if self.engine.dialect.name == "postgresql":
            return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self.engine.connect()

    def reading(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(conn, *args) on a read connection."""
        with self.read() as conn:
            return fn(conn, *args)

    @contextmanager
    def _queued(self) -> Iterator[None]:
        lock = self.writer_lock
        if lock is None:
            yield
            return
        if not lock.acquire(timeout=self.timeout_seconds):
            raise sqlalchemy_exc.OperationalError("BEGIN IMMEDIATE", {}, TimeoutError("writer queue timeout"))
        try:
            yield
        finally:
            lock.release()

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def savepoint(conn: Connection, name: str = "gateway_sp") -> Iterator[Connection]:
    """A SAVEPOINT straight on the driver connection (SQLAlchemy's begin_nested costs
    ~0.1 ms; this ~10 us): undone alone on error, kept otherwise.  Yields ``conn``."""
    driver = conn.connection.driver_connection
    driver.execute(f"SAVEPOINT {name}")
    try:
        yield conn
    except BaseException:
        driver.execute(f"ROLLBACK TO {name}")
        driver.execute(f"RELEASE {name}")
        raise
    else:
        driver.execute(f"RELEASE {name}")


@contextmanager
def _transaction(engine: Engine) -> Iterator[tuple[Connection, Any]]:
    """A write connection and its transaction; rolled back unless the caller committed."""
    with engine.connect().execution_options(write=True) as conn:
        trans = conn.begin()
        try:
            yield conn, trans
        finally:
            if trans.is_active:
                trans.rollback()


def _alembic_config(conn: Connection | None = None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def _scripts():  # type: ignore[no-untyped-def]
    """The migration scripts (revisions), read from gateway/store/migrations."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


def upgrade(engine: Engine) -> list[str]:
    """Bring the schema to the newest revision; returns the revisions applied."""
    if current_revision(engine) == HEAD_REVISION:
        return []  # up to date: alembic is not even loaded
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    with _upgrade_lock, engine.connect().execution_options(write=True) as conn:
        if engine.dialect.name == "postgresql":
            # Several gateway processes may start at once on one database.
            conn.exec_driver_sql("SELECT pg_advisory_lock(727274)")
            conn.commit()
        try:
            before = MigrationContext.configure(conn).get_current_revision()
            conn.commit()
            command.upgrade(_alembic_config(conn), "head")
            conn.commit()
            applied = [
                rev.revision
                for rev in _scripts().iterate_revisions("head", before or "base")
                if rev.revision != before
            ]
            return list(reversed(applied))
        finally:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_unlock(727274)")
                conn.commit()


SchemaState = Literal["missing", "empty", "behind", "ahead"]


class SchemaNotCurrent(UserError):
    """The database is missing, has no schema, or is at another revision than ours."""

    def __init__(self, state: SchemaState, message: str):
        super().__init__(message)
        self.state = state


# The newest revision in gateway/store/migrations (tests/unit/test_schema_head.py holds
# it to alembic's own head): a command that only looks compares the database's with it
# without loading alembic and its scripts, ~0.15 s of every CLI command.
HEAD_REVISION = "0011"


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None
    return head


def _known_revisions() -> set[str]:
    return {rev.revision for rev in _scripts().walk_revisions()}


def require_current_schema(engine: Engine) -> str:
    """The revision, if it is the newest this gateway knows; else SchemaNotCurrent
    telling what to run.  Reads only (commands that look never migrate)."""
    current = current_revision(engine)
    head = HEAD_REVISION
    if current == head:
        return current
    if current is None:
        raise SchemaNotCurrent("empty", "the database has no gateway schema yet: run `gateway db upgrade` "
                                        "(`gateway serve` also does it)")
    if current in _known_revisions():
        raise SchemaNotCurrent("behind", f"the database schema is at revision {current}, this gateway needs {head}: "
                                         "run `gateway db upgrade` (`gateway serve` also does it)")
    raise SchemaNotCurrent("ahead", f"the database schema is at revision {current}, which this gateway does not know "
                                    f"(its newest is {head}): a newer gateway upgraded it; run that version")


def current_revision(engine: Engine) -> str | None:
    """The database's revision (alembic's version table, read without alembic: our
    history is linear, one row), or None when it has no gateway schema."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
