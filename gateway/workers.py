"""A bounded worker pool for blocking work (parsing, database) off the event loop.

Bounded twice: a few threads (CPU-bound work gains nothing from more on CPython,
see PERFORMANCE.md), and a queue limit so that under load DATA waits for a free
slot (backpressure) instead of piling up messages in memory.  Messages over
1 MB also need one of a few "big" slots: parsing costs ~8x the message size.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from gateway import metrics

T = TypeVar("T")
BIG_MESSAGE_BYTES = 1024 * 1024


class WorkerPool:
    def __init__(self, workers: int, big_slots: int):
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gateway-worker")
        self._queue_slots = workers * 4
        self._big_slots = big_slots
        self._queue: asyncio.Semaphore | None = None
        self._big: asyncio.Semaphore | None = None

    def _semaphores(self) -> tuple[asyncio.Semaphore, asyncio.Semaphore]:
        if self._queue is None or self._big is None:
            self._queue = asyncio.Semaphore(self._queue_slots)
            self._big = asyncio.Semaphore(self._big_slots)
        return self._queue, self._big

    async def run(self, fn: Callable[..., T], *args: Any, big: bool = False) -> T:
        """``fn(*args)`` in a worker thread, once a queue slot (and for a big message a
        big slot) is free.  gateway_worker_jobs counts it "queued" until a thread
        starts it, then "running"."""
        queue, big_sem = self._semaphores()
        _QUEUED.inc()
        submitted: Future[T] | None = None
        try:
            async with queue:
                async with (big_sem if big else contextlib.nullcontext()):
                    submitted = self._executor.submit(_job, fn, *args)
                    return await asyncio.wrap_future(submitted)
        finally:
            # Not started and now never will be (waiting for a slot, or cancelled
            # while still in the executor's queue): no longer queued.  A job already
            # running cannot be cancelled; it counts itself out when done.
            if submitted is None or submitted.cancel():
                _QUEUED.dec()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)


_QUEUED = metrics.worker_jobs.labels(state="queued")
_RUNNING = metrics.worker_jobs.labels(state="running")


def _job(fn: Callable[..., T], *args: Any) -> T:
    _QUEUED.dec()
    _RUNNING.inc()
    try:
        return fn(*args)
    finally:
        _RUNNING.dec()


async def drain(executor: ThreadPoolExecutor, timeout: float) -> bool:
    """Stop ``executor``: jobs not started are dropped, the running one gets up to
    ``timeout`` seconds to end -- it may be inside a transaction on a pooled
    connection the caller is about to dispose of (a connection left to the garbage
    collector is never closed).  True when it ended in time."""
    executor.shutdown(wait=False, cancel_futures=True)
    ended = asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
    done, _ = await asyncio.wait([ended], timeout=timeout)
    return bool(done)


class BigMessages:
    """At most ``slots`` messages over 1 MB held in memory at once, from the moment a
    DATA buffer passes 1 MB until that delivery is answered.  Other big messages stop
    being read (TCP back-pressure keeps them in the sender's buffers, not in ours):
    50 concurrent 10 MB messages would otherwise all be buffered whole at once."""

    def __init__(self, slots: int):
        self._slots = slots
        self._semaphore = asyncio.Semaphore(slots)  # binds to the loop at first use (3.10+)

    def slot(self) -> "BigSlot":
        return BigSlot(self._semaphore)


class BigSlot:
    """One DATA transaction's claim on a big-message slot (taken at most once)."""

    def __init__(self, semaphore: asyncio.Semaphore):
        self._semaphore = semaphore
        self.held = False

    async def take(self, keepalive: Callable[[], None] | None = None) -> None:
        """Wait for a slot; ``keepalive`` every few seconds meanwhile (we are the ones
        not reading, so the session's idle timeout must not count this wait)."""
        if self.held:
            return
        loop = asyncio.get_running_loop()

        def tick() -> None:
            nonlocal timer
            if keepalive is not None:
                keepalive()
            timer = loop.call_later(5.0, tick)

        timer = loop.call_later(5.0, tick)
        try:
            await self._semaphore.acquire()
        finally:
            timer.cancel()
        self.held = True
        metrics.big_messages_in_memory.inc()

    def release(self) -> None:
        if self.held:
            self.held = False
            self._semaphore.release()
            metrics.big_messages_in_memory.dec()
