"""The submission listener's handler: AUTH, a quota token per recipient at RCPT, the
outbound pipeline (gateway/submit.py) at DATA.  aiosmtpd's public handler API only;
its protocol class is SubmissionSMTP (gateway/smtp/server.py).

No open relay: MAIL without AUTH is 530 5.7.0 (aiosmtpd's auth_required), AUTH
before TLS is 538 5.7.11 unless the configuration allows it from loopback, and a
From the account's organisation may not use is 550 5.7.1.  One quota token is
reserved per recipient at RCPT, kept when the smarthost accepts and given back on
every other path (relay failure, refusal, RSET, a dropped connection).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from gateway import logs, metrics, passwords
from gateway.addresses import domain_of, normalise
from gateway.delivery import Deliveries
from gateway.errors import DeliveryFailure
from gateway.relay import Smarthost
from gateway.replies import REPLIES, Reply
from gateway.rules.index import LoginEntry
from gateway.settings import Settings
from gateway.smtp.handler import Handler, size_refusal, transaction_of, with_queue_id
from gateway.smtp.server import GatewayProtocol, is_loopback
from gateway.smtp.sessions import Sessions
from gateway.smtp.transaction import Transaction, new_queue_id
from gateway.submit import SubmissionTransaction, Submitter, quota_reply

log = logs.get("gateway.submission")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    sub = settings.submission
    if not (sub.tls_cert and sub.tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.path(sub.tls_cert), settings.path(sub.tls_key))
    return context


def _password_threads() -> int:
    # Half the cores: an AUTH flood (before fail2ban bans it) costs at most that much
    # CPU, and never the event loop or the filing workers.
    return max(1, (os.cpu_count() or 2) // 2)


class SubmissionHandler(Handler):
    def __init__(self, deliveries: Deliveries, sessions: Sessions, settings: Settings):
        super().__init__(deliveries, sessions, listener="submission", data_limit=settings.limits.max_message_bytes,
                         max_recipients=settings.limits.max_recipients)
        self.submitter = Submitter(deliveries.database, deliveries.pool,
                                   Smarthost.from_url(settings.relay.url, settings.relay.timeout_seconds),
                                   settings.server.hostname, changed=lambda: deliveries.changed())
        # Not named auth_*: aiosmtpd takes the handler's auth_* attributes for mechanisms.
        self._password_checks = ThreadPoolExecutor(max_workers=_password_threads(),
                                                   thread_name_prefix="gateway-password")

    # --- AUTH -----------------------------------------------------------------------

    async def authenticate(self, server: GatewayProtocol | None, session: Session, mechanism: str,
                           auth_data: Any) -> AuthResult:
        """Check decoded AUTH credentials; scrypt runs in the password thread(s)."""
        ip = server.client_ip if server is not None else (session.peer or ("?",))[0]
        if not isinstance(auth_data, LoginPassword):
            log.warning("auth_failed", client_ip=ip, listener=self.listener, mechanism=mechanism,
                        reason="unsupported", username="")
            return AuthResult(success=False, handled=False, message=str(REPLIES.auth_failed))
        given = auth_data.login.decode("utf-8", "replace")
        username = normalise(given)
        login = self.deliveries.rules.logins.get(username)
        stored = login.password_hash if login is not None else None
        if stored is not None and passwords.remembered(auth_data.password, stored):
            password_ok = True  # verified before: no scrypt, no thread hop
        else:
            loop = asyncio.get_running_loop()
            password_ok = await loop.run_in_executor(self._password_checks, passwords.verify_account,
                                                     auth_data.password, stored)
        reason = ("unknown_user" if login is None else "bad_password" if not password_ok
                  else "loopback_only" if login.loopback_only and not is_loopback(session.peer) else None)
        if login is None or reason is not None:
            # client_ip first: the fail2ban filter (deploy/fail2ban/) anchors on it.
            # The username is the client's, bounded (it may be anything).
            log.warning("auth_failed", client_ip=ip, listener=self.listener, mechanism=mechanism, reason=reason,
                        username=given[:128])
            return AuthResult(success=False, handled=False, message=str(REPLIES.auth_failed))
        log.info("auth_ok", client_ip=ip, listener=self.listener, mechanism=mechanism, username=username,
                 org=login.org_id)
        return AuthResult(success=True, auth_data=login, message=str(REPLIES.auth_ok))

    # --- MAIL / RCPT --------------------------------------------------------------------

    async def handle_MAIL(self, server: GatewayProtocol, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        refusal = size_refusal(mail_options, self.data_limit)
        if refusal is not None:
            return str(refusal)
        login: object = session.auth_data
        assert isinstance(login, LoginEntry)  # aiosmtpd asks for AUTH first; authenticate gave it
        rules = self.deliveries.rules
        org = rules.orgs.get(login.org_id)
        sender = normalise(address)
        if org is None or domain_of(sender) not in org.domains:
            log.warning("submission_refused", client_ip=server.client_ip, listener=self.listener,
                        username=login.username, stage="mail", code=550, status="5.7.1",
                        reason="envelope sender domain")
            return str(REPLIES.from_not_allowed)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        server.begin(SubmissionTransaction(rules, new_queue_id(), login, login.mail_class))
        return str(REPLIES.sender_ok)

    async def handle_RCPT(self, server: GatewayProtocol, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        # Any recipient domain: relaying is what this listener is for, and only
        # after AUTH (aiosmtpd answers 530 5.7.0 to RCPT before it).
        reply = await self._reserve(server, transaction_of(server, SubmissionTransaction), envelope, address)
        self.count_replies("rcpt", [reply])
        return str(reply)

    async def _reserve(self, server: GatewayProtocol, transaction: SubmissionTransaction, envelope: Envelope,
                       address: str) -> Reply:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return REPLIES.too_many_recipients
        try:
            taken = await self.submitter.reserve_one(transaction)
        except DeliveryFailure as exc:
            return exc.reply
        if not taken:
            org, mail_class = transaction.org, transaction.mail_class
            metrics.quota_refusals.labels(org=org.id, **{"class": mail_class}).inc()
            log.info("quota_refused", client_ip=server.client_ip, listener=self.listener,
                     username=transaction.login.username, org=org.id, mail_class=mail_class, code=451)
            return quota_reply(org, mail_class)
        envelope.rcpt_tos.append(address)
        return REPLIES.recipient_ok

    # --- DATA ---------------------------------------------------------------------------

    async def handle_DATA(self, server: GatewayProtocol, session: Session, envelope: Envelope) -> str:
        transaction = transaction_of(server, SubmissionTransaction)
        ip = server.client_ip
        try:
            reply = await self.submitter.submit(transaction, envelope.mail_from or "", list(envelope.rcpt_tos),
                                                envelope.original_content or b"", ip)
        except DeliveryFailure as exc:
            log.warning("submission_refused", client_ip=ip, listener=self.listener,
                        username=transaction.login.username, stage="data",
                        code=exc.reply.code, status=exc.reply.status, reason=exc.detail)
            reply = exc.reply
        except Exception:
            log.exception("submission_failed")
            reply = REPLIES.internal_error
        self.count_replies("data", [reply])
        return str(with_queue_id(reply, transaction.queue_id))

    # --- tokens, stop -------------------------------------------------------------------

    def transaction_ended(self, transaction: Transaction) -> None:
        # Ended before DATA settled it (RSET, HELO/EHLO, STARTTLS, a dropped
        # connection): its tokens go back.  After DATA there are none left.
        if isinstance(transaction, SubmissionTransaction):
            self.submitter.release_later(transaction)

    async def drain(self) -> None:
        """At stop: give back outstanding tokens; end the password thread(s)."""
        await self.submitter.drain()
        self._password_checks.shutdown(wait=False, cancel_futures=True)
