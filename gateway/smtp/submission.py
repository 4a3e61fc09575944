"""The submission listener: AUTH, quota tokens at RCPT, DKIM signing and relay at DATA.

No open relay: MAIL without AUTH is 530 5.7.0 (aiosmtpd's auth_required), AUTH
before TLS is 538 5.7.11 unless the configuration allows it from loopback, and a
From the account's organisation may not use is 550 5.7.1.  One quota token is
reserved per recipient at RCPT, kept when the smarthost accepts and given back on
every other path (relay failure, refusal, RSET, a dropped connection).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from gateway import logs, metrics, passwords, quota
from gateway.addresses import domain_of, normalise
from gateway.delivery import Gateway, guarded
from gateway.errors import DeliveryFailure, MalformedMessage, TemporaryFailure
from gateway.ingest.parse import ParsedMessage, parse_message
from gateway import outbound, signing
from gateway.relay import Smarthost, relay
from gateway.replies import REPLIES, Reply
from gateway.rules.index import LoginEntry, OrgEntry
from gateway.settings import Settings
from gateway.smtp.handler import Handler, _queue_id
from gateway.smtp.server import GatewaySMTP
from gateway.workers import BIG_MESSAGE_BYTES

log = logs.get("gateway.submission")


def is_loopback(peer: Any) -> bool:
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except (TypeError, ValueError, IndexError):
        return False


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    sub = settings.submission
    if not (sub.tls_cert and sub.tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.path(sub.tls_cert), settings.path(sub.tls_key))
    return context


class SubmissionSMTP(GatewaySMTP):
    def __init__(self, handler: "SubmissionHandler", *, data_limit: int, loopback_auth: bool, **kwargs: Any):
        super().__init__(handler, data_limit=data_limit, auth_required=True, auth_require_tls=True,
                         authenticator=handler.authenticate, **kwargs)
        self._loopback_auth = loopback_auth

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._loopback_auth and is_loopback(self.session.peer):
            self._auth_require_tls = False

    def _set_post_data_state(self) -> None:
        # Called after DATA and by RSET/EHLO: tokens of an unfinished transaction go back.
        envelope = getattr(self, "envelope", None)
        if envelope is not None:
            self.event_handler.release_later(envelope)
        super()._set_post_data_state()

    def connection_lost(self, exc: Exception | None) -> None:
        envelope = getattr(self, "envelope", None)
        if envelope is not None:
            self.event_handler.release_later(envelope)
        super().connection_lost(exc)


class SubmissionHandler(Handler):
    def __init__(self, gateway: Gateway, settings: Settings):
        super().__init__(gateway, listener="submission", data_limit=settings.limits.max_message_bytes,
                         max_recipients=settings.limits.max_recipients)
        self.settings = settings
        self.smarthost = Smarthost.from_url(settings.relay.url, settings.relay.timeout_seconds)
        self._pending: set[asyncio.Task[None]] = set()

    # --- AUTH -----------------------------------------------------------------------

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username = normalise(auth_data.login.decode("utf-8", "replace"))
        login = self.gateway.rules.logins.get(username)
        ok = (
            login is not None
            and (not login.loopback_only or is_loopback(session.peer))
            and passwords.verify(auth_data.password, login.password_hash)
        )
        log.info("auth", outcome="ok" if ok else "failed", mechanism=mechanism,
                 org=login.org_id if login else None)
        if not ok:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=login)

    # --- MAIL / RCPT --------------------------------------------------------------------

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        for option in mail_options:
            key, _, value = option.partition("=")
            if key == "SIZE" and value.isdigit() and int(value) > self.data_limit:
                return str(REPLIES.too_big)
        login: LoginEntry = session.auth_data
        rules = self.gateway.rules
        org = rules.orgs.get(login.org_id)
        sender = normalise(address)
        if org is None or domain_of(sender) not in org.domains:
            log.info("submission_refused", stage="mail", code=550, status="5.7.1", reason="envelope sender domain")
            return str(REPLIES.from_not_allowed)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.rules = rules  # type: ignore[attr-defined]
        envelope.login = login  # type: ignore[attr-defined]
        envelope.mail_class = login.mail_class  # type: ignore[attr-defined]
        envelope.reservations = []  # type: ignore[attr-defined]
        envelope.queue_id = _queue_id()  # type: ignore[attr-defined]
        return str(REPLIES.sender_ok)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        reply = await self._reserve(envelope, address)
        self.count_replies("rcpt", [reply])
        return str(reply)

    async def _reserve(self, envelope: Envelope, address: str) -> Reply:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return REPLIES.too_many_recipients
        org = envelope.rules.orgs[envelope.login.org_id]  # type: ignore[attr-defined]
        try:
            taken = await self.gateway.pool.run(guarded(quota.reserve), self.gateway.engine, org,
                                                envelope.mail_class, 1)  # type: ignore[attr-defined]
        except DeliveryFailure as exc:
            return exc.reply
        if taken is None:
            metrics.quota_refusals.labels(org=org.id, **{"class": envelope.mail_class}).inc()  # type: ignore[attr-defined]
            log.info("quota_refused", org=org.id, mail_class=envelope.mail_class, code=451)  # type: ignore[attr-defined]
            return _quota_reply(org, envelope.mail_class)  # type: ignore[attr-defined]
        envelope.rcpt_tos.append(address)
        envelope.reservations.append(taken)  # type: ignore[attr-defined]
        return REPLIES.recipient_ok

    # --- DATA ---------------------------------------------------------------------------

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        qid = getattr(envelope, "queue_id", "")
        try:
            reply = await self._submit(envelope)
        except DeliveryFailure as exc:
            log.info("submission_refused", stage="data", code=exc.reply.code, status=exc.reply.status,
                     reason=exc.detail)
            reply = exc.reply
        except Exception:
            log.exception("submission_failed")
            reply = REPLIES.internal_error
        # Tokens not taken for good go back before the submitter hears the outcome.
        unsettled = getattr(envelope, "reservations", [])
        envelope.reservations = []  # type: ignore[attr-defined]
        await self._release(unsettled)
        self.count_replies("data", [reply])
        return str(reply.with_text(f"{reply.text} (queue id {qid})") if reply.ok else reply)

    async def _submit(self, envelope: Envelope) -> Reply:
        gw, pool = self.gateway, self.gateway.pool
        login: LoginEntry = envelope.login  # type: ignore[attr-defined]
        rules = envelope.rules  # type: ignore[attr-defined]
        org = rules.orgs[login.org_id]
        raw = envelope.original_content or b""
        try:
            parsed: ParsedMessage = await pool.run(parse_message, raw, big=len(raw) > BIG_MESSAGE_BYTES)
        except MalformedMessage as exc:
            return exc.reply
        # The class may come from a header (removed before relay): move the tokens.
        wanted = quota.class_from_header(parsed.header(quota.CLASS_HEADER))
        if wanted and wanted != envelope.mail_class:  # type: ignore[attr-defined]
            moved = await pool.run(guarded(quota.reserve), gw.engine, org, wanted, len(envelope.rcpt_tos))
            if moved is None:
                return _quota_reply(org, wanted)
            await self._release(envelope.reservations)  # type: ignore[attr-defined]
            envelope.reservations = [moved]  # type: ignore[attr-defined]
            envelope.mail_class = wanted  # type: ignore[attr-defined]
        sender = parsed.from_.address if parsed.from_ else envelope.mail_from or ""
        outbound.check_sender(org, login, sender)
        if await pool.run(guarded(outbound.already_relayed), gw.engine, org.id, parsed):
            log.info("submission", outcome="duplicate", org=org.id)
            return REPLIES.already_relayed
        record = await pool.run(guarded(_find_record), gw.engine, org, parsed,
                                parsed.header(outbound.RECORD_HEADER))
        subject = outbound.subject_with_token(parsed.subject, record.token) if record else None
        message, message_id = outbound.rewrite(raw, parsed=parsed, subject=subject, hostname=self.settings.server.hostname)
        key = org.dkim[domain_of(normalise(sender))]
        try:
            pem = signing.load_key(key.key_path)
            signed = await pool.run(signing.sign, message, key.domain, key.selector, pem)
        except signing.DkimKeyError as exc:
            raise TemporaryFailure(REPLIES.internal_error,
                                   f"{exc}; create it with: gateway dkim keygen {key.domain} --selector {key.selector}") from exc
        with metrics.timed(metrics.processing_duration, stage="relay"), metrics.timed(metrics.relay_duration):
            outcome = await relay(self.smarthost, envelope.mail_from or "", list(envelope.rcpt_tos), signed + message)
        metrics.relay_attempts.labels(outcome="relayed" if outcome.ok else
                                      "deferred" if outcome.reply.temporary else "refused").inc()
        decision = {
            "route": "relay", "login": login.username, "class": envelope.mail_class,  # type: ignore[attr-defined]
            "thread": ({"method": record.method, "evidence": record.evidence, "record_id": record.id}
                       if record else {"method": "none", "evidence": "", "record_id": None}),
            "token_added": subject is not None, "smarthost": self.smarthost.describe(),
            "accepted": len(outcome.accepted), "refused": outcome.refused,
        }
        log.info("relay", outcome="relayed" if outcome.ok else "failed", code=outcome.reply.code,
                 status=outcome.reply.status, org=org.id, mail_class=envelope.mail_class,  # type: ignore[attr-defined]
                 recipients=len(envelope.rcpt_tos), refused=len(outcome.refused), detail=outcome.detail[:200],
                 record_id=record.id if record else None)
        if not outcome.ok:
            return outcome.reply
        # Taken for good: tokens of accepted recipients stay used; refused ones go back.
        kept = envelope.reservations  # type: ignore[attr-defined]
        envelope.reservations = []  # type: ignore[attr-defined]
        refused = len(outcome.refused)
        if refused:
            back = quota.Reservation(kept[0].org_id, kept[0].mail_class, kept[0].day, refused)
            envelope.reservations = [back]  # type: ignore[attr-defined]
        user = org.users.get(normalise(sender))
        try:
            await pool.run(guarded(outbound.store_outbound), gw.engine, rules, org.id, signed + message, record,
                           user.id if user else None, decision)
        except DeliveryFailure as exc:
            # Already relayed: the mail is out, so the submitter must not resend it.
            log.error("outbound_not_stored", reason=exc.detail, message_id=message_id)
        return REPLIES.relayed

    # --- tokens ---------------------------------------------------------------------------

    def release_later(self, envelope: Envelope) -> None:
        reservations = getattr(envelope, "reservations", None)
        if not reservations:
            return
        envelope.reservations = []  # type: ignore[attr-defined]
        task = asyncio.get_event_loop().create_task(self._release(list(reservations)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release(self, reservations: list[quota.Reservation]) -> None:
        for reservation in reservations:
            try:
                await self.gateway.pool.run(quota.release, self.gateway.engine, reservation)
            except Exception:
                log.exception("quota_release_failed", org=reservation.org_id, count=reservation.count)

    async def drain(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def _find_record(engine: Any, org: OrgEntry, parsed: ParsedMessage, explicit: str | None) -> outbound.RecordRef | None:
    with engine.connect() as conn:
        return outbound.find_record(conn, org, parsed, explicit)


def _quota_reply(org: OrgEntry, mail_class: str) -> Reply:
    limit = quota.limit_for(org, mail_class)  # type: ignore[arg-type]
    return REPLIES.quota_exhausted.with_text(
        f"Daily {mail_class} sending limit of {limit} reached for {org.id}; resets {quota.reset_text(org.timezone)}")
