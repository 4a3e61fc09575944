"""One delivery, from recipient lookup to per-recipient replies.  Knows nothing of aiosmtpd.

RCPT: address → route (rules in memory; a dropbox token is checked in the database
so a regenerated address stops working at once in every process).
DATA: the message is parsed once, in a worker (or, on SQLite and up to 128 KB, in the
loop's next group-commit batch, gateway/store/writer.py); each route files it in its
own transaction (a savepoint in a batch); each recipient gets its own reply, 250 only
after the commit.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import sqlalchemy.exc
from sqlalchemy import Engine

from gateway import logs, metrics
from gateway.errors import DeliveryFailure, PermanentFailure, TemporaryFailure
from gateway.ingest import dropbox, email_in
from gateway.ingest.parse import parse_message
from gateway.message import ParsedMessage
from gateway.replies import REPLIES, Reply
from gateway.routing import AliasRoute, DropboxCandidate, DropboxRoute, Route, classify, dropbox_route
from gateway.rules.index import RuleIndex
from gateway.store import repo
from gateway.store.writer import INLINE_MAX_BYTES, Busy, LoopWriter
from gateway.workers import BIG_MESSAGE_BYTES, BigMessages, WorkerPool

log = logs.get("gateway.delivery")


def guarded(fn: Callable[..., Any], operation: str) -> Callable[..., Any]:
    """Database work, timed under ``operation`` (one of metrics.DB_OPERATIONS: label
    values are stable names, never Python names); trouble of any kind is temporary:
    451 4.3.0, the MTA retries."""
    if operation not in metrics.DB_OPERATIONS:
        raise ValueError(f"guarded(): operation {operation!r} is not one of metrics.DB_OPERATIONS; name it there")
    histogram = metrics.db_duration.labels(operation=operation)

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with histogram.time():
                return fn(*args, **kwargs)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise database_failure(exc) from exc

    return run


def database_failure(exc: sqlalchemy.exc.SQLAlchemyError) -> TemporaryFailure:
    first_line = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0]
    return TemporaryFailure(REPLIES.database_unavailable, f"database: {type(exc).__name__}: {first_line[:300]}")


class ConnectionLimits:
    """Sessions at once, in all and per client address (all listeners together)."""

    def __init__(self, total: int, per_client: int):
        self.total_limit, self.per_client_limit = total, per_client
        self.total = 0
        self.by_client: dict[str, int] = {}

    def open(self, peer: str) -> Reply | None:
        self.total += 1
        count = self.by_client[peer] = self.by_client.get(peer, 0) + 1
        if self.total > self.total_limit or count > self.per_client_limit:
            return REPLIES.too_many_connections
        return None

    def close(self, peer: str) -> None:
        self.total -= 1
        left = self.by_client.get(peer, 1) - 1
        if left > 0:
            self.by_client[peer] = left
        else:
            self.by_client.pop(peer, None)


class Gateway:
    def __init__(self, engine: Engine, rules: RuleIndex, pool: WorkerPool,
                 connections: ConnectionLimits | None = None, quarantine_after: int = 5,
                 writer: LoopWriter | None = None, big_in_memory: int = 4):
        self.engine = engine
        self._rules = rules
        self.pool = pool
        # SQLite: small messages are filed on the loop in batches (store/writer.py).
        self.writer = writer
        # Messages over 1 MB held in memory at once (reading waits beyond that).
        self.big_messages = BigMessages(big_in_memory)
        # Set on SIGTERM: new commands get 421 4.3.2.
        self.stopping = False
        # Transactions between 354 and their last reply (the stop waits for them);
        # exported as gateway_deliveries_in_flight (property below).
        self._in_flight = 0
        self.connections = connections or ConnectionLimits(500, 50)
        self.quarantine_after = quarantine_after
        # The filing function of each kind of route.
        self.filers: dict[type, Callable[..., repo.FilingResult]] = {
            DropboxRoute: self._file_dropbox,
            AliasRoute: self._file_alias,
        }

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        # By the difference: several Gateway objects in one process (tests, explain)
        # add up in the one gauge.
        metrics.deliveries_in_flight.inc(value - self._in_flight)
        self._in_flight = value

    def _file_dropbox(self, rules: RuleIndex, route: DropboxRoute, parsed: ParsedMessage, sender: str) -> repo.FilingResult:
        return dropbox.file(self.engine, rules, route, parsed, sender)

    def _file_alias(self, rules: RuleIndex, route: AliasRoute, parsed: ParsedMessage, sender: str) -> repo.FilingResult:
        return email_in.file(self.engine, rules, route, parsed, sender)

    @property
    def rules(self) -> RuleIndex:
        return self._rules

    def swap_rules(self, rules: RuleIndex) -> None:
        """Deliveries under way keep the index they started with (captured at MAIL)."""
        self._rules = rules

    async def route_for(self, rules: RuleIndex, address: str) -> Route | None:
        found = classify(rules, address)
        if isinstance(found, DropboxCandidate):
            try:
                if self.writer is None:
                    raise Busy()
                user_id = guarded(self.writer.read, "dropbox_lookup")(repo.dropbox_owner_on, found.org_id, found.token)
            except Busy:
                user_id = await self.pool.run(guarded(repo.dropbox_owner, "dropbox_lookup"), self.engine,
                                              found.org_id, found.token)
            return dropbox_route(rules, found.org_id, user_id)
        return found

    def route_now(self, rules: RuleIndex, address: str) -> Route | None:
        """route_for, blocking (for `gateway explain`)."""
        found = classify(rules, address)
        if isinstance(found, DropboxCandidate):
            owner = guarded(repo.dropbox_owner, "dropbox_lookup")(self.engine, found.org_id, found.token)
            return dropbox_route(rules, found.org_id, owner)
        return found

    async def deliver(
        self, rules: RuleIndex, routes: list[Route], raw: bytes, envelope_sender: str
    ) -> list[Reply]:
        """Parse once and file for every route in one job: in a worker, or (SQLite, small
        messages) in the loop's next batch transaction; each recipient's reply only
        after the commit."""
        started = time.monotonic()
        big = len(raw) > BIG_MESSAGE_BYTES
        try:
            try:
                if self.writer is None or len(raw) > INLINE_MAX_BYTES:
                    raise Busy()
                parsed, outcomes = await self.writer.run(self._work, rules, routes, raw, envelope_sender)
            except Busy:
                parsed, outcomes = await self.pool.run(self._work, rules, routes, raw, envelope_sender, big=big)
        except PermanentFailure as exc:
            log.info("message_unparseable", reason=exc.detail, size=len(raw))
            return [exc.reply] * len(routes)
        except sqlalchemy.exc.SQLAlchemyError as exc:  # a writer batch failed as a whole
            failure = database_failure(exc)
            log.warning("recipient_decision", outcome="deferred", code=failure.reply.code,
                        status=failure.reply.status, reason=failure.detail, duration_ms=_ms(started))
            return [failure.reply] * len(routes)
        replies = []
        for route, (result, error) in zip(routes, outcomes):
            replies.append(await self._reply(route, parsed, envelope_sender, result, error, started))
        return replies

    def _work(self, rules: RuleIndex, routes: list[Route], raw: bytes,
              envelope_sender: str) -> tuple[ParsedMessage, list[tuple[repo.FilingResult | None, Exception | None]]]:
        """Off the loop: parse, then file for each route."""
        parsed = _parse(raw)
        return parsed, self._file_all(rules, routes, parsed, envelope_sender)

    def _file_all(self, rules: RuleIndex, routes: list[Route], parsed: ParsedMessage,
                  envelope_sender: str) -> list[tuple[repo.FilingResult | None, Exception | None]]:
        """Each route's filing in its own transaction (a savepoint in a writer batch)."""
        outcomes: list[tuple[repo.FilingResult | None, Exception | None]] = []
        for route in routes:
            try:
                with metrics.timed(metrics.processing_duration, stage="file"):
                    filer = guarded(self.filers[type(route)], f"file_{route.kind}")
                    outcomes.append((filer(rules, route, parsed, envelope_sender), None))
            except Exception as exc:  # turned into a reply on the loop
                outcomes.append((None, exc))
        return outcomes

    async def _reply(self, route: Route, parsed: ParsedMessage, envelope_sender: str,
                     result: repo.FilingResult | None, error: Exception | None, started: float) -> Reply:
        fields: dict[str, Any] = {"org": route.org_id, "route": route.kind}
        if isinstance(error, DeliveryFailure):
            reply = error.reply
            fields["reason"] = error.detail
            if isinstance(error, TemporaryFailure):
                log.warning("recipient_decision", outcome="deferred", code=reply.code, status=reply.status,
                            duration_ms=_ms(started), **fields)
            else:
                log.info("recipient_decision", outcome="rejected", code=reply.code, status=reply.status,
                         duration_ms=_ms(started), **fields)
            return reply
        if error is not None or result is None:
            metrics.errors.labels(component="delivery").inc()
            log.error("recipient_decision", outcome="deferred", code=451, status="4.3.0",
                      duration_ms=_ms(started), exc_info=error, **fields)
            return await self._failed(route, parsed, envelope_sender, error or RuntimeError("no result"))
        count_result(route, result)
        if result.duplicate:
            reply, outcome = REPLIES.duplicate, "duplicate"
        elif result.dropped:
            # Noise outside any thread: accepted and dropped, never bounced (no backscatter).
            reply, outcome = REPLIES.dropped, "dropped"
            fields["noise"] = result.decision.get("noise")
        else:
            reply, outcome = REPLIES.filed, "filed"
        if result.decision.get("record"):
            fields["record_id"] = result.decision["record"]["id"]
            fields["thread"] = result.decision.get("thread", {}).get("method")
        log.info(
            "recipient_decision",
            outcome=outcome,
            code=reply.code,
            status=reply.status,
            email_id=result.email_id,
            people=[(p["kind"], p["id"], p["action"]) for p in result.people],
            duration_ms=_ms(started),
            **fields,
        )
        return reply

    async def _failed(self, route: Route, parsed: ParsedMessage, envelope_sender: str, exc: Exception) -> Reply:
        """Our own error: 451 so the MTA retries -- until it has failed too often; then
        the message goes whole into the quarantine and the MTA gets 250."""
        from gateway import quarantine

        error = f"{type(exc).__name__}: {exc}"
        try:
            attempts = await self.pool.run(guarded(quarantine.count_failure, "failure_count"), self.engine,
                                           route.org_id, route.key, parsed, error)
            if attempts < self.quarantine_after:
                return REPLIES.internal_error
            kept = await self.pool.run(guarded(quarantine.keep, "quarantine_keep"), self.engine, route.org_id,
                                       route, parsed, envelope_sender, attempts, error)
        except DeliveryFailure:
            return REPLIES.internal_error
        metrics.quarantined.labels(route=route.kind).inc()
        log.error("quarantined", org=route.org_id, route=route.kind, attempts=attempts, quarantine_id=kept,
                  error=error[:300])
        return REPLIES.quarantined


def _parse(raw: bytes) -> ParsedMessage:
    with metrics.timed(metrics.processing_duration, stage="parse"):
        parsed = parse_message(raw)
    if parsed.skipped_parts:
        metrics.parse_anomalies.labels(kind="parts_skipped").inc()
    if parsed.empty_body:
        metrics.parse_anomalies.labels(kind="empty_body").inc()
    return parsed


def count_result(route: Route, result: repo.FilingResult) -> None:
    """Metrics of what a filing created, how it threaded, whether it reopened."""
    if result.duplicate:
        return
    pipeline = route.alias.pipeline if isinstance(route, AliasRoute) else ""
    for person in result.people:
        if person["action"] == "created":
            metrics.created.labels(kind=person["kind"], pipeline=pipeline).inc()
    decision = result.decision
    if (decision.get("contact") or {}).get("action") == "created":
        metrics.created.labels(kind="contact", pipeline=pipeline).inc()
    if (decision.get("record") or {}).get("action") == "created":
        metrics.created.labels(kind="record", pipeline=pipeline).inc()
    if decision.get("thread"):
        metrics.thread_decisions.labels(method=decision["thread"]["method"]).inc()
    if (decision.get("stage_change") or {}).get("cause") == "reply":
        metrics.reopens.labels(pipeline=pipeline).inc()


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
