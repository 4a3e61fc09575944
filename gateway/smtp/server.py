"""aiosmtpd protocol classes with a chunked DATA reader and per-recipient LMTP replies.

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
import logging
import re
from typing import Callable

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from gateway import logs
from gateway.replies import REPLIES, Reply
from gateway.workers import BIG_MESSAGE_BYTES, BigSlot

log = logging.getLogger("gateway.smtp")
event_log = logs.get("gateway.smtp")

_END = b"\r\n.\r\n"
_CHUNK = 256 * 1024


class MessageTooBig(Exception):
    pass


async def read_data(reader: asyncio.StreamReader, limit: int | None,
                    on_progress: "Callable[[], None] | None" = None, big: "BigSlot | None" = None) -> bytes:
    """Read a DATA section up to and including the terminating line.

    Returns the dot-unstuffed message; raises MessageTooBig (after reading to the
    end) when it exceeds ``limit`` octets, holding no more than limit + one chunk.
    ``on_progress`` is called per chunk (the session's idle timer restarts: RFC 5321
    4.5.3.2.6 times each TCP send of a DATA block, not the whole message).
    ``big``: taken once more than BIG_MESSAGE_BYTES are buffered (reading pauses
    until it is free); the caller releases it after the delivery.
    """
    # A virtual CRLF in front lets one search find a terminator on the first line.
    buf = bytearray(b"\r\n")
    too_big = False
    scan_from = 0
    # RFC 1870: the size is that of the message, without the dots added for
    # transparency; count them as they arrive (one per "\r\n.." on the wire).
    stuffed = 0
    counted_to = 0
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


def _unread(reader: asyncio.StreamReader, data: bytes) -> None:
    # StreamReader has no public unread; its buffer is a bytearray we may prepend to.
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


class _Commands(dict):  # type: ignore[type-arg]
    """aiosmtpd's command table (name -> coroutine), consulted once per command line.

    Every command is wrapped so that a line with a NUL octet anywhere is answered
    501 5.5.2 before any command (or parser) sees it; a NUL in the command word
    itself finds the same refusal instead of "command not recognized"."""

    def __init__(self, protocol: "_DataMixin", methods: dict) -> None:  # type: ignore[type-arg]
        super().__init__({name: protocol._nul_guarded(name, method) for name, method in methods.items()})
        self._protocol = protocol

    def get(self, command, default=None):  # type: ignore[no-untyped-def, override]
        if "\0" in command:
            protocol = self._protocol
            return lambda arg: protocol._refuse_nul(command)
        return super().get(command, default)


def client_ip(server: object) -> str:
    """The peer address of a session, as logged (the key fail2ban and CrowdSec read)."""
    return getattr(server, "gateway_peer", None) or "?"


def _shown(text: str) -> str:
    # Attacker-chosen text in a log line: bounded, NUL visible.
    return text[:32].replace("\0", "\\0")


class _DataMixin:
    """Replaces smtp_DATA for SMTP, LMTP and submission; counts sessions; refuses
    command lines with a NUL octet."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._smtp_methods = _Commands(self, self._smtp_methods)  # type: ignore[has-type]

    def _nul_guarded(self, name: str, method: Callable):  # type: ignore[no-untyped-def, type-arg]
        async def command(arg: str | None) -> None:
            # aiosmtpd decodes arguments with surrogateescape: a NUL octet is "\0" here.
            if arg is not None and "\0" in arg:
                await self._refuse_nul(name)
                return
            await method(arg)

        functools.update_wrapper(command, method)  # HELP reads the methods' syntax attributes
        return command

    async def _refuse_nul(self, command: str) -> None:
        handler = self.event_handler  # type: ignore[attr-defined]
        handler.count_replies("command", [REPLIES.nul_in_command])
        event_log.warning("command_refused", client_ip=client_ip(self),
                          listener=handler.listener, command=_shown(command), code=501, status="5.5.2",
                          reason="nul_in_command")
        await self.push(str(REPLIES.nul_in_command))  # type: ignore[attr-defined]

    def _getaddr(self, arg: str):  # type: ignore[no-untyped-def]
        if "\0" in arg:
            # Unreachable from the wire (the command table refuses such lines first);
            # kept so that neither parser ever returns an address or option with a NUL.
            return None, None
        found = fast_getaddr(arg) if arg else None
        if found is None or (self.local_part_limit  # type: ignore[attr-defined]
                             and len(found[0].rpartition("@")[0]) > self.local_part_limit):  # type: ignore[attr-defined]
            return super()._getaddr(arg)  # type: ignore[misc]
        return found

    lmtp = False
    _counted = False
    _refusal: Reply | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if not self._counted:  # STARTTLS makes a second connection_made
            self._counted = True
            self._refusal = self.event_handler.opened(self)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.event_handler.closed(self)  # type: ignore[attr-defined]
        super().connection_lost(exc)  # type: ignore[misc]

    async def _handle_client(self) -> None:
        if self._refusal is not None:
            # Over the connection limits: 421 instead of the greeting (RFC 5321 3.1).
            await self.push(str(self._refusal))  # type: ignore[attr-defined]
            self.transport.close()  # type: ignore[attr-defined]
            return
        await super()._handle_client()  # type: ignore[misc]

    def _timeout_cb(self) -> None:
        # aiosmtpd closes silently; say why first (RFC 5321 4.5.3.2).
        transport = self.transport  # type: ignore[attr-defined]
        if transport is not None and not transport.is_closing():
            transport.write(f"{REPLIES.timeout}\r\n".encode())
        log.info("session idle timeout")
        super()._timeout_cb()  # type: ignore[misc]

    def per_recipient(self, reply: Reply | str, count: int) -> str:
        """One reply for SMTP; one per accepted recipient for LMTP."""
        text = str(reply)
        if not self.lmtp:
            return text
        return "\r\n".join([text] * max(count, 1))

    async def smtp_DATA(self, arg: str) -> None:  # noqa: C901 - mirrors aiosmtpd's checks
        if await self.check_helo_needed():  # type: ignore[attr-defined]
            return
        if await self.check_auth_needed("DATA"):  # type: ignore[attr-defined]
            return
        envelope = self.envelope  # type: ignore[attr-defined]
        if not envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")  # type: ignore[attr-defined]
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")  # type: ignore[attr-defined]
            return
        handler = self.event_handler  # type: ignore[attr-defined]
        if handler.gateway.stopping:
            await handler.refuse_stopping(self)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")  # type: ignore[attr-defined]
        count = len(envelope.rcpt_tos)
        handler.gateway.in_flight += 1
        big = handler.gateway.big_messages.slot()
        try:
            try:
                data = await read_data(self._reader, self.data_limit, self._reset_timeout,  # type: ignore[attr-defined]
                                       big)
            except MessageTooBig:
                log.info("message over size limit refused during DATA")
                handler.count_replies("data", [REPLIES.too_big] * count)
                self._set_post_data_state()  # type: ignore[attr-defined]
                await self.push(self.per_recipient(REPLIES.too_big, count))  # type: ignore[attr-defined]
                return
            envelope.content = envelope.original_content = data
            handler.message_received(len(data))
            try:
                status = await self._call_handler_hook("DATA")  # type: ignore[attr-defined]
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handler failed during DATA")
                status = self.per_recipient(REPLIES.internal_error, count)
            self._set_post_data_state()  # type: ignore[attr-defined]
            await self.push(status)  # type: ignore[attr-defined]
        finally:
            big.release()
            handler.gateway.in_flight -= 1


class GatewaySMTP(_DataMixin, SMTP):
    lmtp = False

    def __init__(self, handler, *, data_limit: int, **kwargs):  # type: ignore[no-untyped-def]
        # data_size_limit=None: SIZE is advertised and enforced by our handler, so the
        # replies carry RFC 3463 codes (aiosmtpd's own are plain "552 Error: ...").
        super().__init__(handler, data_size_limit=None, enable_SMTPUTF8=True, **kwargs)
        self.data_limit = data_limit


class GatewayLMTP(_DataMixin, LMTP):
    lmtp = True

    def __init__(self, handler, *, data_limit: int, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(handler, data_size_limit=None, enable_SMTPUTF8=True, **kwargs)
        self.data_limit = data_limit
