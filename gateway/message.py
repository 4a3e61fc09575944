"""The value every layer passes around: one received message, parsed.

At the bottom of the house (it imports nothing of the gateway): the parser
(gateway.parse) makes it, routing, filing, the store and the relay read it.
Immutable; every ``str`` field is safe for PostgreSQL ``text`` (no NUL, no lone
surrogates).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

__all__ = ["Address", "AttachmentInfo", "Attendee", "AuthResult", "Forwarded", "Invitation", "ParsedMessage", "TextSplit"]


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
class TextSplit:
    """The text its author wrote, apart from the quoted history and the signature
    (gateway/parse/newtext.py)."""

    new_text: str
    # The line where the quoted history starts ("On ... wrote:", "-----Original
    # Message-----", "差出人: ..."); "" when nothing was quoted.
    quote_marker: str = ""
    # The signature cut off the end ("-- " block, sign-off, "Sent from my ..."); "" when none.
    signature: str = ""


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The original of a forwarded message (gateway/parse/forwards.py): an attached
    message/rfc822 part or an inline forward block of a mail client."""

    # attachment | gmail | outlook | outlook-ja | apple | thunderbird | inline
    method: str
    from_: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    # Aware (UTC) when the original said its zone; naive when it did not (an inline
    # block shows the forwarder's local time: the organisation's time zone applies).
    date: datetime | None
    date_text: str  # the date as written ("" when none)
    subject: str
    message_id: str | None  # only an attached original has one
    text_body: str  # the original's text
    split: TextSplit  # the original's new text
    note: str  # what the forwarder wrote above the forward
    # Why it cannot be filed as the original ("" when it can).
    problem: str = ""


@dataclass(frozen=True, slots=True)
class Attendee:
    address: str
    name: str = ""
    status: str = ""  # PARTSTAT: ACCEPTED | DECLINED | TENTATIVE | NEEDS-ACTION | ...


@dataclass(frozen=True, slots=True)
class Invitation:
    """A meeting invitation (a text/calendar part, gateway/parse/invitations.py)."""

    method: str  # REQUEST | REPLY | CANCEL | PUBLISH | ... ("" when the part names none)
    summary: str
    start: datetime | date | None  # datetime in UTC when the part gave a zone; date: all-day
    end: datetime | date | None
    organizer: str | None  # address
    attendees: tuple[Attendee, ...]
    location: str = ""
    uid: str = ""

    def as_json(self) -> dict[str, Any]:
        """As stored with the email and shown by the API and `gateway record show`."""
        return {"method": self.method, "summary": self.summary, "start": _iso(self.start), "end": _iso(self.end),
                "organizer": self.organizer, "location": self.location, "uid": self.uid,
                "attendees": [{"address": a.address, "name": a.name, "status": a.status} for a in self.attendees]}


def _iso(value: datetime | date | None) -> str | None:
    """ISO 8601: a UTC time with Z, a floating time without zone, a day as YYYY-MM-DD."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class AuthResult:
    """One authentication result about a received message (gateway/trust.py): from an
    Authentication-Results header of the organisation's own MTA, or our own check."""

    method: str  # dkim | spf | dmarc | arc ...
    result: str  # pass | fail | softfail | neutral | none | temperror | permerror | policy ...
    domain: str  # dkim header.d, spf smtp.mailfrom's domain, dmarc header.from ("" when none)
    source: str  # the authserv-id it came from, or "dkimpy" for our own verification


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
    # What the author wrote (quoted history and signature apart): gateway/parse/newtext.py.
    split: TextSplit = TextSplit("")
    # The forwarded original, when this is a forward (gateway/parse/forwards.py).
    forward: Forwarded | None = None
    # The first text/calendar part, read (gateway/parse/invitations.py).
    invitation: Invitation | None = None
    # What the organisation's own MTA and our own checks say of its sender (issue 16;
    # gateway/trust.py, filled in by delivery after parsing: the parser knows no settings).
    authentication: tuple[AuthResult, ...] = ()

    @property
    def new_text(self) -> str:
        return self.split.new_text

    def header(self, name: str) -> str | None:
        """First value of the header ``name`` (case-insensitive), or None."""
        key = name.lower()
        for field, value in self.headers:
            if field == key:
                return value
        return None
