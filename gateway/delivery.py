"""One delivery, from recipient lookup to per-recipient replies.  Knows nothing of aiosmtpd.

RCPT: address → route (rules in memory; a dropbox token is checked in the database
so a regenerated address stops working at once in every process).
DATA: the message is parsed once, in a worker (or, on SQLite and up to 128 KB, in the
loop's next group-commit batch, gateway/store/writer.py); each route files it in its
own transaction (a savepoint in a batch) -- the caller opens it and hands the
connection to the filing; each recipient gets its own reply, 250 only after the commit.
"""

from __future__ import annotations

import time
from typing import Any, Callable, ContextManager

import sqlalchemy.exc
from sqlalchemy import Connection

from gateway import logs, metrics, trust
from gateway.errors import DeliveryFailure, PermanentFailure, TemporaryFailure
from gateway.guard import database_failure, guarded
from gateway.filing import file
from gateway.parse import parse_message
from gateway.message import ParsedMessage
from gateway.outcome import AliasDecision, DropboxDecision, Filing
from gateway.replies import REPLIES, Reply
from gateway.routing import AliasRoute, DropboxCandidate, DropboxRoute, Route, classify, dropbox_route
from gateway.settings import Trust
from gateway.rules.index import RuleIndex
from gateway.store import dropboxes
from gateway.store.db import Database, savepoint
from gateway.store.writer import INLINE_MAX_BYTES, Busy, LoopWriter
from gateway.workers import BIG_MESSAGE_BYTES, WorkerPool

log = logs.get("gateway.delivery")

# Filing attempts when the database connection turns out to be lost (no ping per
# checkout under load: gateway/store/db.py).
LOST_CONNECTION_ATTEMPTS = 3

# A route's filing, or the error that stopped it (turned into a reply on the loop).
RouteResult = tuple["Filing | None", "Exception | None"]


# What files one message for one route on the caller's connection (gateway.filing.file).
FilingFunction = Callable[[Connection, RuleIndex, Route, ParsedMessage, str], Filing]


class Deliveries:
    """The delivery core: route at RCPT, deliver at DATA.  Holds what filing needs --
    the database, the worker pool, the SQLite loop writer, the rules -- and nothing
    of the protocol sessions (gateway/smtp/sessions.py)."""

    def __init__(self, database: Database, rules: RuleIndex, pool: WorkerPool, quarantine_after: int = 5,
                 writer: LoopWriter | None = None, filing: FilingFunction = file, trust: Trust | None = None):
        self.database = database
        self._rules = rules
        self.pool = pool
        # SQLite: small messages are filed on the loop in batches (store/writer.py).
        self.writer = writer
        self.quarantine_after = quarantine_after
        # Called after a commit that wrote events (the daemon's outbox wakes up).
        self.changed: Callable[[], None] = lambda: None
        # What files one message for one route (the composition root may wrap it).
        self.filing = filing
        # Whom we believe about a sender (gateway.toml [trust]); ``dns``: the resolver
        # dkimpy uses (None: its own).
        self.trust = trust or Trust()
        self.dns: Callable[..., Any] | None = None

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
                user_id = guarded(self.writer.read, "dropbox_lookup")(dropboxes.owner, found.org_id, found.token)
            except Busy:
                user_id = await self.pool.run(guarded(self.database.reading, "dropbox_lookup"), dropboxes.owner,
                                              found.org_id, found.token)
            return dropbox_route(rules, found.org_id, user_id)
        return found

    async def deliver(
        self, rules: RuleIndex, routes: list[Route], raw: bytes, envelope_sender: str
    ) -> list[Reply]:
        """Parse once and file for every route in one job: in a worker, or (SQLite, small
        messages) in the loop's next batch transaction; each recipient's reply only
        after the commit."""
        started = time.monotonic()
        big = len(raw) > BIG_MESSAGE_BYTES
        # Our own DKIM check does DNS: in a worker, never in the loop's batch.
        verify = self.trust.verify_dkim and any(
            isinstance(r, DropboxRoute) and rules.orgs[r.org_id].dropbox_requires != "none" for r in routes)
        try:
            try:
                if self.writer is None or len(raw) > INLINE_MAX_BYTES or verify:
                    raise Busy()
                parsed, outcomes = await self.writer.run(self._work_in_batch, rules, routes, raw, envelope_sender)
            except Busy:
                parsed, outcomes = await self.pool.run(self._work, rules, routes, raw, envelope_sender, verify,
                                                       big=big)
        except PermanentFailure as exc:
            log.info("message_unparseable", reason=exc.detail, size=len(raw))
            return [exc.reply] * len(routes)
        except sqlalchemy.exc.SQLAlchemyError as exc:  # a writer batch failed as a whole
            failure = database_failure(exc)
            log.warning("recipient_decision", outcome="deferred", code=failure.reply.code,
                        status=failure.reply.status, reason=failure.detail, duration_ms=_ms(started))
            return [failure.reply] * len(routes)
        if any(result is not None and result.result in ("filed", "held") for result, _ in outcomes):
            self.changed()  # committed: the outbox may tell the CRM
        replies = []
        for route, (result, error) in zip(routes, outcomes):
            replies.append(await self._reply(route, parsed, envelope_sender, result, error, started))
        return replies

    def _work(self, rules: RuleIndex, routes: list[Route], raw: bytes, envelope_sender: str,
              verify: bool = False) -> tuple[ParsedMessage, list[RouteResult]]:
        """In a worker: parse (and with ``verify`` check DKIM signatures), then file each
        route in its own transaction."""
        parsed = trust.authenticate(_parse(raw), self.trust.authserv_ids, verify, self.dns)
        return parsed, self._file_each(self.database.write, rules, routes, parsed, envelope_sender)

    def _work_in_batch(self, conn: Connection, rules: RuleIndex, routes: list[Route], raw: bytes,
                       envelope_sender: str) -> tuple[ParsedMessage, list[RouteResult]]:
        """On the loop, in the writer's batch transaction: parse, then file each route
        in its own savepoint (committed with the batch)."""
        parsed = trust.authenticate(_parse(raw), self.trust.authserv_ids)
        return parsed, self._file_each(lambda: savepoint(conn), rules, routes, parsed, envelope_sender)

    def _file_each(self, transaction: Callable[[], ContextManager[Connection]], rules: RuleIndex,
                   routes: list[Route], parsed: ParsedMessage, envelope_sender: str) -> list[RouteResult]:
        def file_one(route: Route) -> Filing:
            for attempt in range(1, LOST_CONNECTION_ATTEMPTS + 1):
                try:
                    with transaction() as conn:
                        return self.filing(conn, rules, route, parsed, envelope_sender)
                except sqlalchemy.exc.DBAPIError as exc:
                    # A pooled connection the server dropped (restart, failover) while it
                    # sat in the pool: nothing was committed, or the COMMIT went through
                    # and the idempotency key makes the next attempt a duplicate.  The
                    # pool has discarded it with its elders; try on a new one.
                    if not exc.connection_invalidated or attempt == LOST_CONNECTION_ATTEMPTS:
                        raise
                    log.info("database_connection_lost", attempt=attempt, error=str(exc.orig)[:200])
            raise AssertionError("unreachable")

        outcomes: list[RouteResult] = []
        for route in routes:
            try:
                with metrics.timed(metrics.processing_duration, stage="file"):
                    outcomes.append((guarded(file_one, f"file_{route.kind}")(route), None))
            except Exception as exc:  # turned into a reply on the loop
                outcomes.append((None, exc))
        return outcomes

    async def _reply(self, route: Route, parsed: ParsedMessage, envelope_sender: str,
                     result: Filing | None, error: Exception | None, started: float) -> Reply:
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
        reply = reply_for(result)
        fields.update(log_fields(result))
        log.info("recipient_decision", outcome=result.result, code=reply.code, status=reply.status,
                 email_id=result.email_id, people=_people(result), duration_ms=_ms(started), **fields)
        return reply

    async def _failed(self, route: Route, parsed: ParsedMessage, envelope_sender: str, exc: Exception) -> Reply:
        """Our own error: 451 so the MTA retries -- until it has failed too often; then
        the message goes whole into the quarantine and the MTA gets 250."""
        from gateway import quarantine

        error = f"{type(exc).__name__}: {exc}"
        try:
            attempts = await self.pool.run(guarded(self.database.writing, "failure_count"), quarantine.count_failure,
                                           route.org_id, route.key, parsed, error)
            if attempts < self.quarantine_after:
                return REPLIES.internal_error
            kept = await self.pool.run(guarded(self.database.writing, "quarantine_keep"), quarantine.keep,
                                       route.org_id, route, parsed, envelope_sender, attempts, error)
        except DeliveryFailure:
            return REPLIES.internal_error
        metrics.quarantined.labels(route=route.kind).inc()
        self.changed()  # message.quarantined
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
    if not parsed.split.new_text and parsed.text_body.strip() and parsed.forward is None:  # a bare forward: no note
        metrics.parse_anomalies.labels(kind="new_text_empty").inc()
    if parsed.forward is not None and parsed.forward.problem:
        metrics.parse_anomalies.labels(kind="forward_unreadable").inc()
    return parsed


# The reply of each result (noise outside any thread is accepted and dropped, never
# bounced: no backscatter).
_REPLIES = {"filed": REPLIES.filed, "dropped": REPLIES.dropped, "duplicate": REPLIES.duplicate,
            "held": REPLIES.held}


def reply_for(filing: Filing) -> Reply:
    return _REPLIES[filing.result]


def log_fields(filing: Filing) -> dict[str, Any]:
    """What the recipient_decision log line says of a filing beyond its result."""
    d = filing.decision
    hold = filing.hold
    if hold is not None:
        return {"review_id": filing.held_id, "held": hold.reason, "evidence": hold.evidence[:300]}
    if not isinstance(d, AliasDecision):
        return {}
    if filing.dropped:
        return {"noise": str(d.noise) if d.noise else None}
    assert d.record is not None
    return {"record_id": d.record.id, "thread": d.thread.method}


def _people(filing: Filing) -> list[tuple[str, int | None, str]]:
    d = filing.decision
    return [(p.kind, p.id, p.action) for p in d.people] if isinstance(d, DropboxDecision) else []


def count_result(route: Route, result: Filing) -> None:
    """Metrics of what a filing created, how it threaded, whether it reopened."""
    if result.duplicate:
        return
    if result.hold is not None:
        metrics.review_held.labels(reason=result.hold.reason).inc()
        return
    pipeline = route.alias.pipeline if isinstance(route, AliasRoute) else ""
    for kind in result.created():
        metrics.created.labels(kind=kind, pipeline=pipeline).inc()
    if isinstance(result.decision, AliasDecision):
        metrics.thread_decisions.labels(method=result.decision.thread.method).inc()
    if result.reopened():
        metrics.reopens.labels(pipeline=pipeline).inc()


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
