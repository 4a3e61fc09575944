"""The webhook sender: a child process of `gateway serve` that runs the webhook
deliveries (gateway/webhooks.py ``Dispatcher``), so that their HTTP and database
work never takes the daemon's interpreter -- its GIL, its event loop -- from mail.

Why a process: every event an endpoint wants is one signed HTTP request plus its
bookkeeping, ~0.35 ms of CPU (tests/bench, 1 KB dropbox mail: two events per message,
so more CPU than filing the message).  In the daemon's process that time comes out
of filing; in its own process it runs on another core (README, Events and webhooks:
what it costs).

The daemon starts it only while its rules name a [[webhooks]] endpoint, and talks to
it over its stdin and stdout, one JSON object per line:

- to the sender: first ``{"settings": …, "hooks": […]}``; then ``{"wake": true}`` after
  the daemon put new events in the feed (the sender also polls every ``[events]
  poll_seconds`` for events other processes wrote) and ``{"hooks": […]}`` after a rules
  reload.  End of input -- the daemon stopped, or died -- makes the sender stop: the
  attempts under way are cut short and given back (sent again by whichever process
  runs next), the outcomes already answered are written.
- from the sender: ``{"metrics": {…}}`` once it is up, then about every second and when
  it stops: its counters' totals and its gauges, which the daemon folds into its own
  /metrics.

Logs go to the daemon's stderr.  The sender ignores SIGINT and SIGTERM (a Ctrl-C or a
service manager signals the whole process group; the daemon decides when it stops).
If it exits unexpectedly the daemon logs it, counts it in gateway_errors_total
{component="webhooks"} and starts another after a pause.

    python -m gateway.sender      # only as the daemon's child
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gateway import logs, metrics
from gateway.rules.index import RuleIndex, WebhookEntry
from gateway.settings import Settings

log = logs.get("gateway.sender")

METRICS_EVERY_SECONDS = 1.0
# Passes at least this far apart: under load a pass (a few statements per endpoint)
# serves up to CLAIM_PER_SLOT x concurrency events per endpoint, so this bounds the
# pass overhead, and adds at most this much to an event's way to its endpoint.
MIN_PASS_SECONDS = 0.25
STOP_WAIT_SECONDS = 15.0  # the sender's own stop: cut attempts, give them back, write outcomes
RESTART_PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0)
OUTCOMES = ("delivered", "retry", "failed")


def hooks_json(index: RuleIndex) -> list[dict[str, Any]]:
    return [{"org": org.id, "url": hook.url, "events": sorted(hook.events) if hook.events is not None else None,
             "secret_env": hook.secret_env, "secret_path": str(hook.secret_path) if hook.secret_path else None}
            for org in index.orgs.values() for hook in org.webhooks]


def _hooks_from(items: list[dict[str, Any]]) -> dict[tuple[str, str], WebhookEntry]:
    return {(h["org"], h["url"]): WebhookEntry(
        url=h["url"], events=frozenset(h["events"]) if h["events"] is not None else None,
        secret_env=h["secret_env"], secret_path=Path(h["secret_path"]) if h["secret_path"] else None)
        for h in items}


# --- the daemon's side -----------------------------------------------------------------------

class Sender:
    """The daemon's handle on its sender process: started while the rules name an
    endpoint, woken after events were sequenced, told about reloads, restarted when it
    exits unexpectedly, stopped with the daemon."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._hooks: list[dict[str, Any]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._seen: dict[str, float] = {}  # the current process's counters, as last reported
        self.started = 0  # processes started (for tests and logs)
        self.reports = 0  # reports received from the current process (its first: it is up)
        metrics.errors.labels(component="webhooks")  # the series exists (0) before the first error

    def set_hooks(self, index: RuleIndex) -> None:
        """The rules' endpoints (at start and after each reload): the sender is started
        on the first, and told about every change."""
        hooks = hooks_json(index)
        changed = hooks != self._hooks
        self._hooks = hooks
        if hooks and self._task is None and not self._stopping:
            self._task = asyncio.get_running_loop().create_task(self._supervise())
        elif changed:
            self._send({"hooks": hooks})

    def wake(self) -> None:
        self._send({"wake": True})

    def _send(self, message: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing() or proc.returncode is not None:
            return  # a sender that starts reads the current hooks and polls for events
        proc.stdin.write(json.dumps(message).encode() + b"\n")

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping:
            started = time.monotonic()
            try:
                returncode = await self._run_one()
            except Exception as exc:  # could not start it at all
                log.error("webhook_sender_not_started", error=f"{type(exc).__name__}: {exc}")
                returncode = None
            if self._stopping:
                break
            metrics.errors.labels(component="webhooks").inc()
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            pause = RESTART_PAUSES[min(failures, len(RESTART_PAUSES) - 1)]
            log.error("webhook_sender_exited", returncode=returncode, restart_in_seconds=pause)
            await asyncio.sleep(pause)

    async def _run_one(self) -> int:
        self._proc = proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.sender", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self.started += 1
        self.reports = 0
        self._seen = {}
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"settings": self.settings.model_dump_json(),
                                     "hooks": self._hooks}).encode() + b"\n")
        log.info("webhook_sender_started", pid=proc.pid)
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            try:
                self._fold(json.loads(line)["metrics"])
                self.reports += 1
            except (ValueError, KeyError, TypeError):
                log.warning("webhook_sender_said", line=line[:200].decode("utf-8", "replace"))
        return await proc.wait()

    def _fold(self, reported: dict[str, float]) -> None:
        """The sender's metrics into the daemon's: counters by what they grew since its
        last report, gauges as they are."""
        for key, counter in _counters().items():
            grew = reported.get(key, 0.0) - self._seen.get(key, 0.0)
            if grew > 0:
                counter.inc(grew)
        for key, gauge in _gauges().items():
            gauge.set(reported.get(key, 0.0))
        self._seen = dict(reported)

    async def stop(self) -> None:
        """Close its input (it stops: attempts under way given back), wait, then kill."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), STOP_WAIT_SECONDS + 5.0)
            except asyncio.TimeoutError:
                log.warning("webhook_sender_killed", pid=proc.pid)
                proc.kill()
                await proc.wait()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=5.0)
            self._task.cancel()
            self._task = None


# --- the sender process ------------------------------------------------------------------------

def _counters() -> dict[str, Any]:
    """The counters the sender reports, by their key in a report."""
    return {**{f"deliveries_{o}": metrics.webhook_deliveries.labels(outcome=o) for o in OUTCOMES},
            "errors": metrics.errors.labels(component="webhooks")}


def _gauges() -> dict[str, Any]:
    return {"pending": metrics.events_pending, "oldest_age": metrics.events_oldest_pending_age}


def _report() -> dict[str, float]:
    """This process's counters' totals and gauges."""
    return {key: next(s.value for family in metric.collect() for s in family.samples
                      if not s.name.endswith("_created"))
            for key, metric in {**_counters(), **_gauges()}.items()}


async def _main() -> int:
    from gateway.outbox import Passes
    from gateway.store import db
    from gateway.webhooks import Dispatcher

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: None)  # the daemon says when (end of input)
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    first = json.loads(await reader.readline())
    settings = Settings.model_validate_json(first["settings"])
    logs.setup(settings.logging.level, settings.logging.format)
    hooks = [_hooks_from(first["hooks"])]
    engine = db.make_engine(settings.database_url, settings.database.timeout_seconds, pool_size=2)
    database = db.Database(engine, settings.database.timeout_seconds)
    dispatcher = Dispatcher(database, settings, lambda: hooks[0])
    passes = Passes(dispatcher.step, settings.events.poll_seconds, "webhooks", min_pass_seconds=MIN_PASS_SECONDS)
    dispatcher.wake = passes.wake
    passes.start()
    passes.wake()  # what is pending from before: at once
    gone = asyncio.Event()  # the daemon is gone: end of input, or its end of stdout closed

    def report() -> None:
        try:
            sys.stdout.write(json.dumps({"metrics": _report()}) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):  # nobody reads: the daemon is gone
            gone.set()

    async def reporting() -> None:
        while not gone.is_set():
            await asyncio.sleep(METRICS_EVERY_SECONDS)
            report()

    async def listening() -> None:
        while True:
            line = await reader.readline()
            if not line:
                break  # the daemon stopped or died
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "hooks" in message:
                hooks[0] = _hooks_from(message["hooks"])
            passes.wake()
        gone.set()

    reporter = loop.create_task(reporting())
    listener = loop.create_task(listening())
    try:
        report()  # the first: the daemon knows the sender is up
        log.info("webhook_sender_ready", pid=os.getpid(), endpoints=len(hooks[0]))
        await gone.wait()
    finally:  # whatever ended it: the passes stop, what was claimed is given back
        reporter.cancel()
        listener.cancel()
        await passes.stop()
        await dispatcher.stop()
        report()
        database.dispose()
    return 0


def main() -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(_main())
    return uvloop.run(_main())


if __name__ == "__main__":
    sys.exit(main())
