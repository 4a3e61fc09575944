"""The entry points: a message's raw bytes to a ParsedMessage, and one attachment back.

:func:`parse_message` reads the top-level header section, walks the MIME tree for
the text, HTML and attachments, decodes the header fields it reports, and computes
the content digest; every other module of the package does one of these steps.
"""

from __future__ import annotations

import re
from email.message import Message

from gateway import logs
from gateway.errors import MalformedMessage
from gateway.message import AttachmentInfo, ParsedMessage
from gateway.parse.charsets import decode_text
from gateway.parse.digest import content_digest
from gateway.parse.fields import addresses, message_id, message_ids, parse_date
from gateway.parse.headers import (ENCODED_WORD_CHARSET, HeaderSection, decode_header_value, header_message,
                                   raw_bytes, split_header_section)
from gateway.parse import forwards, invitations, newtext
from gateway.parse.html_text import html_to_text
from gateway.parse.limits import MAX_DEPTH, MAX_PARTS
from gateway.parse.mime import (Walk, attachment_name, content_type, decode_payload, leaves, payload_size, param_text,
                                rfc2231_charset)
from gateway.parse.text import clean, normalize_newlines
from gateway.parse.undeclared import declared_charsets, decode_raw_header

log = logs.get("gateway.parse")


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse one received message; see the package docstring for the contract."""
    try:
        return _parse(raw, understand=True)
    except MalformedMessage:
        raise
    except MemoryError:
        raise  # a resource problem, not a bad message: let the caller tempfail
    except Exception as exc:  # a bug here must not turn into a crash loop
        raise MalformedMessage(f"unparseable message ({type(exc).__name__})") from exc


def attachment(raw: bytes, index: int) -> tuple[AttachmentInfo, bytes] | None:
    """The ``index``-th attachment of a message (as ParsedMessage.attachments lists
    them) and its decoded bytes; None when there is no such attachment."""
    if index < 0:
        return None
    parsed = parse_message(raw)
    if index >= len(parsed.attachments):
        return None
    top, section = _top(parsed.raw)
    seen = 0
    for msg, body, kind, _ctype in leaves(top, parsed.raw[section.body_start:], Walk()):
        if kind in ("attachment", "named-text"):
            if seen == index:
                return parsed.attachments[index], decode_payload(msg, body)
            seen += 1
    return None


def _top(raw: bytes) -> tuple[Message, HeaderSection]:
    """The top-level header fields and the section they came from (where the body
    starts); MalformedMessage when there is no header section."""
    section = split_header_section(raw)
    if not section.fields:
        raise MalformedMessage("no header section")
    return header_message(section), section


_NOT_BLANK = re.compile(rb"\S")
# Attachments whose content is read (a forward's original, an invitation).
_KEPT = ("message/rfc822", "text/calendar")


def _parse(raw: bytes, *, understand: bool) -> ParsedMessage:
    """``understand``: look for a forwarded original too (the top-level message; an
    attached original is read without)."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise MalformedMessage("message is not bytes")
    raw = bytes(raw)
    if not raw.strip():
        raise MalformedMessage("empty message")

    top, section = _top(raw)
    body_start = section.body_start

    ctype = content_type(top)
    report_type = ""
    if ctype == "multipart/report":
        report_type = clean(param_text(top, "report-type") or "").strip().lower()

    texts: list[str] = []
    named_texts: list[str] = []  # inline text/plain parts with a file name
    html: str | None = None
    found: list[tuple[Message, str, int]] = []  # attachments: headers, type, size
    attached: bytes | None = None  # the first message/rfc822 part (a forward's original?)
    calendar: tuple[bytes, str | None] | None = None  # the first text/calendar part, its charset
    # The charsets the message declares: for 8-bit header bytes that declare none.
    eight_bit = not raw.isascii()
    labels = [m.group(1) for v in top.values() if "=?" in v for m in ENCODED_WORD_CHARSET.finditer(v)]
    walk = Walk()
    for msg, body, kind, part_type in leaves(top, raw[body_start:], walk):
        charset = param_text(msg, "charset")
        if eight_bit:
            labels += [label for label in (charset, rfc2231_charset(msg)) if label]
        if kind == "html" and html is not None:
            continue  # a second HTML alternative
        if kind == "attachment" and part_type not in _KEPT:
            found.append((msg, part_type, payload_size(msg, body)))  # its size is all we keep
            continue
        payload = decode_payload(msg, body)
        if kind in ("attachment", "named-text"):
            found.append((msg, part_type, len(payload)))
            if part_type == "message/rfc822" and attached is None:
                attached = payload
            elif part_type == "text/calendar" and calendar is None:
                calendar = payload, charset
            if kind == "attachment":
                continue
        text = clean(normalize_newlines(decode_text(payload, charset)))
        if kind == "text":
            texts.append(text)
        elif kind == "named-text":
            named_texts.append(text)
        else:
            html = text

    hints = declared_charsets(labels) if eight_bit else ()
    attachments = [AttachmentInfo(filename=attachment_name(msg, part_type, hints), content_type=part_type, size=size)
                   for msg, part_type, size in found]
    html_body = html or ""
    if not texts:
        texts = named_texts  # the only text is an inline part with a file name
    text_body = "\n".join(texts)
    if not texts and html_body:
        text_body = clean(html_to_text(html_body))
    if walk.skipped:
        log.warning("message_parts_skipped", parts=walk.skipped, max_depth=MAX_DEPTH, max_parts=MAX_PARTS,
                    size=len(raw))
    empty_body = not text_body.strip() and not attachments and _NOT_BLANK.search(raw, body_start) is not None

    def first(name: str) -> str | None:
        value = top.get(name)
        return value if isinstance(value, str) else None

    headers = tuple(
        (clean(decode_raw_header(raw_bytes(name))).strip().lower(), decode_header_value(value, hints).strip())
        for name, value in top.items()
    )
    from_ = addresses(top, "from", hints)
    sender = addresses(top, "sender", hints)
    subject = first("subject")
    subject_text = decode_header_value(subject, hints).strip() if subject is not None else ""
    split = newtext.split(text_body)
    forward = None
    if understand:
        original = None
        if attached is not None and attached.strip():
            try:
                original = _parse(attached, understand=False)
            except MalformedMessage:
                original = None
        forward = forwards.find(subject_text, text_body, original, newtext.split)
    return ParsedMessage(
        raw=raw,
        digest=content_digest(section, raw),
        message_id=message_id(first("message-id")),
        date=parse_date(first("date")),
        from_=from_[0] if from_ else None,
        sender=sender[0] if sender else None,
        reply_to=addresses(top, "reply-to", hints),
        to=addresses(top, "to", hints),
        cc=addresses(top, "cc", hints),
        subject=subject_text,
        text_body=text_body,
        html_body=html_body,
        attachments=tuple(attachments),
        in_reply_to=message_ids(first("in-reply-to")),
        references=message_ids(first("references")),
        content_type=ctype,
        report_type=report_type,
        headers=headers,
        skipped_parts=walk.skipped,
        empty_body=empty_body,
        split=split,
        forward=forward,
        invitation=invitations.read(*calendar) if calendar is not None else None,
    )
