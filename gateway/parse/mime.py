"""The MIME walk: a message's leaf parts, their parameters and decoded payloads.

Why the MIME structure is not taken from ``mailparser.parse_from_bytes``:

* mail-parser wraps the stdlib ``email`` feed parser, which recurses once per
  ``multipart/*`` nesting level (nested generators) and ``Message.walk()``
  recurses again: a 1000-level nested message raises ``RecursionError``
  (mail-parser turns it into ``MailParserRecursionError``) after ~0.6 s of
  work, i.e. we would lose the whole message and burn CPU.  The stdlib
  fallback (``email.message_from_bytes``) has exactly the same problem, so a
  fallback does not help.
* mail-parser decodes text bodies itself and turns Shift_JIS-labelled CP932
  bodies (①, 髙, ～ ...) into U+FFFD; its ``parse()`` also re-encodes every
  attachment to base64 and invents random file names, work we do not need.

So the structure is walked here, iteratively, on bytes: each part's header
block is split off by the header scanner (:mod:`gateway.parse.headers`), stored
in a compat32 ``email.message.Message`` (fast; ``policy.default`` is ~3x slower)
so the stdlib's Content-Type / RFC 2231 parameter handling is reused, and a
multipart body is cut at its boundary lines with ``bytes.find`` (linear,
:mod:`gateway.parse.multipart`).  Depth is capped at ``MAX_DEPTH`` (deeper
multiparts are opaque and skipped) and the number of parts at ``MAX_PARTS``.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from email.message import Message
from typing import Iterator

from gateway.parse.headers import decode_header_value, header_message, split_header_section
from gateway.parse.limits import MAX_DEPTH, MAX_PARTS
from gateway.parse.multipart import children
from gateway.parse.text import clean
from gateway.parse.undeclared import decode_header_bytes


@dataclass
class Walk:
    skipped: int = 0  # parts not looked at: nested below MAX_DEPTH or past MAX_PARTS


def leaves(top: Message, body: bytes, walk: Walk) -> Iterator[tuple[Message, bytes, str, str]]:
    """The message's leaf parts in document order, iteratively (no recursion):
    (headers, body bytes, kind, content type); kind is "text", "html", "attachment"
    or "named-text" (an inline text/plain part with a file name: an attachment that
    is also the text when there is no other).  Used by parse and by attachment()
    so both count attachments alike."""
    # (headers, body bytes, depth, inside an attached container)
    stack: list[tuple[Message, bytes, int, bool]] = [(top, body, 0, False)]
    visited = 0
    while stack:
        if visited >= MAX_PARTS:
            walk.skipped += len(stack)
            return
        msg, body, depth, in_attachment = stack.pop()
        visited += 1
        ctype = content_type(msg)
        maintype, _, subtype = ctype.partition("/")
        try:
            disposition = msg.get_content_disposition()
        except Exception:
            disposition = None

        if maintype == "multipart":
            if depth >= MAX_DEPTH:
                walk.skipped += 1  # opaque: its parts are not looked at (the raw message keeps them)
                continue
            parts = children(msg, body)
            if parts is not None:
                child_default = "message/rfc822" if subtype == "digest" else "text/plain"
                attached = in_attachment or disposition == "attachment"
                room = max(MAX_PARTS - visited, 0)
                walk.skipped += max(len(parts) - room, 0)
                found = []
                for part in parts[:room]:
                    section = split_header_section(part, salvage=False)
                    found.append((header_message(section, child_default), part[section.body_start:], depth + 1,
                                  attached))
                stack.extend(reversed(found))
                continue
            # no usable boundary: salvage the body as plain text
            yield msg, body, "text", "text/plain"
            continue

        named = _param(msg, "filename", "content-disposition") is not None or _param(msg, "name", "content-type") is not None
        if in_attachment or disposition == "attachment" or maintype != "text" or subtype not in ("plain", "html"):
            yield msg, body, "attachment", ctype
        elif named:
            yield msg, body, ("named-text" if subtype == "plain" else "attachment"), ctype
        else:
            yield msg, body, subtype if subtype == "html" else "text", ctype


# --------------------------------------------------------------------------
# payloads

_B64_JUNK = bytes(c for c in range(256) if not (chr(c).isascii() and (chr(c).isalnum() or chr(c) in "+/")))


def _b64decode(data: bytes) -> bytes:
    try:
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        pass
    cleaned = data.translate(None, _B64_JUNK)
    rest = len(cleaned) % 4
    if rest == 1:
        cleaned = cleaned[:-1]
    elif rest:
        cleaned += b"=" * (4 - rest)
    try:
        return binascii.a2b_base64(cleaned)
    except (binascii.Error, ValueError):
        return b""


def _b64size(data: bytes) -> int:
    """len(_b64decode(data)) without decoding: 6 bits per base64 character, the
    padding and anything else (line breaks, junk) not counted -- what the decoder
    and its salvage make of it.  Only where no '=' stands before the end (there the
    decoder stops early)."""
    if b"=" in data.rstrip(b" \t\r\n="):
        return len(_b64decode(data))
    return len(data.translate(None, _B64_JUNK)) * 6 // 8


def payload_size(msg: Message, body: bytes) -> int:
    """len(decode_payload(msg, body)), without building the decoded bytes of a
    base64 part (an attachment whose size is all we keep)."""
    if _transfer_encoding(msg) == "base64":
        return _b64size(body)
    return len(decode_payload(msg, body))


def _transfer_encoding(msg: Message) -> str:
    return str(msg.get("content-transfer-encoding", "")).strip().lower()


def decode_payload(msg: Message, body: bytes) -> bytes:
    """A part's body with its Content-Transfer-Encoding undone (bad base64 salvaged)."""
    cte = _transfer_encoding(msg)
    if cte == "base64":
        return _b64decode(body)
    if cte == "quoted-printable":
        try:
            return binascii.a2b_qp(body)
        except (binascii.Error, ValueError):
            return body
    return body


# --------------------------------------------------------------------------
# parameters

def _param(msg: Message, name: str, header: str) -> str | tuple | None:
    try:
        return msg.get_param(name, None, header)
    except Exception:
        return None


def param_text(msg: Message, name: str, header: str = "content-type") -> str | None:
    """A parameter's value as text (the value part of an RFC 2231 triple), or None."""
    value = _param(msg, name, header)
    if isinstance(value, tuple):
        value = value[2]
    return value if isinstance(value, str) else None


def rfc2231_charset(msg: Message) -> str | None:
    for name, header in (("filename", "content-disposition"), ("name", "content-type")):
        value = _param(msg, name, header)
        if isinstance(value, tuple) and value[0]:
            return value[0]
    return None


def content_type(msg: Message) -> str:
    try:
        return clean(msg.get_content_type()).lower()
    except Exception:
        return "text/plain"


# Default file names for parts that usually have none.
_DEFAULT_NAMES = {"text/calendar": "invite.ics", "application/ics": "invite.ics"}


def attachment_name(msg: Message, ctype: str, hints: tuple[str, ...]) -> str:
    return _filename(msg, hints) or _DEFAULT_NAMES.get(ctype, "")


def _filename(msg: Message, hints: tuple[str, ...] = ()) -> str:
    value = _param(msg, "filename", "content-disposition")
    if value is None:
        value = _param(msg, "name", "content-type")
    if value is None:
        return ""
    try:
        if isinstance(value, tuple):  # RFC 2231: (charset, language, text)
            charset, _language, text = value
            raw = text.encode("latin-1", "replace")
            return clean(decode_header_bytes(raw, charset or None, hints)).strip()
        return decode_header_value(value, hints).strip()
    except Exception:
        return ""
