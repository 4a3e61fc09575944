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
import os
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from gateway import logs, metrics, passwords, quota
from gateway.addresses import domain_of, normalise
from gateway.delivery import Gateway, guarded
from gateway.errors import DeliveryFailure, MalformedMessage, TemporaryFailure
from gateway.ingest.parse import parse_message
from gateway.message import ParsedMessage
from gateway import outbound, signing
from gateway.relay import Smarthost, relay
from gateway.replies import REPLIES, Reply
from gateway.rules.index import LoginEntry, OrgEntry
from gateway.settings import Settings
from gateway.smtp.handler import Handler, _queue_id
from gateway.smtp.server import GatewaySMTP, client_ip
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


# What _authenticate hands back to auth_PLAIN/auth_LOGIN: "decoded, check pending".
_CHECK_PENDING = AuthResult(success=False, handled=True)


class SubmissionSMTP(GatewaySMTP):
    def __init__(self, handler: "SubmissionHandler", *, data_limit: int, loopback_auth: bool, **kwargs: Any):
        # No authenticator: aiosmtpd would call it synchronously on the event loop;
        # credentials are checked by SubmissionHandler.authenticate instead (below).
        super().__init__(handler, data_limit=data_limit, auth_required=True, auth_require_tls=True, **kwargs)
        self._loopback_auth = loopback_auth
        self._credentials: tuple[str, Any] | None = None

    # --- AUTH: aiosmtpd decodes, we check off the loop ----------------------------------
    # aiosmtpd's auth_PLAIN/auth_LOGIN decode the credentials (with their 334
    # challenges) and then call _authenticate synchronously.  An scrypt check there
    # would hold the event loop, and every session on every listener, for its whole
    # cost; ten bad AUTHs at once, for ten times that.  So _authenticate only keeps
    # the decoded credentials, and the check is awaited after.

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(super().auth_LOGIN(_, args))

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        self._credentials = (mechanism, auth_data)
        return _CHECK_PENDING

    async def _checked(self, decoding: Awaitable[AuthResult]) -> AuthResult:
        self._credentials = None
        result = await decoding
        credentials, self._credentials = self._credentials, None
        if result is not _CHECK_PENDING or credentials is None:
            return result  # not decodable: aiosmtpd has answered (501) already
        mechanism, auth_data = credentials
        return await self.event_handler.authenticate(self, self.session, mechanism, auth_data)

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


def _password_threads() -> int:
    # Half the cores: an AUTH flood (before fail2ban bans it) costs at most that much
    # CPU, and never the event loop or the filing workers.
    return max(1, (os.cpu_count() or 2) // 2)


class SubmissionHandler(Handler):
    def __init__(self, gateway: Gateway, settings: Settings):
        super().__init__(gateway, listener="submission", data_limit=settings.limits.max_message_bytes,
                         max_recipients=settings.limits.max_recipients)
        self.settings = settings
        self.smarthost = Smarthost.from_url(settings.relay.url, settings.relay.timeout_seconds)
        self._pending: set[asyncio.Task[None]] = set()
        # Not named auth_*: aiosmtpd takes the handler's auth_* attributes for mechanisms.
        self._password_checks = ThreadPoolExecutor(max_workers=_password_threads(),
                                                   thread_name_prefix="gateway-password")

    # --- AUTH -----------------------------------------------------------------------

    async def authenticate(self, server: Any, session: Session, mechanism: str, auth_data: Any) -> AuthResult:
        """Check decoded AUTH credentials; scrypt runs in the password thread(s)."""
        ip = client_ip(server) if server is not None else (session.peer or ("?",))[0]
        if not isinstance(auth_data, LoginPassword):
            log.warning("auth_failed", client_ip=ip, listener=self.listener, mechanism=mechanism,
                        reason="unsupported", username="")
            return AuthResult(success=False, handled=False, message=str(REPLIES.auth_failed))
        given = auth_data.login.decode("utf-8", "replace")
        username = normalise(given)
        login = self.gateway.rules.logins.get(username)
        stored = login.password_hash if login is not None else None
        if stored is not None and passwords.remembered(auth_data.password, stored):
            password_ok = True  # verified before: no scrypt, no thread hop
        else:
            loop = asyncio.get_running_loop()
            password_ok = await loop.run_in_executor(self._password_checks, passwords.verify_account,
                                                     auth_data.password, stored)
        reason = ("unknown_user" if login is None else "bad_password" if not password_ok
                  else "loopback_only" if login.loopback_only and not is_loopback(session.peer) else None)
        if reason is not None:
            # client_ip first: the fail2ban filter (deploy/fail2ban/) anchors on it.
            # The username is the client's, bounded (it may be anything).
            log.warning("auth_failed", client_ip=ip, listener=self.listener, mechanism=mechanism, reason=reason,
                        username=given[:128])
            return AuthResult(success=False, handled=False, message=str(REPLIES.auth_failed))
        log.info("auth_ok", client_ip=ip, listener=self.listener, mechanism=mechanism, username=username,
                 org=login.org_id)  # type: ignore[union-attr]
        return AuthResult(success=True, auth_data=login, message=str(REPLIES.auth_ok))

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
            log.warning("submission_refused", client_ip=client_ip(server), listener=self.listener,
                        username=login.username, stage="mail", code=550, status="5.7.1",
                        reason="envelope sender domain")
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
        # Any recipient domain: relaying is what this listener is for, and only
        # after AUTH (aiosmtpd answers 530 5.7.0 to RCPT before it).
        reply = await self._reserve(server, envelope, address)
        self.count_replies("rcpt", [reply])
        return str(reply)

    async def _reserve(self, server: SMTP, envelope: Envelope, address: str) -> Reply:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return REPLIES.too_many_recipients
        org = envelope.rules.orgs[envelope.login.org_id]  # type: ignore[attr-defined]
        try:
            taken = await self.gateway.pool.run(guarded(quota.reserve, "quota_reserve"), self.gateway.engine, org,
                                                envelope.mail_class, 1)  # type: ignore[attr-defined]
        except DeliveryFailure as exc:
            return exc.reply
        if taken is None:
            metrics.quota_refusals.labels(org=org.id, **{"class": envelope.mail_class}).inc()  # type: ignore[attr-defined]
            log.info("quota_refused", client_ip=client_ip(server), listener=self.listener,
                     username=envelope.login.username, org=org.id,  # type: ignore[attr-defined]
                     mail_class=envelope.mail_class, code=451)  # type: ignore[attr-defined]
            return _quota_reply(org, envelope.mail_class)  # type: ignore[attr-defined]
        envelope.rcpt_tos.append(address)
        envelope.reservations.append(taken)  # type: ignore[attr-defined]
        return REPLIES.recipient_ok

    # --- DATA ---------------------------------------------------------------------------

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        qid = getattr(envelope, "queue_id", "")
        ip = client_ip(server)
        try:
            reply = await self._submit(envelope, ip)
        except DeliveryFailure as exc:
            log.warning("submission_refused", client_ip=ip, listener=self.listener,
                        username=envelope.login.username, stage="data",  # type: ignore[attr-defined]
                        code=exc.reply.code, status=exc.reply.status, reason=exc.detail)
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

    async def _submit(self, envelope: Envelope, ip: str) -> Reply:
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
            moved = await pool.run(guarded(quota.reserve, "quota_reserve"), gw.engine, org, wanted, len(envelope.rcpt_tos))
            if moved is None:
                return _quota_reply(org, wanted)
            await self._release(envelope.reservations)  # type: ignore[attr-defined]
            envelope.reservations = [moved]  # type: ignore[attr-defined]
            envelope.mail_class = wanted  # type: ignore[attr-defined]
        sender = parsed.from_.address if parsed.from_ else envelope.mail_from or ""
        outbound.check_sender(org, login, sender)
        if await pool.run(guarded(outbound.already_relayed, "relay_dedup"), gw.engine, org.id, parsed):
            log.info("submission", outcome="duplicate", org=org.id)
            return REPLIES.already_relayed
        record = await pool.run(guarded(_find_record, "relay_record_lookup"), gw.engine, org, parsed,
                                parsed.header(outbound.RECORD_HEADER))
        subject = outbound.subject_with_token(parsed.subject, record.token) if record else None
        message, message_id = outbound.rewrite(raw, parsed=parsed, subject=subject, hostname=self.settings.server.hostname)
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
        log.info("relay", outcome="relayed" if outcome.ok else "failed", client_ip=ip, username=login.username,
                 code=outcome.reply.code,
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
            await pool.run(guarded(outbound.store_outbound, "relay_store"), gw.engine, rules, org.id, signed + message, record,
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
        """At stop: give back outstanding tokens; end the password thread(s)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        self._password_checks.shutdown(wait=False, cancel_futures=True)


def _find_record(engine: Any, org: OrgEntry, parsed: ParsedMessage, explicit: str | None) -> outbound.RecordRef | None:
    with engine.connect() as conn:
        return outbound.find_record(conn, org, parsed, explicit)


def _quota_reply(org: OrgEntry, mail_class: str) -> Reply:
    limit = quota.limit_for(org, mail_class)  # type: ignore[arg-type]
    return REPLIES.quota_exhausted.with_text(
        f"Daily {mail_class} sending limit of {limit} reached for {org.id}; resets {quota.reset_text(org.timezone)}")
