"""Composition root: settings + rules + database + worker pool + listeners + signals.

Lifecycle: start (migrate, load and sync rules, bind listeners, probes, the periodic
database probe, pid file),
reload (SIGHUP, `gateway reload`, or a change in rules/: load, validate, swap whole;
on error keep the old rules), stop (SIGTERM/SIGINT: stop accepting, answer 421,
let transactions under way finish within the grace period, exit 0).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from gateway import logs, metrics
from gateway.delivery import Deliveries, FilingFunction
from gateway.filing import file
from gateway.filing.policies import Limits
from gateway.outbox import Outbox
from gateway.sender import Sender
from gateway.errors import ConfigError
from gateway.rules.index import RuleIndex
from gateway.rules.loader import load_rules
from gateway.settings import Settings, parse_listen
from gateway.smtp.handler import Handler
from gateway.smtp.server import GatewayLMTP, GatewaySMTP
from gateway.smtp.sessions import ConnectionLimits, Sessions
from gateway.store import db, organisations
from gateway.store.writer import LoopWriter
from gateway.workers import WorkerPool, drain

log = logs.get("gateway.app")


def open_database(settings: Settings) -> db.Database:
    """The database on an up-to-date schema (serve brings an empty database up to date)."""
    engine = db.make_engine(settings.database_url, settings.database.timeout_seconds,
                            pool_size=settings.limits.workers + 2)
    applied = db.upgrade(engine)
    if applied:
        log.info("database_upgraded", revisions=applied)
    return db.Database(engine, settings.database.timeout_seconds)


def load_and_sync(settings: Settings, database: db.Database) -> RuleIndex:
    """The rules, loaded and given their database ids (written in one transaction)."""
    rules = load_rules(settings.rules_dir)
    return database.writing(organisations.sync_rules, rules)


def write_postfix_map(settings: Settings, engine: Engine, rules: RuleIndex) -> int | None:
    if not settings.postfix.recipient_map:
        return None
    from gateway.postfix import write_map

    return write_map(settings.path(settings.postfix.recipient_map), engine, rules, settings.postfix.postmap_command)


def _cannot_listen(name: str, host: str, port: int, exc: OSError) -> ConfigError:
    from gateway.errors import ConfigProblem

    return ConfigError([ConfigProblem("gateway.toml", f"listeners.{name}", None,
                                      f"cannot listen on {host}:{port}: {exc.strerror or exc}")])


def _rules_signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in directory.glob("*.toml")))
    except OSError:
        return ()


@dataclass
class App:
    settings: Settings
    # The filing function (gateway.filing.file unless a test composes another).
    filing: FilingFunction | None = None
    database: db.Database | None = None
    deliveries: Deliveries | None = None
    sessions: Sessions | None = None
    pool: WorkerPool | None = None
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    bound: dict[str, tuple[str, int]] = field(default_factory=dict)
    submission: Any = None
    probes: Any = None
    handlers: list[Handler] = field(default_factory=list)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _pid_written: Path | None = None
    # The last database probe's verdict (gateway_database_up, /readyz).
    database_ok: bool = False
    _database_probe: Any = None
    _probe_thread: ThreadPoolExecutor | None = None
    _quarantine_orgs: set[str] = field(default_factory=set)
    # The CRM's HTTP API (listeners.api): its server, task and shared context.
    api: Any = None
    api_context: Any = None
    _api_task: Any = None
    # Events: sequencing, pruning (gateway/outbox.py).
    outbox: Outbox | None = None
    # The webhook sender process (gateway/sender.py), woken by the outbox's passes.
    sender: Sender | None = None

    @property
    def engine(self) -> Engine | None:
        return self.database.engine if self.database is not None else None

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self.pool = WorkerPool(s.limits.workers, s.limits.big_message_slots)
        self.database = database = await loop.run_in_executor(None, open_database, s)
        rules = await loop.run_in_executor(None, load_and_sync, s, database)
        metrics.rule_reloads.labels(result="ok").inc()
        metrics.rules_last_reload.set(time.time())
        self.sessions = Sessions(ConnectionLimits(s.limits.max_connections, s.limits.max_connections_per_client),
                                 big_in_memory=s.limits.big_messages_in_memory)
        self.deliveries = Deliveries(database, rules, self.pool, quarantine_after=s.limits.quarantine_after_attempts,
                                     writer=LoopWriter(database) if database.is_sqlite else None,
                                     filing=self.filing or partial(file, limits=Limits.of(s)), trust=s.trust)
        # Events: sequenced and pruned by the outbox's task, sent to webhooks by the
        # sender process (started while the rules name an endpoint).
        self.sender = Sender(s)
        self.outbox = Outbox(database, s, sequenced=self.sender.wake)
        self.deliveries.changed = self.outbox.wake
        for name, cls, listen in (("lmtp", GatewayLMTP, s.listeners.lmtp), ("smtp", GatewaySMTP, s.listeners.smtp)):
            if not listen:
                continue
            host, port = parse_listen(listen)
            handler = Handler(self.deliveries, self.sessions, listener=name, data_limit=s.limits.max_message_bytes,
                              max_recipients=s.limits.max_recipients)
            self.handlers.append(handler)

            def factory(cls=cls, handler=handler):  # type: ignore[no-untyped-def]
                return cls(handler, data_limit=s.limits.max_message_bytes, hostname=s.server.hostname,
                           ident="CRM mail gateway", timeout=s.limits.session_timeout_seconds, loop=loop)

            await self._listen(name, factory, host, port)
        if s.listeners.submission:
            from gateway.smtp.server import SubmissionSMTP
            from gateway.smtp.submission import SubmissionHandler, tls_context

            host, port = parse_listen(s.listeners.submission)
            self.submission = SubmissionHandler(self.deliveries, self.sessions, s)
            self.handlers.append(self.submission)
            context = tls_context(s)

            def submission_factory():  # type: ignore[no-untyped-def]
                return SubmissionSMTP(self.submission, data_limit=s.limits.max_message_bytes,
                                      loopback_auth=s.submission.auth_without_tls_on_loopback,
                                      tls_context=context, hostname=s.server.hostname, ident="CRM mail gateway",
                                      timeout=s.limits.session_timeout_seconds, loop=loop)

            await self._listen("submission", submission_factory, host, port)
        if s.listeners.metrics:
            from gateway.probes import QUOTA, ProbeServer

            host, port = parse_listen(s.listeners.metrics)
            try:
                self.probes = ProbeServer(host, port, self.readiness)
            except OSError as exc:
                raise _cannot_listen("metrics", host, port, exc) from exc
            self.probes.start()
            self.bound["metrics"] = self.probes.address
            QUOTA.source = self.quota_report
            log.info("listening", listener="metrics", host=self.probes.address[0], port=self.probes.address[1])
        if s.listeners.api:
            await self._start_api(*parse_listen(s.listeners.api))
        await loop.run_in_executor(None, self._postfix_map)
        if s.limits.rules_poll_seconds > 0:
            self._tasks.append(loop.create_task(self._watch_rules()))
        await self._start_database_probe()
        self.outbox.start()
        self.sender.set_hooks(rules)
        metrics.up.set(1)

    async def _start_api(self, host: str, port: int) -> None:
        """The CRM's HTTP API (gateway/api/), served on this loop by uvicorn."""
        import socket

        from gateway.api.app import build_app
        from gateway.api.context import ApiContext
        from gateway.api.server import ApiServer

        assert self.database is not None and self.deliveries is not None
        deliveries = self.deliveries
        try:
            sock = socket.create_server((host, port), reuse_port=False)
        except OSError as exc:
            raise _cannot_listen("api", host, port, exc) from exc
        sock.setblocking(False)
        self.api_context = ApiContext(self.database, lambda: deliveries.rules, recipients_changed=self._postfix_map,
                                      changed=self.outbox.wake)
        self.api = ApiServer(build_app(self.api_context), sock)
        self._api_task = asyncio.get_running_loop().create_task(self.api.serve())
        address = sock.getsockname()
        self.bound["api"] = (address[0], address[1])
        log.info("listening", listener="api", host=address[0], port=address[1])

    async def _listen(self, name: str, factory, host: str, port: int) -> None:  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(factory, host=host, port=port, reuse_address=True)
        except OSError as exc:
            raise _cannot_listen(name, host, port, exc) from exc
        self.servers.append(server)
        sockname = server.sockets[0].getsockname()
        self.bound[name] = (sockname[0], sockname[1])
        log.info("listening", listener=name, host=sockname[0], port=sockname[1])

    # --- operator endpoints -------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Called on the probe server's thread: reads state only, never waits on the
        database (its answer is the periodic probe's, see _probe_database)."""
        s = self.settings
        wanted = {n for n, v in (("lmtp", s.listeners.lmtp), ("smtp", s.listeners.smtp),
                                 ("submission", s.listeners.submission)) if v}
        bound = wanted <= set(self.bound) and bool(self.servers) and not (self.sessions and self.sessions.stopping)
        database = self.database_ok
        rules = self.deliveries is not None and bool(self.deliveries.rules.orgs)
        return database and rules and bound, {"database": database, "rules": rules, "listeners": bound}

    async def _start_database_probe(self) -> None:
        """The first probe before the daemon says it is up, then one every
        DATABASE_PROBE_SECONDS."""
        from gateway.probes import DatabaseProbe

        self._database_probe = DatabaseProbe(self.settings.database_url)
        # A thread of its own: never a delivery worker, never the loop.
        self._probe_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db-probe")
        pending = await self._probe_once(None)
        self._tasks.append(asyncio.get_running_loop().create_task(self._probe_database(pending)))

    async def _probe_database(self, pending: "asyncio.Future[Any] | None") -> None:
        from gateway.probes import DATABASE_PROBE_SECONDS

        while True:
            await asyncio.sleep(DATABASE_PROBE_SECONDS)
            pending = await self._probe_once(pending)

    async def _probe_once(self, pending: "asyncio.Future[Any] | None") -> "asyncio.Future[Any] | None":
        """One probe, given up on after DATABASE_PROBE_TIMEOUT_SECONDS (down).  A probe
        still hanging is waited for again next time rather than started twice; returns
        it, or None once done."""
        from gateway.probes import DATABASE_PROBE_TIMEOUT_SECONDS

        loop = asyncio.get_running_loop()
        if pending is None:
            pending = loop.run_in_executor(self._probe_thread, self._database_probe.check)
            # Retrieved even if the daemon stops before it ends (no "never retrieved").
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            counts = await asyncio.wait_for(asyncio.shield(pending), DATABASE_PROBE_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            self._database_verdict(False, None, "probe timed out")
            return pending
        except Exception as exc:
            first_line = (str(exc).splitlines() or [""])[0]
            self._database_verdict(False, None, f"{type(exc).__name__}: {first_line[:300]}")
            return None
        self._database_verdict(True, counts, "")
        return None

    def _database_verdict(self, ok: bool, counts: dict[str, int] | None, error: str) -> None:
        if ok != self.database_ok:
            if ok:
                log.info("database_reachable")
            else:
                log.error("database_unreachable", error=error)
        self.database_ok = ok
        metrics.database_up.set(1 if ok else 0)
        if counts is None:  # unknown while the database is down: keep the last numbers
            return
        orgs = set(counts) | (set(self.deliveries.rules.orgs) if self.deliveries is not None else set())
        for org in orgs:
            metrics.quarantine_messages.labels(org=org).set(counts.get(org, 0))
        for gone in self._quarantine_orgs - orgs:  # an organisation removed and nothing of it quarantined
            metrics.quarantine_messages.remove(gone)
        self._quarantine_orgs = orgs

    def quota_report(self) -> list[dict[str, Any]]:
        from gateway import quota

        if self.deliveries is None or self.engine is None:
            return []
        return [quota.status(self.engine, org) for org in self.deliveries.rules.orgs.values()]

    def _postfix_map(self) -> None:
        if self.deliveries is None or self.engine is None:
            return
        try:
            count = write_postfix_map(self.settings, self.engine, self.deliveries.rules)
            if count is not None:
                log.info("postfix_map_written", addresses=count, path=self.settings.postfix.recipient_map)
        except Exception as exc:
            metrics.errors.labels(component="postfix_map").inc()
            log.error("postfix_map_failed", error=f"{type(exc).__name__}: {exc}")

    # --- reload -------------------------------------------------------------------------

    async def reload(self, cause: str) -> bool:
        """Load, validate and sync the rules, then swap them in whole. On any error the
        old rules stay; the error is logged with file, key and line, and counted."""
        assert self.deliveries is not None and self.engine is not None
        loop = asyncio.get_running_loop()
        async with self._reload_lock:
            try:
                rules = await loop.run_in_executor(None, load_and_sync, self.settings, self.database)
            except ConfigError as exc:
                metrics.rule_reloads.labels(result="failed").inc()
                for problem in exc.problems:
                    log.error("rules_reload_failed", cause=cause, file=problem.file, key=problem.key,
                              line=problem.line, problem=problem.message)
                return False
            except Exception as exc:
                metrics.rule_reloads.labels(result="failed").inc()
                metrics.errors.labels(component="reload").inc()
                log.error("rules_reload_failed", cause=cause, error=f"{type(exc).__name__}: {exc}")
                return False
            self.deliveries.swap_rules(rules)
            if self.sender is not None:
                self.sender.set_hooks(rules)
            metrics.rule_reloads.labels(result="ok").inc()
            metrics.rules_last_reload.set(time.time())
            log.info("rules_reloaded", cause=cause, organisations=len(rules.orgs), files=len(rules.files))
            await loop.run_in_executor(None, self._postfix_map)
            return True

    async def _watch_rules(self) -> None:
        """Reload when a rule file changes; debounced so an editor's several writes
        (or a copy of several files) make one reload."""
        directory = self.settings.rules_dir
        interval = self.settings.limits.rules_poll_seconds
        seen = _rules_signature(directory)
        while True:
            await asyncio.sleep(interval)
            now = _rules_signature(directory)
            if now == seen:
                continue
            while True:  # wait until the files stop changing
                await asyncio.sleep(min(interval, 0.5))
                settled = _rules_signature(directory)
                if settled == now:
                    break
                now = settled
            seen = now
            await self.reload("file change")

    # --- stop ---------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop accepting, answer 421 4.3.2 to new commands, let transactions under way
        finish within the grace period, then close what is left."""
        metrics.up.set(0)
        for task in self._tasks:
            task.cancel()
        if self.sessions is not None:
            self.sessions.stopping = True
        for server in self.servers:
            server.close()
        grace = self.settings.limits.shutdown_grace_seconds
        deadline = time.monotonic() + grace
        while self.sessions is not None and self.sessions.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.sessions is not None and self.sessions.in_flight > 0:
            log.warning("shutdown_grace_expired", in_flight=self.sessions.in_flight)
        for handler in self.handlers:
            handler.close_all()
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()
        if self.submission is not None:
            await self.submission.drain()
        if self.api is not None:
            self.api.stop()
            await asyncio.wait([self._api_task], timeout=grace)
            await self.api_context.shutdown(grace)
        if self.outbox is not None:
            await self.outbox.stop()
        if self.sender is not None:
            await self.sender.stop()
        if self.pool:
            await asyncio.get_running_loop().run_in_executor(None, self.pool.shutdown)
        if self.deliveries is not None and self.deliveries.writer is not None:
            self.deliveries.writer.close()
        if self.probes is not None:
            from gateway.probes import QUOTA

            if QUOTA.source == self.quota_report:
                QUOTA.source = None
            self.probes.stop()
        if self._probe_thread is not None:  # a probe under way ends before its engine goes
            from gateway.probes import DATABASE_PROBE_TIMEOUT_SECONDS

            await drain(self._probe_thread, DATABASE_PROBE_TIMEOUT_SECONDS)
        if self._database_probe is not None:
            self._database_probe.dispose()
        self.database_ok = False
        metrics.database_up.set(0)
        for org in self._quarantine_orgs:
            metrics.quarantine_messages.remove(org)
        self._quarantine_orgs = set()
        if self.database:
            self.database.dispose()
        if self._pid_written is not None:
            self._pid_written.unlink(missing_ok=True)
        log.info("stopped")

    def write_pid(self) -> None:
        path = self.settings.path(self.settings.server.pid_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{os.getpid()}\n")
        self._pid_written = path


async def serve(settings: Settings) -> int:
    app = App(settings)
    await app.start()
    # What start-up made (modules, rules, SQLAlchemy's tables and caches: ~100,000
    # objects) lives as long as the process: out of the collector's sight, so a full
    # collection -- which holds the GIL, and with it every session -- scans only
    # what came later (70-130 ms per full collection before; see README Performance).
    gc.collect()
    gc.freeze()
    app.write_pid()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(app.reload("SIGHUP")))
    log.info("ready", listeners={k: f"{h}:{p}" for k, (h, p) in app.bound.items()}, pid=os.getpid())
    await stop.wait()
    log.info("stopping", grace_seconds=settings.limits.shutdown_grace_seconds)
    await app.stop()
    return 0


def run(settings: Settings) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
