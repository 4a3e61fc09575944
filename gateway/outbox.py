"""The daemon's side of the outbox (issue 14): put committed events in their feed order
(gateway/store/events.py ``sequence``), tell the webhook sender (gateway/sender.py)
there are new ones, prune what is older than the retention (and the review queue's
decided messages older than theirs).

It runs as one task on the event loop (``Passes``); its database work runs in its
own thread.  ``wake()`` (called after this process committed a change with events)
starts a pass at once; otherwise a pass runs every ``[events] poll_seconds`` -- for
the events other processes (other instances, `gateway import`) wrote."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Awaitable, Callable, TypeVar

from gateway import logs, metrics
from gateway.guard import guarded
from gateway.errors import TemporaryFailure
from gateway.settings import Settings
from gateway.store import events as store_events, review as store_review
from gateway.store.db import Database
from gateway.store.sql import now
from gateway.workers import drain

log = logs.get("gateway.outbox")

PRUNE_EVERY_SECONDS = 3600.0
STOP_WAIT_SECONDS = 5.0
# Passes at most this often under load: each costs two short transactions, so at
# 0.05 s the outbox took 0.18 ms of CPU per 1 KB message on PostgreSQL, at 0.2 s
# 0.05 ms (tests/bench, 350 msg/s); the webhook sender passes every 0.25 s anyway.
MIN_PASS_SECONDS = 0.2
T = TypeVar("T")


class Passes:
    """One task that runs ``step`` after each ``wake()`` -- passes at least
    ``min_pass_seconds`` apart, so under load one pass serves many wakes -- and every
    ``poll_seconds`` without one.  A pass that fails is logged; the next one tries again."""

    def __init__(self, step: Callable[[], Awaitable[Any]], poll_seconds: float, component: str,
                 min_pass_seconds: float = MIN_PASS_SECONDS):
        self.step = step
        self.poll_seconds = poll_seconds
        self.min_pass_seconds = min_pass_seconds
        self.component = component
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_pass = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._main())

    def wake(self) -> None:
        """Run a pass soon (from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            if loop is asyncio.get_running_loop():
                self._wake.set()
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            # A pass under way ends at its next await; never wait on it for long.
            await asyncio.wait([self._task], timeout=STOP_WAIT_SECONDS)
            self._task = None

    async def _main(self) -> None:
        task = asyncio.current_task()
        # The stop flag, and the task's own cancelling() count: Python 3.11's wait_for
        # can swallow a cancellation that arrives as its wait ends.
        while not self._stopping and not (task is not None and task.cancelling()):
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await asyncio.sleep(max(0.0, self._last_pass + self.min_pass_seconds - time.monotonic()))
            self._last_pass = time.monotonic()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except TemporaryFailure as exc:
                log.warning("pass_failed", component=self.component, error=exc.detail)
            except Exception as exc:  # a bug: logged, the next pass tries again
                metrics.errors.labels(component=self.component).inc()
                log.error("pass_failed", component=self.component, error=f"{type(exc).__name__}: {exc}",
                          exc_info=exc)


class Outbox:
    def __init__(self, database: Database, settings: Settings, sequenced: Callable[[], None] | None = None):
        self.database = database
        self.settings = settings
        # Its own thread for database work: the filing workers are never taken.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-outbox")
        # Told after a pass that put events in the feed (the webhook sender's wake).
        self.sequenced = sequenced
        self._passes = Passes(self.step, settings.events.poll_seconds, "outbox")
        self._last_prune: float | None = None  # the first pass prunes (at start)

    def start(self) -> None:
        self._passes.start()

    def wake(self) -> None:
        """A change with events was committed (any thread)."""
        self._passes.wake()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in the outbox's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def stop(self) -> None:
        await self._passes.stop()
        # A pass cut short may still be in its thread, in a transaction: let it end
        # before the daemon disposes of the pool.
        await drain(self._executor, STOP_WAIT_SECONDS)

    async def step(self) -> int:
        """One pass: sequence, tell the sender, maybe prune; the number of events sequenced."""
        sequenced = await self.run(guarded(self._sequence_all, "events_sequence"))
        if sequenced and self.sequenced is not None:
            self.sequenced()
        if self._last_prune is None or time.monotonic() - self._last_prune >= PRUNE_EVERY_SECONDS:
            self._last_prune = time.monotonic()
            await self.run(guarded(self._prune, "events_prune"))
        return int(sequenced)

    def _sequence_all(self) -> int:
        done = 0
        for org_id in self.database.reading(store_events.unsequenced_orgs):
            while True:
                n = self.database.writing(store_events.sequence, org_id)
                done += n
                if n < store_events.SEQUENCE_BATCH:
                    break
        metrics.events_sequenced.inc(done)
        return done

    def _prune(self) -> int:
        before = now() - timedelta(days=self.settings.events.retention_days)
        total = 0
        while True:
            n = self.database.writing(store_events.prune, before)
            total += n
            if n == 0:
                break
        if total:
            metrics.events_pruned.inc(total)
            log.info("events_pruned", count=total, before=before.isoformat())
        # The review queue's decided messages go after their own retention (issue 16).
        decided = now() - timedelta(days=self.settings.review.retention_days)
        pruned = self.database.writing(store_review.prune, decided)
        if pruned:
            log.info("review_pruned", count=pruned, decided_before=decided.isoformat())
        return total
