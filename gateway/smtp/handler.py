"""The aiosmtpd handler: thin hooks that turn protocol events into Gateway calls
and Gateway outcomes into replies from the catalogue."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway import logs, metrics
from gateway.addresses import domain_of, normalise
from gateway.delivery import Gateway
from gateway.errors import DeliveryFailure
from gateway.replies import REPLIES, Reply
from gateway.routing import serves_domain
from gateway.smtp.server import client_ip

log = logs.get("gateway.smtp")


def _queue_id() -> str:
    return secrets.token_hex(6).upper()


def _session_id(session: Session) -> str:
    sid = getattr(session, "gateway_id", None)
    if sid is None:
        sid = secrets.token_hex(4)
        session.gateway_id = sid  # type: ignore[attr-defined]
    return sid


def outcome_of(reply: Reply) -> str:
    if reply.temporary:
        return "deferred"
    if reply.permanent:
        return "rejected"
    return {"filed": "filed", "duplicate": "duplicate", "dropped": "dropped", "relayed": "relayed",
            "already_relayed": "relayed", "quarantined": "quarantined"}.get(reply.reason, "accepted")


class Handler:
    def __init__(self, gateway: Gateway, *, listener: str, data_limit: int, max_recipients: int):
        self.gateway = gateway
        self.listener = listener
        self.data_limit = data_limit
        self.max_recipients = max_recipients
        self.connections: set[Any] = set()

    # --- sessions, stop, metrics ---------------------------------------------------------

    def opened(self, protocol: Any) -> Reply | None:
        """Count a new session; the refusal to give instead of a greeting, if any."""
        self.connections.add(protocol)
        metrics.sessions.labels(listener=self.listener).inc()
        metrics.sessions_active.labels(listener=self.listener).inc()
        peer = protocol.session.peer[0] if protocol.session and protocol.session.peer else "?"
        protocol.gateway_peer = peer
        refusal = self.gateway.connections.open(peer)
        if refusal is not None:
            self.count_replies("connect", [refusal])
            # client_ip first: the fail2ban filter (deploy/fail2ban/) anchors on it.
            log.warning("connection_refused", client_ip=peer, listener=self.listener, code=refusal.code,
                        status=refusal.status, reason=refusal.reason)
        return refusal

    def closed(self, protocol: Any) -> None:
        self.connections.discard(protocol)
        metrics.sessions_active.labels(listener=self.listener).dec()
        self.gateway.connections.close(getattr(protocol, "gateway_peer", "?"))

    def close_all(self) -> None:
        """At stop, after the grace period: 421 to every session still open, then close
        (RFC 5321 3.8; the client retries whatever it had not seen a 250 for)."""
        for protocol in list(self.connections):
            transport = protocol.transport
            if transport is not None and not transport.is_closing():
                transport.write(f"{REPLIES.busy}\r\n".encode())
                transport.close()

    async def refuse_stopping(self, server: Any) -> None:
        """421 4.3.2 and close: we are shutting down (RFC 5321 3.8)."""
        await server.push(str(REPLIES.busy))
        if server.transport is not None:
            server.transport.close()

    def _stopping_reply(self, server: Any) -> str:
        asyncio.get_running_loop().call_soon(lambda: server.transport and server.transport.close())
        return str(REPLIES.busy)

    def count_replies(self, stage: str, replies: list[Reply]) -> None:
        for reply in replies:
            metrics.recipient_decisions.labels(listener=self.listener, stage=stage, outcome=outcome_of(reply),
                                               reason=reply.reason or "other").inc()

    def message_received(self, size: int) -> None:
        metrics.message_size.labels(listener=self.listener).observe(size)

    # --- hooks ---------------------------------------------------------------------------

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        if self.gateway.stopping:
            return [self._stopping_reply(server)]
        session.host_name = hostname
        # RFC 1870 SIZE, RFC 2920 PIPELINING, RFC 2034 ENHANCEDSTATUSCODES.
        head, rest = responses[:1], [r for r in responses[1:] if not r.startswith("250-SIZE")]
        extra = [f"250-SIZE {self.data_limit}", "250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        return head + extra + rest

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if self.gateway.stopping:
            return self._stopping_reply(server)
        for option in mail_options:
            key, _, value = option.partition("=")
            if key == "SIZE" and value.isdigit() and int(value) > self.data_limit:
                return str(REPLIES.too_big)
        # "<>" (the null reverse-path of bounces, RFC 5321 4.5.5) stays "<>" in the
        # envelope: aiosmtpd takes an empty mail_from to mean "no MAIL yet".
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.rules = self.gateway.rules  # type: ignore[attr-defined]
        envelope.routes = []  # type: ignore[attr-defined]
        envelope.queue_id = _queue_id()  # type: ignore[attr-defined]
        return str(REPLIES.sender_ok)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        structlog.contextvars.bind_contextvars(session_id=_session_id(session),
                                               queue_id=getattr(envelope, "queue_id", None))
        if self.gateway.stopping:
            return self._stopping_reply(server)
        reply = await self._rcpt(server, envelope, address)
        self.count_replies("rcpt", [reply])
        return str(reply)

    async def _rcpt(self, server: SMTP, envelope: Envelope, address: str) -> Reply:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            log.info("recipient_decision", stage="rcpt", outcome="deferred", code=452, status="4.5.3")
            return REPLIES.too_many_recipients
        domain = domain_of(normalise(address))
        if not serves_domain(envelope.rules, domain):  # type: ignore[attr-defined]
            # Not ours at all: an open-relay probe or a misrouting MTA, not an unknown
            # user (that stays 5.1.1 below).
            log.warning("recipient_decision", client_ip=client_ip(server), listener=self.listener, stage="rcpt",
                        outcome="rejected", code=550, status="5.7.1", reason="relay_denied", domain=domain[:255])
            return REPLIES.relay_denied
        try:
            route = await self.gateway.route_for(envelope.rules, address)  # type: ignore[attr-defined]
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
        envelope.routes.append(route)  # type: ignore[attr-defined]
        return REPLIES.recipient_ok

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        qid = getattr(envelope, "queue_id", "")
        structlog.contextvars.bind_contextvars(session_id=_session_id(session), queue_id=qid)
        raw = envelope.original_content or b""
        sender = "" if envelope.mail_from == "<>" else (envelope.mail_from or "")
        with metrics.timed(metrics.processing_duration, stage="data"):
            replies = await self.gateway.deliver(envelope.rules, envelope.routes, raw, sender)  # type: ignore[attr-defined]
        self.count_replies("data", replies)
        replies = [_with_queue_id(r, qid) for r in replies]
        if getattr(server, "lmtp", False):
            # RFC 2033 4.2: one reply per accepted recipient, in RCPT order.
            return "\r\n".join(str(r) for r in replies)
        return str(_one_reply(replies))

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default is a permanent 500; a retry may well save the mail.
        metrics.errors.labels(component="smtp").inc()
        log.error("session_error", error=type(error).__name__, exc_info=error)
        return str(REPLIES.internal_error)


def _with_queue_id(reply: Reply, qid: str) -> Reply:
    return reply.with_text(f"{reply.text} (queue id {qid})") if reply.ok and qid else reply


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
