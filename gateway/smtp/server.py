"""The aiosmtpd protocol classes of the three listeners -- GatewaySMTP, GatewayLMTP,
SubmissionSMTP -- and their chunked DATA reader.

This is the one module of ours that touches aiosmtpd's private members (and one of
asyncio's): each use carries a comment saying why, and gateway/private_api.py lists
them all (tests/unit/test_private_api.py checks the list against the installed library).
The handlers (handler.py, submission.py) use aiosmtpd's public handler API only.

GatewayProtocol, the base of the three:
- counts sessions and answers 421 instead of the greeting over the connection limits;
- keeps the transaction under way (gateway/smtp/transaction.py), which the handler
  begins at MAIL, and ends it wherever aiosmtpd starts a fresh Envelope;
- refuses command lines with a NUL octet; parses plain paths with a regex first;
- says 421 before it closes an idle session;
- replaces aiosmtpd's smtp_DATA.

Why not aiosmtpd's own smtp_DATA:
- it reads DATA one line at a time (~28 ms CPU per MB, see PERFORMANCE.md);
- it refuses lines over 1001 octets with a 500, where we file such mail as well
  as we can (real mail has them);
- its error replies (552 too much data, 500 line too long) are single lines,
  but LMTP needs one reply per accepted recipient on every path (RFC 2033 4.2),
  and ours carry enhanced status codes (RFC 3463).
The reader keeps aiosmtpd 1.4.5's smuggling rule: only <CRLF>.<CRLF> ends DATA
(a bare LF never does), dot-unstuffs (RFC 5321 4.5.2), and stops buffering past
the size limit while still reading to the end so the session stays in sync.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import secrets
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult

from gateway import logs
from gateway.replies import REPLIES, Reply
from gateway.workers import BIG_MESSAGE_BYTES, BigSlot

if TYPE_CHECKING:
    from gateway.smtp.handler import Handler
    from gateway.smtp.submission import SubmissionHandler
    from gateway.smtp.transaction import Transaction

log = logging.getLogger("gateway.smtp")
event_log = logs.get("gateway.smtp")

_END = b"\r\n.\r\n"
_CHUNK = 256 * 1024


class MessageTooBig(Exception):
    pass


async def read_data(reader: asyncio.StreamReader, limit: int | None,
                    on_progress: "Callable[[], None] | None" = None, big: "BigSlot | None" = None,
                    announced: int | None = None) -> bytes:
    """Read a DATA section up to and including the terminating line.

    Returns the dot-unstuffed message; raises MessageTooBig (after reading to the
    end) when it exceeds ``limit`` octets, holding no more than limit + one chunk.
    ``on_progress`` is called per chunk (the session's idle timer restarts: RFC 5321
    4.5.3.2.6 times each TCP send of a DATA block, not the whole message).
    ``big``: taken once more than BIG_MESSAGE_BYTES are buffered (reading pauses
    until it is free), or before the first read when MAIL FROM's SIZE= ``announced``
    more (RFC 1870, which Postfix sends: a waiting session then holds none of it, the
    data stays in the sender's and the kernel's buffers); the caller releases it
    after the delivery.
    """
    # A virtual CRLF in front lets one search find a terminator on the first line.
    buf = bytearray(b"\r\n")
    too_big = False
    scan_from = 0
    # RFC 1870: the size is that of the message, without the dots added for
    # transparency; count them as they arrive (one per "\r\n.." on the wire).
    stuffed = 0
    counted_to = 0
    if big is not None and announced is not None and announced > BIG_MESSAGE_BYTES:
        await big.take(on_progress)
    while True:
        chunk = await reader.read(_CHUNK)
        if not chunk:
            raise ConnectionResetError("connection closed during DATA")
        if on_progress is not None:
            on_progress()
        buf += chunk
        if big is not None and not big.held and not too_big and len(buf) > BIG_MESSAGE_BYTES:
            await big.take(on_progress)
        end = buf.find(_END, scan_from)
        if end >= 0:
            leftover = bytes(buf[end + len(_END):])
            if leftover:
                # Pipelined commands after the final dot (RFC 2920 3.1): give them back.
                _unread(reader, leftover)
            if too_big:
                raise MessageTooBig()
            if buf.find(b"\r\n..", 0, end + 2) >= 0:
                body = bytes(buf[: end + 2]).replace(b"\r\n..", b"\r\n.")[2:]
            else:
                # One copy out of the buffer (a slice of a bytearray would be a second).
                with memoryview(buf) as view:
                    body = bytes(view[2: end + 2])
            del buf
            if limit is not None and len(body) > limit:
                raise MessageTooBig()
            return body
        if not too_big and limit is not None:
            stuffed += buf.count(b"\r\n..", max(counted_to - 3, 0))
            counted_to = len(buf)
            # No terminator yet: all but the last 4 octets are surely message content.
            if len(buf) - 2 - (len(_END) - 1) - stuffed > limit:
                too_big = True
        if too_big:
            # Over the limit: keep only what could start the terminator.
            del buf[: len(buf) - (len(_END) - 1)]
            scan_from = 0
        else:
            scan_from = max(0, len(buf) - (len(_END) - 1))


def declared_size(mail_options: list[str]) -> int | None:
    """The size MAIL FROM's SIZE= announces (RFC 1870), if any."""
    for option in mail_options:
        key, _, value = option.partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


def _unread(reader: asyncio.StreamReader, data: bytes) -> None:
    # Private (asyncio): StreamReader has no public unread; its buffer is a bytearray
    # we may prepend to.
    reader._buffer[:0] = data  # type: ignore[attr-defined]


# <dot-atom@domain> followed by nothing or by parameters: what nearly every MAIL
# and RCPT carries.  RFC 5322 atext for the local part, LDH labels for the domain.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(|\s.*)", re.DOTALL)


def fast_getaddr(arg: str) -> tuple[str, str] | None:
    """The (address, rest) aiosmtpd's _getaddr would return for a plain path, without
    its RFC 5322 header parser (~10 % of the loop's CPU at 1 KB); None: not plain."""
    found = _SIMPLE_PATH.fullmatch(arg.lstrip())
    return (found.group(1), found.group(2).lstrip(" \t")) if found else None


_Command = Callable[[Any], Awaitable[None]]


class _Commands(dict[str, _Command]):
    """aiosmtpd's command table (name -> coroutine), consulted once per command line.

    Every command is wrapped so that a line with a NUL octet anywhere is answered
    501 5.5.2 before any command (or parser) sees it; a NUL in the command word
    itself finds the same refusal instead of "command not recognized"."""

    def __init__(self, protocol: GatewayProtocol, methods: dict[str, _Command]) -> None:
        super().__init__({name: protocol._nul_guarded(name, method) for name, method in methods.items()})
        self._protocol = protocol

    def get(self, command: str, default: Any = None) -> Any:
        if "\0" in command:
            protocol = self._protocol
            return lambda arg: protocol._refuse_nul(command)
        return super().get(command, default)


def _shown(text: str) -> str:
    # Attacker-chosen text in a log line: bounded, NUL visible.
    return text[:32].replace("\0", "\\0")


def is_loopback(peer: Any) -> bool:
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except (TypeError, ValueError, IndexError):
        return False


class GatewayProtocol(SMTP):
    """What the SMTP, LMTP and submission listeners share (see the module docstring)."""

    # The handler, whose public methods (opened, closed, count_replies, ...) are ours.
    event_handler: Handler
    lmtp = False
    # The peer address of the session, as logged: the key fail2ban and CrowdSec read.
    client_ip = "?"
    # Bound into the log context of RCPT and DATA (gateway/smtp/handler.py).
    session_id = ""
    # The transaction under way, ours beside aiosmtpd's Envelope (which keeps the
    # addresses and the content): begun by the handler at MAIL, ended wherever
    # aiosmtpd starts a fresh Envelope and when the connection goes.
    transaction: Transaction | None = None
    _counted = False
    _refusal: Reply | None = None

    def __init__(self, handler: Handler, *, data_limit: int, **kwargs: Any) -> None:
        # data_size_limit=None: SIZE is advertised and enforced by our handler, so the
        # replies carry RFC 3463 codes (aiosmtpd's own are plain "552 Error: ...").
        super().__init__(handler, data_size_limit=None, enable_SMTPUTF8=True, **kwargs)
        self.data_limit = data_limit
        # Private (aiosmtpd): the command table _handle_client looks every line up in
        # (.get) and HELP reads; wrapped to refuse lines with a NUL (_Commands above).
        self._smtp_methods = _Commands(self, self._smtp_methods)

    # --- the transaction ----------------------------------------------------------------

    def begin(self, transaction: Transaction) -> None:
        """Called by the handler when it accepts MAIL."""
        self._end_transaction()
        self.transaction = transaction

    def _end_transaction(self) -> None:
        transaction, self.transaction = self.transaction, None
        if transaction is not None:
            self.event_handler.transaction_ended(transaction)

    def _set_post_data_state(self) -> None:
        # Private (aiosmtpd), overridden: it starts a fresh Envelope after DATA and,
        # through _set_rset_state, at RSET, HELO, EHLO and STARTTLS; our transaction
        # ends with the Envelope (submission gives its quota tokens back).
        self._end_transaction()
        super()._set_post_data_state()  # type: ignore[no-untyped-call]

    # --- sessions -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._counted:  # STARTTLS makes a second connection_made
            self._counted = True
            peer = self.session.peer if self.session is not None else None
            self.client_ip = peer[0] if peer else "?"
            self.session_id = secrets.token_hex(4)
            self._refusal = self.event_handler.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_transaction()
        if self._counted:
            self._counted = False
            self.event_handler.closed(self)
        super().connection_lost(exc)

    async def _handle_client(self) -> None:
        # Private (aiosmtpd), overridden: the session's command loop, greeting first.
        if self._refusal is not None:
            # Over the connection limits: 421 instead of the greeting (RFC 5321 3.1).
            await self.push(str(self._refusal))
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def _timeout_cb(self) -> None:
        # Private (aiosmtpd), overridden: aiosmtpd closes silently; say why first
        # (RFC 5321 4.5.3.2).
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(f"{REPLIES.timeout}\r\n".encode())  # type: ignore[attr-defined]
        log.info("session idle timeout")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def refuse_stopping(self) -> None:
        """421 4.3.2 and close: we are shutting down (RFC 5321 3.8)."""
        await self.push(str(REPLIES.busy))
        if self.transport is not None:
            self.transport.close()

    # --- command lines ------------------------------------------------------------------

    def _nul_guarded(self, name: str, method: _Command) -> _Command:
        async def command(arg: Any) -> None:
            # aiosmtpd decodes arguments with surrogateescape: a NUL octet is "\0" here.
            if arg is not None and "\0" in arg:
                await self._refuse_nul(name)
                return
            await method(arg)

        functools.update_wrapper(command, method)  # HELP reads the methods' syntax attributes
        return command

    async def _refuse_nul(self, command: str) -> None:
        handler = self.event_handler
        handler.count_replies("command", [REPLIES.nul_in_command])
        event_log.warning("command_refused", client_ip=self.client_ip,
                          listener=handler.listener, command=_shown(command), code=501, status="5.5.2",
                          reason="nul_in_command")
        await self.push(str(REPLIES.nul_in_command))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # Private (aiosmtpd), overridden: a regex fast path for plain paths; anything
        # else still goes to aiosmtpd's parser.
        if "\0" in arg:
            # Unreachable from the wire (the command table refuses such lines first);
            # kept so that neither parser ever returns an address or option with a NUL.
            return None, None
        found = fast_getaddr(arg) if arg else None
        if found is None or (self.local_part_limit and len(found[0].rpartition("@")[0]) > self.local_part_limit):
            return super()._getaddr(arg)
        return found

    # --- DATA ---------------------------------------------------------------------------

    def per_recipient(self, reply: Reply | str, count: int) -> str:
        """One reply for SMTP; one per accepted recipient for LMTP."""
        text = str(reply)
        if not self.lmtp:
            return text
        return "\r\n".join([text] * max(count, 1))

    async def smtp_DATA(self, arg: str) -> None:
        # Replaced (aiosmtpd's is pinned in gateway/private_api.py): it mirrors its
        # checks -- HELO, AUTH (internal helpers), a recipient, no argument.
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert envelope is not None  # set at connection_made
        if not envelope.rcpt_tos:
            await self.push(str(REPLIES.need_recipient))
            return
        if arg:
            await self.push(str(REPLIES.data_syntax))
            return
        handler = self.event_handler
        if handler.sessions.stopping:
            await self.refuse_stopping()
            return
        await self.push(str(REPLIES.start_data))
        count = len(envelope.rcpt_tos)
        handler.sessions.in_flight += 1
        big = handler.sessions.big_messages.slot()
        try:
            try:
                # Private (aiosmtpd): _reader, the session's StreamReader, read in
                # chunks; _reset_timeout restarts the idle timer per chunk.
                data = await read_data(self._reader, self.data_limit, self._reset_timeout, big,
                                       declared_size(envelope.mail_options))
            except MessageTooBig:
                log.info("message over size limit refused during DATA")
                handler.count_replies("data", [REPLIES.too_big] * count)
                self._set_post_data_state()
                await self.push(self.per_recipient(REPLIES.too_big, count))
                return
            envelope.content = envelope.original_content = data
            handler.message_received(len(data))
            try:
                # Private (aiosmtpd): calls handle_DATA as aiosmtpd's own smtp_DATA does.
                status = await self._call_handler_hook("DATA")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handler failed during DATA")
                status = self.per_recipient(REPLIES.internal_error, count)
            self._set_post_data_state()
            await self.push(status)
        finally:
            big.release()
            handler.sessions.in_flight -= 1


class GatewaySMTP(GatewayProtocol):
    lmtp = False


class GatewayLMTP(GatewayProtocol, LMTP):
    lmtp = True


# What _authenticate hands back to auth_PLAIN/auth_LOGIN: "decoded, check pending".
_CHECK_PENDING = AuthResult(success=False, handled=True)


class SubmissionSMTP(GatewaySMTP):
    """The submission listener: AUTH required (530 5.7.0 to MAIL without it), and
    AUTH only over TLS (538 5.7.11) unless the configuration allows it from loopback."""

    event_handler: SubmissionHandler

    def __init__(self, handler: SubmissionHandler, *, data_limit: int, loopback_auth: bool, **kwargs: Any):
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
        # Private (aiosmtpd), overridden: keep the decoded credentials (see above).
        self._credentials = (mechanism, auth_data)
        return _CHECK_PENDING

    async def _checked(self, decoding: Awaitable[AuthResult]) -> AuthResult:
        self._credentials = None
        result = await decoding
        credentials, self._credentials = self._credentials, None
        if result is not _CHECK_PENDING or credentials is None:
            return result  # not decodable: aiosmtpd has answered (501) already
        mechanism, auth_data = credentials
        assert self.session is not None
        return await self.event_handler.authenticate(self, self.session, mechanism, auth_data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._loopback_auth and self.session is not None and is_loopback(self.session.peer):
            # Private (aiosmtpd): what smtp_AUTH and EHLO consult for "AUTH over TLS only".
            self._auth_require_tls = False
