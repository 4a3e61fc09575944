"""Composition root: settings + rules + database + worker pool + listeners + signals."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from gateway import logs
from gateway.delivery import Gateway
from gateway.rules.index import RuleIndex
from gateway.rules.loader import load_rules
from gateway.settings import Settings, parse_listen
from gateway.smtp.handler import Handler
from gateway.smtp.server import GatewayLMTP, GatewaySMTP
from gateway.store import db, repo
from gateway.workers import WorkerPool

log = logs.get("gateway.app")


def open_database(settings: Settings) -> Engine:
    """An engine on an up-to-date schema (serve brings an empty database up to date)."""
    engine = db.make_engine(settings.database_url, settings.database.timeout_seconds,
                            pool_size=settings.limits.workers + 2)
    applied = db.upgrade(engine)
    if applied:
        log.info("database_upgraded", revisions=applied)
    return engine


def load_and_sync(settings: Settings, engine: Engine) -> RuleIndex:
    return repo.sync_rules(engine, load_rules(settings.rules_dir))


@dataclass
class App:
    settings: Settings
    engine: Engine | None = None
    gateway: Gateway | None = None
    pool: WorkerPool | None = None
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    bound: dict[str, tuple[str, int]] = field(default_factory=dict)
    submission: Any = None

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self.pool = WorkerPool(s.limits.workers, s.limits.big_message_slots)
        self.engine = await loop.run_in_executor(None, open_database, s)
        rules = await loop.run_in_executor(None, load_and_sync, s, self.engine)
        self.gateway = Gateway(self.engine, rules, self.pool)
        for name, cls, listen in (("lmtp", GatewayLMTP, s.listeners.lmtp), ("smtp", GatewaySMTP, s.listeners.smtp)):
            if not listen:
                continue
            host, port = parse_listen(listen)
            handler = Handler(self.gateway, listener=name, data_limit=s.limits.max_message_bytes,
                              max_recipients=s.limits.max_recipients)

            def factory(cls=cls, handler=handler):  # type: ignore[no-untyped-def]
                return cls(handler, data_limit=s.limits.max_message_bytes, hostname=s.server.hostname,
                           ident="CRM mail gateway", timeout=s.limits.session_timeout_seconds, loop=loop)

            await self._listen(name, factory, host, port)
        if s.listeners.submission:
            from gateway.smtp.submission import SubmissionHandler, SubmissionSMTP, tls_context

            host, port = parse_listen(s.listeners.submission)
            self.submission = SubmissionHandler(self.gateway, s)
            context = tls_context(s)

            def submission_factory():  # type: ignore[no-untyped-def]
                return SubmissionSMTP(self.submission, data_limit=s.limits.max_message_bytes,
                                      loopback_auth=s.submission.auth_without_tls_on_loopback,
                                      tls_context=context, hostname=s.server.hostname, ident="CRM mail gateway",
                                      timeout=s.limits.session_timeout_seconds, loop=loop)

            await self._listen("submission", submission_factory, host, port)

    async def _listen(self, name: str, factory, host: str, port: int) -> None:  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, host=host, port=port, reuse_address=True)
        self.servers.append(server)
        sockname = server.sockets[0].getsockname()
        self.bound[name] = (sockname[0], sockname[1])
        log.info("listening", listener=name, host=sockname[0], port=sockname[1])

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()
        if self.submission is not None:
            await self.submission.drain()
        if self.pool:
            await asyncio.get_running_loop().run_in_executor(None, self.pool.shutdown)
        if self.engine:
            self.engine.dispose()
        log.info("stopped")


async def serve(settings: Settings) -> int:
    app = App(settings)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("ready", listeners={k: f"{h}:{p}" for k, (h, p) in app.bound.items()})
    await stop.wait()
    log.info("stopping")
    await app.stop()
    return 0


def run(settings: Settings) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
