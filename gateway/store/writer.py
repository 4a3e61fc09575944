"""SQLite: small messages are filed on the event loop, many per transaction.

Why (measured at 1 KB, 10 connections, tests/bench): SQLite has one writer at a
time, so filings are serial whatever the number of threads; in worker threads they
were also slowed by the GIL -- each sqlite3 call releases it and must win it back
from the loop, while the write lock is held -- so four workers spent 3.0 ms of CPU
per message, one worker 1.9 ms, and the loop thread itself less (PERFORMANCE.md: a
pool adds no throughput on this build).  So on SQLite the loop is the writer for
small messages: deliveries that finish DATA in the same loop iteration are parsed
and filed in one transaction, each in its own SAVEPOINT (a job that fails is rolled
back alone), committed once, and only then answered: 250 still means committed.

The loop must never wait, so its connections have busy_timeout 0 and no automatic
WAL checkpoint (a worker runs one every CHECKPOINT_SECONDS, holding the write lock),
and it only tries the in-process write lock.  When the lock is taken -- a
checkpoint, a worker of ours, another process -- the batch is tried again a
millisecond later; after BUSY_WAIT_SECONDS its jobs raise ``Busy`` and are filed in
workers, where waiting is allowed.  Messages over ``INLINE_MAX_BYTES`` are always
filed in a worker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, TypeVar

import sqlalchemy.exc
from sqlalchemy import Connection

from gateway.store import db

T = TypeVar("T")
INLINE_MAX_BYTES = 128 * 1024  # parse + file of 100 KB: ~1 ms of loop time
MAX_BATCH = 32                 # jobs per transaction (bounds one loop stall)
CHECKPOINT_SECONDS = 0.25       # WAL checkpoint (in a worker) at most this often
BUSY_WAIT_SECONDS = 0.05       # lock taken this long: the jobs go to workers instead


class Busy(Exception):
    """The write lock is taken: file this job in a worker instead."""


class LoopWriter:
    def __init__(self, database: db.Database, max_batch: int = MAX_BATCH):
        assert database.writer_lock is not None, "the loop writer is for SQLite"
        self.database = database
        self.engine = database.engine
        self._lock = database.writer_lock
        self.max_batch = max_batch
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._conn: Connection | None = None
        self._read_conn: Connection | None = None
        self._last_checkpoint = time.monotonic()
        self._dirty = False
        self._checkpointing = False
        self._busy_since: float | None = None
        self.batches = 0
        self.jobs = 0

    # --- on the loop -------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(conn, *args) in the next batch transaction, in its own savepoint; its
        result once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(conn, *args) on the loop's read connection (WAL: readers never wait for
        the writer).  Raises Busy rather than waiting."""
        conn = self._read_conn
        if conn is None:
            conn = self._read_conn = self._open()
        try:
            return fn(conn, *args)
        except sqlalchemy.exc.OperationalError as exc:
            if _locked(exc):
                raise Busy() from exc
            raise
        finally:
            if conn.in_transaction():
                conn.rollback()

    def close(self) -> None:
        for conn in (self._conn, self._read_conn):
            if conn is not None:
                conn.invalidate()  # its PRAGMAs must not go back to the pool
                conn.close()
        self._conn = self._read_conn = None

    def _open(self) -> Connection:
        conn = self.engine.connect()
        driver = conn.connection.driver_connection
        driver.execute("PRAGMA busy_timeout = 0")
        driver.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    def _flush(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        jobs, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
        jobs = [job for job in jobs if not job[2].done()]  # a cancelled one: its session is gone
        if jobs:
            if self._lock.acquire(blocking=False):
                try:
                    busy = self._run(jobs)
                finally:
                    self._lock.release()
            else:
                busy = True
            if busy:
                self._wait(loop, jobs)
        if self._pending and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        if self._dirty and not self._checkpointing and time.monotonic() - self._last_checkpoint >= CHECKPOINT_SECONDS:
            self._checkpointing = True
            loop.run_in_executor(None, self._checkpoint).add_done_callback(self._checkpointed)

    def _wait(self, loop: asyncio.AbstractEventLoop, jobs: list[Any]) -> None:
        """The lock is taken (a checkpoint, a worker, another process): try again in a
        moment; after BUSY_WAIT_SECONDS the jobs go to workers, where waiting is allowed."""
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        if now - self._busy_since >= BUSY_WAIT_SECONDS:
            self._busy_since = None
            _fail(jobs, Busy())
            return
        self._pending[:0] = jobs
        if not self._scheduled:
            self._scheduled = True
            loop.call_later(0.001, self._flush)

    def _checkpoint(self) -> None:
        """In a worker, holding the write lock so no commit lands meanwhile: move the
        WAL into the database file (the next write then starts the WAL afresh; with
        commits in between a PASSIVE checkpoint never catches up and the WAL grows)."""
        if not self._lock.acquire(timeout=1.0):
            return
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlalchemy.exc.SQLAlchemyError:
            pass  # the next one will do it
        finally:
            self._lock.release()

    def _checkpointed(self, _future: Any) -> None:
        self._checkpointing = False
        self._dirty = False
        self._last_checkpoint = time.monotonic()

    def _run(self, jobs: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]]) -> bool:
        """One batch transaction; True when the database is locked (nothing was run)."""
        if self._conn is None:
            self._conn = self._open().execution_options(write=True)
        conn = self._conn
        try:
            trans = conn.begin()  # BEGIN IMMEDIATE, or "database is locked" at once
        except sqlalchemy.exc.OperationalError as exc:
            if _locked(exc):
                return True
            _fail(jobs, exc)
            return False
        except Exception as exc:
            _fail(jobs, exc)
            return False
        self._busy_since = None
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            for fn, args, future in jobs:
                try:
                    with db.savepoint(conn, "gateway_job"):  # a job that fails is undone alone
                        result = fn(conn, *args)
                except Exception as exc:
                    outcomes.append((future, None, exc))
                else:
                    outcomes.append((future, result, None))
            trans.commit()
        except Exception as exc:  # a savepoint or COMMIT failed: nothing was kept
            try:
                trans.rollback()
            except Exception:
                self._conn = None
                conn.invalidate()
            _fail(jobs, exc)
            return False
        self._dirty = True
        self.batches += 1
        self.jobs += len(outcomes)
        for future, result, error in outcomes:  # after COMMIT
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        return False


def _fail(jobs: list[tuple[Any, Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _fn, _args, future in jobs:
        if not future.done():
            future.set_exception(exc)


def _locked(exc: sqlalchemy.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text

