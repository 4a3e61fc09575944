"""The value every layer passes around: one received message, parsed.

At the bottom of the house (it imports nothing of the gateway): the parser
(gateway.parse) makes it, routing, filing, the store and the relay read it.
Immutable; every ``str`` field is safe for PostgreSQL ``text`` (no NUL, no lone
surrogates).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["Address", "AttachmentInfo", "ParsedMessage"]


@dataclass(frozen=True, slots=True)
class Address:
    name: str  # decoded display name, "" when none
    address: str  # addr-spec as written (not lower-cased); never ""


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    filename: str  # decoded (RFC 2231 / RFC 2047); "" when none
    content_type: str  # lower-case "type/subtype"
    size: int  # decoded byte size of the payload


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    raw: bytes  # as received, byte for byte
    # sha256 of the originator fields and the body (parse.DIGEST_FIELDS): with the
    # Message-ID, the idempotency key (store.deliveries.message_key)
    digest: str
    message_id: str | None
    date: datetime | None
    from_: Address | None
    sender: Address | None
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    subject: str
    text_body: str
    html_body: str
    attachments: tuple[AttachmentInfo, ...]
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    content_type: str
    report_type: str
    headers: tuple[tuple[str, str], ...]
    # Parts not looked at (nested deeper than the walker goes, or past its count);
    # the raw message keeps them.
    skipped_parts: int = 0
    # No text, no attachment, yet a non-blank body: something was not understood.
    empty_body: bool = False

    def header(self, name: str) -> str | None:
        """First value of the header ``name`` (case-insensitive), or None."""
        key = name.lower()
        for field, value in self.headers:
            if field == key:
                return value
        return None
