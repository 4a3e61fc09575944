"""Outbound submission: one authenticated message, from its bytes to the smarthost and
the CRM.  Knows nothing of aiosmtpd: gateway/smtp/submission.py turns the protocol
into these calls and their outcomes into replies.

The pipeline (Submitter.submit): parse once, in a worker -> an X-Gateway-Class header
moves the quota tokens to that class -> the From must be one the account may use ->
a message relayed before is not relayed again -> the record it belongs to -> rewrite
(record token in the subject, Message-ID, Date, control headers out) -> DKIM sign ->
relay -> keep the tokens of accepted recipients -> file it on the record.

Quota tokens: one is reserved per recipient at RCPT (reserve_one), kept when the
smarthost accepts that recipient and given back on every other path: submit gives
back what it did not keep before it returns or raises; a transaction that never
reaches DATA (RSET, a dropped connection) gives its tokens back with release_later.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

from gateway import events, logs, metrics, outbound, quota, signing
from gateway.addresses import domain_of, normalise
from gateway.delivery import guarded
from gateway.errors import DeliveryFailure, MalformedMessage, TemporaryFailure
from gateway.message import ParsedMessage
from gateway.outcome import RelayDecision, ThreadMatch
from gateway.parse import parse_message
from gateway.quota import MailClass, Reservation
from gateway.relay import RelayOutcome, Smarthost, relay
from gateway.replies import REPLIES, Reply
from gateway.rules.index import LoginEntry, OrgEntry, RuleIndex
from gateway.store import events as store_events
from gateway.store.db import Database
from gateway.workers import BIG_MESSAGE_BYTES, WorkerPool

log = logs.get("gateway.submission")


@dataclass
class SubmissionTransaction:
    """What MAIL and RCPT established for one submission (created at MAIL)."""

    rules: RuleIndex  # the index of MAIL time: a reload does not change a transaction under way
    queue_id: str
    login: LoginEntry
    mail_class: MailClass  # the account's, until an X-Gateway-Class header says otherwise
    # Tokens reserved and not yet settled (kept for good or given back).
    reservations: list[Reservation] = field(default_factory=list)

    @property
    def org(self) -> OrgEntry:
        return self.rules.orgs[self.login.org_id]


def quota_reply(org: OrgEntry, mail_class: MailClass) -> Reply:
    limit = quota.limit_for(org, mail_class)
    return REPLIES.quota_exhausted.with_text(
        f"Daily {mail_class} sending limit of {limit} reached for {org.id}; resets {quota.reset_text(org.timezone)}")


class Submitter:
    def __init__(self, database: Database, pool: WorkerPool, smarthost: Smarthost, hostname: str,
                 changed: Callable[[], None] = lambda: None):
        self.database = database
        self.pool = pool
        # After a commit with events (the daemon's outbox wakes up).
        self.changed = changed
        self.smarthost = smarthost
        self.hostname = hostname  # for the Message-ID of mail that has none
        self._pending: set[asyncio.Task[None]] = set()

    # --- tokens ---------------------------------------------------------------------------

    async def reserve_one(self, tx: SubmissionTransaction) -> bool:
        """One token for one more recipient, kept in tx.reservations; False when the
        organisation's day is spent.  Raises DeliveryFailure (database trouble)."""
        taken = await self._reserve(tx.org, tx.mail_class, 1)
        if taken is None:
            return False
        tx.reservations.append(taken)
        return True

    async def _reserve(self, org: OrgEntry, mail_class: MailClass, count: int) -> Reservation | None:
        taken = await self.pool.run(guarded(self.database.writing, "quota_reserve"), quota.reserve, org, mail_class,
                                    count)
        if taken is None:
            self.changed()  # the day's first refusal wrote quota.exhausted
        return taken

    def release_later(self, tx: SubmissionTransaction) -> None:
        """Give back the tokens of a transaction that ended without DATA, in a task
        (drain waits for it at stop)."""
        reservations, tx.reservations = tx.reservations, []
        if not reservations:
            return
        task = asyncio.get_event_loop().create_task(self.release(reservations))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def release(self, reservations: list[Reservation]) -> None:
        for reservation in reservations:
            try:
                await self.pool.run(self.database.writing, quota.release, reservation)
            except Exception:
                log.exception("quota_release_failed", org=reservation.org_id, count=reservation.count)

    async def drain(self) -> None:
        """At stop: wait for tokens still being given back."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    # --- the pipeline -----------------------------------------------------------------------

    async def submit(self, tx: SubmissionTransaction, mail_from: str, rcpts: list[str], raw: bytes,
                     client_ip: str) -> Reply:
        """Relay one message and file it: the reply for its DATA.  Raises DeliveryFailure
        when the message or the account is refused, or the database or DKIM key is
        unavailable.  The tokens not kept for good go back before it returns or raises."""
        try:
            return await self._submit(tx, mail_from, rcpts, raw, client_ip)
        finally:
            # Tokens not taken for good go back before the submitter hears the outcome.
            unsettled, tx.reservations = tx.reservations, []
            await self.release(unsettled)

    async def _submit(self, tx: SubmissionTransaction, mail_from: str, rcpts: list[str], raw: bytes,
                      client_ip: str) -> Reply:
        database, pool = self.database, self.pool
        login, org = tx.login, tx.org
        try:
            parsed: ParsedMessage = await pool.run(parse_message, raw, big=len(raw) > BIG_MESSAGE_BYTES)
        except MalformedMessage as exc:
            return exc.reply
        # The class may come from a header (removed before relay): move the tokens.
        wanted = quota.class_from_header(parsed.header(quota.CLASS_HEADER))
        if wanted and wanted != tx.mail_class:
            moved = await self._reserve(org, wanted, len(rcpts))
            if moved is None:
                return quota_reply(org, wanted)
            # Swapped before the await: a dropped connection meanwhile gives back only
            # the moved tokens, never these twice.
            previous, tx.reservations = tx.reservations, [moved]
            tx.mail_class = wanted
            await self.release(previous)
        sender = parsed.from_.address if parsed.from_ else mail_from
        outbound.check_sender(org, login, sender)
        if await pool.run(guarded(database.reading, "relay_dedup"), outbound.already_relayed, org.id, parsed):
            log.info("submission", outcome="duplicate", org=org.id)
            return REPLIES.already_relayed
        record = await pool.run(guarded(database.reading, "relay_record_lookup"), outbound.find_record, org, parsed,
                                parsed.header(outbound.RECORD_HEADER))
        subject = outbound.subject_with_token(parsed.subject, record.token) if record else None
        message, message_id = outbound.rewrite(raw, parsed=parsed, subject=subject, hostname=self.hostname)
        key = org.dkim[domain_of(normalise(sender))]
        try:
            signed = await pool.run(signing.sign_with_key_file, message, key.domain, key.selector, key.key_path)
        except signing.DkimKeyError as exc:
            # Configuration, not a fault of ours or of the message: 4.3.5, and the
            # operator learns which file (the submitter's retry works once it exists).
            hint = f"gateway dkim keygen {key.domain} --selector {key.selector}"
            log.error("dkim_key_unavailable", file=str(key.key_path), domain=key.domain, selector=key.selector,
                      org=org.id, error=str(exc), fix=hint)
            raise TemporaryFailure(REPLIES.dkim_key_unavailable, f"{exc}; create it with: {hint}") from exc
        with metrics.timed(metrics.processing_duration, stage="relay"), metrics.timed(metrics.relay_duration):
            outcome = await relay(self.smarthost, mail_from, list(rcpts), signed + message)
        metrics.relay_attempts.labels(outcome="relayed" if outcome.ok else
                                      "deferred" if outcome.reply.temporary else "refused").inc()
        decision = RelayDecision(
            login=login.username, mail_class=tx.mail_class,
            thread=ThreadMatch(record.id, record.method, record.evidence) if record else ThreadMatch(None, "none"),
            token_added=subject is not None, smarthost=self.smarthost.describe(),
            accepted=len(outcome.accepted), refused=dict(outcome.refused),
        )
        log.info("relay", outcome="relayed" if outcome.ok else "failed", client_ip=client_ip, username=login.username,
                 code=outcome.reply.code, status=outcome.reply.status, org=org.id, mail_class=tx.mail_class,
                 recipients=len(rcpts), refused=len(outcome.refused), detail=outcome.detail[:200],
                 record_id=record.id if record else None)
        if not outcome.ok:
            await self._tell_failure(org.id, parsed, mail_from, list(rcpts), login.username, outcome)
            return outcome.reply
        # Taken for good: tokens of accepted recipients stay used; refused ones go back.
        kept, tx.reservations = tx.reservations, []
        refused = len(outcome.refused)
        if refused:
            tx.reservations = [Reservation(kept[0].org_id, kept[0].mail_class, kept[0].day, refused)]
        user = org.users.get(normalise(sender))
        try:
            await pool.run(guarded(database.writing, "relay_store"), outbound.store_outbound, tx.rules, org.id,
                           signed + message, record, user.id if user else None, decision)
        except DeliveryFailure as exc:
            # Already relayed: the mail is out, so the submitter must not resend it.
            log.error("outbound_not_stored", reason=exc.detail, message_id=message_id)
        else:
            self.changed()
        return REPLIES.relayed

    async def _tell_failure(self, org_id: str, parsed: ParsedMessage, mail_from: str, rcpts: list[str], login: str,
                            outcome: RelayOutcome) -> None:
        """relay.failed, in a transaction of its own (the failure is the change); if the
        database is down too, the submitter still hears the smarthost's answer."""
        event = events.relay_failed(parsed.message_id, mail_from, rcpts, login, str(outcome.reply), outcome.detail,
                                    outcome.refused)
        try:
            await self.pool.run(guarded(self.database.writing, "relay_store"), store_events.append, org_id, [event])
        except DeliveryFailure as exc:
            log.error("event_not_stored", type=event.type, org=org_id, reason=exc.detail)
            return
        self.changed()
