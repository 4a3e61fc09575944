"""The aiosmtpd handler of the SMTP and LMTP listeners: thin hooks (aiosmtpd's public
handler API) that turn protocol events into delivery calls and their outcomes into
replies from the catalogue.

MAIL begins an InboundTransaction (gateway/smtp/transaction.py) on the protocol
object; RCPT asks Deliveries.route_for for the recipient's route; DATA hands the
routes and the message to Deliveries.deliver.  Also the session bookkeeping the
protocol classes call (opened, closed, close_all) and the parts submission shares:
the SIZE check at MAIL and the queue id on success replies.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import structlog
from aiosmtpd.smtp import Envelope, Session

from gateway import logs, metrics
from gateway.addresses import domain_of, normalise
from gateway.delivery import Deliveries
from gateway.errors import DeliveryFailure
from gateway.replies import REPLIES, Reply
from gateway.routing import serves_domain
from gateway.smtp.server import GatewayProtocol, declared_size
from gateway.smtp.sessions import Sessions
from gateway.smtp.transaction import InboundTransaction, Transaction, new_queue_id

log = logs.get("gateway.smtp")

T = TypeVar("T", bound="Transaction")


def outcome_of(reply: Reply) -> str:
    if reply.temporary:
        return "deferred"
    if reply.permanent:
        return "rejected"
    return {"filed": "filed", "duplicate": "duplicate", "dropped": "dropped", "relayed": "relayed",
            "already_relayed": "relayed", "quarantined": "quarantined"}.get(reply.reason, "accepted")


def size_refusal(mail_options: list[str], limit: int) -> Reply | None:
    """552 5.3.4 at MAIL when its SIZE= declares more than we take (RFC 1870)."""
    size = declared_size(mail_options)
    return REPLIES.too_big if size is not None and size > limit else None


def with_queue_id(reply: Reply, queue_id: str) -> Reply:
    """A success reply names the transaction's queue id (the key to its log lines)."""
    return reply.with_text(f"{reply.text} (queue id {queue_id})") if reply.ok and queue_id else reply


def transaction_of(server: GatewayProtocol, kind: type[T]) -> T:
    """The transaction MAIL began.  aiosmtpd calls RCPT only after a MAIL we accepted
    and our DATA only with recipients we accepted, in the same transaction."""
    transaction = server.transaction
    assert isinstance(transaction, kind), transaction
    return transaction


class Handler:
    def __init__(self, deliveries: Deliveries, sessions: Sessions, *, listener: str, data_limit: int,
                 max_recipients: int):
        self.deliveries = deliveries
        self.sessions = sessions
        self.listener = listener
        self.data_limit = data_limit
        self.max_recipients = max_recipients
        self.connections: set[GatewayProtocol] = set()

    # --- sessions, stop, metrics (called by the protocol classes) -------------------------

    def opened(self, protocol: GatewayProtocol) -> Reply | None:
        """Count a new session; the refusal to give instead of a greeting, if any."""
        self.connections.add(protocol)
        metrics.sessions.labels(listener=self.listener).inc()
        metrics.sessions_active.labels(listener=self.listener).inc()
        peer = protocol.client_ip
        refusal = self.sessions.connections.open(peer)
        if refusal is not None:
            self.count_replies("connect", [refusal])
            # client_ip first: the fail2ban filter (deploy/fail2ban/) anchors on it.
            log.warning("connection_refused", client_ip=peer, listener=self.listener, code=refusal.code,
                        status=refusal.status, reason=refusal.reason)
        return refusal

    def closed(self, protocol: GatewayProtocol) -> None:
        self.connections.discard(protocol)
        metrics.sessions_active.labels(listener=self.listener).dec()
        self.sessions.connections.close(protocol.client_ip)

    def transaction_ended(self, transaction: Transaction) -> None:
        """A transaction ended (after DATA, at RSET/HELO/EHLO/STARTTLS, or the
        connection went): inbound ones hold nothing to give back."""

    def close_all(self) -> None:
        """At stop, after the grace period: 421 to every session still open, then close
        (RFC 5321 3.8; the client retries whatever it had not seen a 250 for)."""
        for protocol in list(self.connections):
            transport = protocol.transport
            if transport is not None and not transport.is_closing():
                transport.write(f"{REPLIES.busy}\r\n".encode())  # type: ignore[attr-defined]
                transport.close()

    def _stopping_reply(self, server: GatewayProtocol) -> str:
        """421 4.3.2 (RFC 5321 3.8); the session closes once aiosmtpd has sent it."""
        transport = server.transport
        if transport is not None:
            asyncio.get_running_loop().call_soon(transport.close)
        return str(REPLIES.busy)

    def count_replies(self, stage: str, replies: list[Reply]) -> None:
        for reply in replies:
            metrics.recipient_decisions.labels(listener=self.listener, stage=stage, outcome=outcome_of(reply),
                                               reason=reply.reason or "other").inc()

    def message_received(self, size: int) -> None:
        metrics.message_size.labels(listener=self.listener).observe(size)

    # --- hooks ---------------------------------------------------------------------------

    async def handle_EHLO(self, server: GatewayProtocol, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        if self.sessions.stopping:
            return [self._stopping_reply(server)]
        session.host_name = hostname
        # RFC 1870 SIZE, RFC 2920 PIPELINING, RFC 2034 ENHANCEDSTATUSCODES.
        head, rest = responses[:1], [r for r in responses[1:] if not r.startswith("250-SIZE")]
        extra = [f"250-SIZE {self.data_limit}", "250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        return head + extra + rest

    async def handle_MAIL(self, server: GatewayProtocol, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if self.sessions.stopping:
            return self._stopping_reply(server)
        refusal = size_refusal(mail_options, self.data_limit)
        if refusal is not None:
            return str(refusal)
        # "<>" (the null reverse-path of bounces, RFC 5321 4.5.5) stays "<>" in the
        # envelope: aiosmtpd takes an empty mail_from to mean "no MAIL yet".
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        server.begin(InboundTransaction(self.deliveries.rules, new_queue_id()))
        return str(REPLIES.sender_ok)

    async def handle_RCPT(self, server: GatewayProtocol, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        transaction = transaction_of(server, InboundTransaction)
        structlog.contextvars.bind_contextvars(session_id=server.session_id, queue_id=transaction.queue_id)
        if self.sessions.stopping:
            return self._stopping_reply(server)
        reply = await self._rcpt(server, transaction, envelope, address)
        self.count_replies("rcpt", [reply])
        return str(reply)

    async def _rcpt(self, server: GatewayProtocol, transaction: InboundTransaction, envelope: Envelope,
                    address: str) -> Reply:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            log.info("recipient_decision", stage="rcpt", outcome="deferred", code=452, status="4.5.3")
            return REPLIES.too_many_recipients
        domain = domain_of(normalise(address))
        if not serves_domain(transaction.rules, domain):
            # Not ours at all: an open-relay probe or a misrouting MTA, not an unknown
            # user (that stays 5.1.1 below).
            log.warning("recipient_decision", client_ip=server.client_ip, listener=self.listener, stage="rcpt",
                        outcome="rejected", code=550, status="5.7.1", reason="relay_denied", domain=domain[:255])
            return REPLIES.relay_denied
        try:
            route = await self.deliveries.route_for(transaction.rules, address)
        except DeliveryFailure as exc:
            log.warning("recipient_decision", stage="rcpt", outcome="deferred", code=exc.reply.code,
                        status=exc.reply.status, reason=exc.detail)
            return exc.reply
        if route is None:
            # Unknown, regenerated away, or a user without the permission: the same
            # answer for all, so the reply reveals nothing (SPEC 2.1, 2.2).
            log.info("recipient_decision", stage="rcpt", outcome="rejected", code=550, status="5.1.1")
            return REPLIES.no_such_user
        envelope.rcpt_tos.append(address)
        transaction.routes.append(route)
        return REPLIES.recipient_ok

    async def handle_DATA(self, server: GatewayProtocol, session: Session, envelope: Envelope) -> str:
        transaction = transaction_of(server, InboundTransaction)
        structlog.contextvars.bind_contextvars(session_id=server.session_id, queue_id=transaction.queue_id)
        raw = envelope.original_content or b""
        sender = "" if envelope.mail_from == "<>" else (envelope.mail_from or "")
        with metrics.timed(metrics.processing_duration, stage="data"):
            replies = await self.deliveries.deliver(transaction.rules, transaction.routes, raw, sender)
        self.count_replies("data", replies)
        replies = [with_queue_id(r, transaction.queue_id) for r in replies]
        if server.lmtp:
            # RFC 2033 4.2: one reply per accepted recipient, in RCPT order.
            return "\r\n".join(str(r) for r in replies)
        return str(_one_reply(replies))

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default is a permanent 500; a retry may well save the mail.
        metrics.errors.labels(component="smtp").inc()
        log.error("session_error", error=type(error).__name__, exc_info=error)
        return str(REPLIES.internal_error)


def _one_reply(replies: list[Reply]) -> Reply:
    """SMTP has one reply for all recipients.  Any temporary failure defers the whole
    message (refiling is idempotent, so recipients already filed are not doubled);
    otherwise one success is success; otherwise the first refusal."""
    for reply in replies:
        if reply.temporary:
            return reply
    for reply in replies:
        if reply.ok:
            return reply
    return replies[0]
