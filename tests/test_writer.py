"""SQLite group commit on the loop (gateway/store/writer.py): many deliveries in one
transaction, each answered only after its commit, each undone alone when it fails."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from gateway.store import db
from gateway.store.writer import Busy
from tests.helpers import message

H = "hashimoto@zylker.example"


@pytest.fixture
def sqlite_gw(gw):
    if not db.is_sqlite(gw.engine):
        pytest.skip("the loop writer is SQLite's (PostgreSQL files in workers, concurrently)")
    return gw


def _on_loop(gw, coro, timeout: float = 30):  # type: ignore[no-untyped-def]
    return asyncio.run_coroutine_threadsafe(coro, gw.thread.loop).result(timeout)


def test_concurrent_deliveries_share_transactions_and_all_file_once(sqlite_gw):
    gw = sqlite_gw
    writer = gw.app.deliveries.writer
    box = gw.dropbox(H)
    # Built once: a second send is the very same delivery (a new Date would make it
    # another mail, see deliveries.message_key).
    payloads = [message(message_id=f"<batch-{i}@zylker.example>", to=f"c{i % 7}@customer{i % 7}.example")
                for i in range(120)]
    before_batches, before_jobs = writer.batches, writer.jobs
    # Counted by SQLAlchemy, not by the writer: every COMMIT on the gateway's engine,
    # the loop's batches and any filing a worker took over (lock busy) alike.
    commits: list[object] = []

    def committed(conn: sa.Connection) -> None:
        if not threading.current_thread().name.startswith("gateway-outbox"):  # events, not filings
            commits.append(conn)

    def send(i: int) -> list[int]:
        return gw.lmtp(H, [box], payloads[i]).codes

    sa.event.listen(gw.engine, "commit", committed)
    try:
        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(send, range(120)))
    finally:
        sa.event.remove(gw.engine, "commit", committed)
    assert codes == [[250]] * 120
    batches, in_batches = writer.batches - before_batches, writer.jobs - before_jobs
    # A filing the loop could not take (the write lock held past BUSY_WAIT_SECONDS,
    # e.g. by a checkpoint on a loaded machine) is a worker's, in a transaction of its own.
    assert len(commits) == batches + (120 - in_batches), (len(commits), batches, in_batches)
    # Shared: fewer transactions than messages; one each would be 120 commits.
    assert in_batches > batches, (in_batches, batches)
    assert len(commits) < 120, len(commits)
    exported = gw.export()
    assert sorted(e["message_id"] for e in exported["emails"]) == sorted(f"batch-{i}@zylker.example" for i in range(120))
    assert len({p["email"] for p in exported["leads"]}) == 7  # no duplicate customer across a batch
    # Sent again: duplicates, filed nothing.
    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(send, range(120))) == [[250]] * 120
    assert gw.count("emails") == 120


def test_a_failing_job_is_undone_alone_and_the_batch_commits(sqlite_gw):
    gw = sqlite_gw
    writer = gw.app.deliveries.writer
    engine = gw.engine
    deliveries = sa.table("deliveries", sa.column("org_id"), sa.column("route"), sa.column("message_key"),
                          sa.column("decision"), sa.column("created_at"))

    def write(conn: sa.Connection, key: str, fail: bool) -> str:
        conn.execute(sa.insert(deliveries).values(org_id="zylker", route="test", message_key=key,
                                                  decision="{}", created_at=sa.func.current_timestamp()))
        if fail:
            raise RuntimeError("half-way")
        return key

    async def three() -> list[object]:
        return await asyncio.gather(writer.run(write, "a", False), writer.run(write, "b", True),
                                    writer.run(write, "c", False), return_exceptions=True)

    batches = writer.batches
    results = _on_loop(gw, three())
    assert results[0] == "a" and results[2] == "c"
    assert isinstance(results[1], RuntimeError)
    assert writer.batches == batches + 1  # one transaction for the three
    with engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT message_key FROM deliveries WHERE route = 'test' ORDER BY 1")).scalars()
        assert list(keys) == ["a", "c"]


def test_lock_held_elsewhere_the_loop_does_not_wait_and_workers_take_over(sqlite_gw, tmp_path):
    """Another process holds SQLite's write lock: the loop's batch gives up at once
    (busy_timeout 0), retries briefly, then workers file the jobs once the lock is free."""
    gw = sqlite_gw
    writer = gw.app.deliveries.writer
    path = gw.engine.url.database
    box = gw.dropbox(H)
    holder = sqlite3.connect(path, timeout=1, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = []
    jobs_before = writer.jobs

    def release() -> None:
        time.sleep(0.5)
        released.append(time.monotonic())
        holder.execute("ROLLBACK")

    def deliver():  # type: ignore[no-untyped-def]
        tx = gw.lmtp(H, [box], message(message_id="<held@zylker.example>"))
        return tx, time.monotonic()

    try:
        with ThreadPoolExecutor(2) as pool:
            pending = pool.submit(deliver)
            time.sleep(0.1)
            # Meanwhile the loop answers other sessions at once.
            with gw.lmtp_client() as other:
                before = time.monotonic()
                assert other.noop()[0] == 250
                assert time.monotonic() - before < 0.3
            pool.submit(release).result()
            tx, answered = pending.result(30)
        assert tx.codes == [250]
        # 250 only once committed, and the commit had to wait for the other process.
        assert answered > released[0]
    finally:
        holder.close()
    assert writer.jobs == jobs_before  # not filed in a loop batch: a worker took it over
    assert [e["message_id"] for e in gw.export()["emails"]] == ["held@zylker.example"]


def test_read_raises_busy_instead_of_waiting(sqlite_gw):
    gw = sqlite_gw
    writer = gw.app.deliveries.writer

    def locked(_conn):  # type: ignore[no-untyped-def]
        raise sa.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked"))

    async def attempt() -> None:
        writer.read(locked)

    with pytest.raises(Busy):
        _on_loop(gw, attempt())
