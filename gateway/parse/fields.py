"""The structured header fields: address lists, message ids and dates.

Addresses take a regular-expression fast path for the common plain form
(:func:`plain_addresses`) and otherwise our own list splitter in front of
``email.utils.getaddresses``; display names are decoded like any header value.
Dates use mail-parser's tolerant RFC 5322 interpreter
(``mailparser.dates.parse_mail_date``), with the stdlib
``email.utils.parsedate_to_datetime`` as fallback.
"""

from __future__ import annotations

import email.utils
import re
from datetime import datetime, timezone
from email.message import Message

from gateway.message import Address
from gateway.parse.headers import decode_header_value, raw_bytes, unfold
from gateway.parse.limits import DATE_MAX
from gateway.parse.text import clean
from gateway.parse.undeclared import decode_raw_header

try:  # mail-parser's tolerant RFC 5322 date interpreter (returns UTC values)
    from mailparser.dates import parse_mail_date as _mp_parse_date
except Exception:  # pragma: no cover - mail-parser missing or reorganised
    _mp_parse_date = None


# --------------------------------------------------------------------------
# addresses

_PLAIN_ADDR = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_MAILBOX = re.compile(rf"[ \t]*(?:([A-Za-z0-9_ \t-]*?)[ \t]*<({_PLAIN_ADDR})>|({_PLAIN_ADDR}))[ \t]*")


def plain_addresses(values: list[str]) -> list[tuple[str, str]] | None:
    """getaddresses() for the common header: ``Name <a@b>`` or ``a@b``, comma
    separated, ASCII, no quotes, comments or encoded words -- a regular expression
    instead of the RFC 5322 parser (a third of a 1 KB message's parse).  None when
    any value is not that plain; then getaddresses() is used."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        for part in value.split(","):
            found = _PLAIN_MAILBOX.fullmatch(part)
            if found is None:
                return None
            if found.group(3):
                pairs.append(("", found.group(3)))
            else:
                pairs.append((" ".join(found.group(1).split()), found.group(2)))
    return pairs


def split_list(value: str) -> list[str]:
    """Split an address list at the commas outside quoted strings, comments and
    angle brackets."""
    pieces: list[str] = []
    start = depth = 0
    quoted = angle = False
    i, size = 0, len(value)
    while i < size:
        ch = value[i]
        if ch == "\\" and (quoted or depth):
            i += 2
            continue
        if quoted:
            quoted = ch != '"'
        elif ch == '"':
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth:
            pass
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == "," and not angle:
            pieces.append(value[start:i])
            start = i + 1
        i += 1
    pieces.append(value[start:])
    return [p for p in pieces if p.strip()]


_ANGLE_ADDR = re.compile(r"^(.*?)<([^<>]*)>\s*(?:\([^()]*\)\s*)*;?\s*$", re.DOTALL)


def _mailboxes(values: list[str]) -> list[tuple[str, str]]:
    """(display name, address) pairs of address-list headers.  A mailbox written
    ``name <addr>`` takes its address from the angle brackets whatever the name
    holds: ``Mikel@Lindsaar <raasdnil@b.example>`` is one mailbox (the stdlib makes
    two of it).  Anything else goes to email.utils.getaddresses (groups, comments,
    bare addresses)."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        for piece in split_list(value):
            found = _ANGLE_ADDR.match(piece)
            if found is None:
                pairs.extend(email.utils.getaddresses([piece]))
                continue
            name = found.group(1).strip()
            if ":" in name and not name.startswith('"'):  # "group: name <addr>"
                name = name.split(":", 1)[1].strip()
            if len(name) >= 2 and name[0] == name[-1] == '"':
                name = email.utils.unquote(name)
            address = found.group(2).strip()
            if address.startswith("@") and ":" in address:  # obsolete source route
                address = address.split(":", 1)[1]
            pairs.append((name, address))
    return pairs


def addresses(msg: Message, name: str, hints: tuple[str, ...] = ()) -> tuple[Address, ...]:
    """The mailboxes of every ``name`` field of ``msg`` (an address list)."""
    values = msg.get_all(name) or []
    if not values:
        return ()
    unfolded = [unfold(v) for v in values]
    try:
        pairs = plain_addresses(unfolded)
        if pairs is None:
            pairs = _mailboxes(unfolded)
    except Exception:
        return ()
    out = []
    for display, addr in pairs:
        addr = clean(decode_raw_header(raw_bytes(addr), hints)).strip()
        if not addr:
            continue
        out.append(Address(name=decode_header_value(display, hints).strip(), address=addr))
    return tuple(out)


# --------------------------------------------------------------------------
# message ids

_MSGID = re.compile(r"<([^<>]*)>")


def message_ids(value: str | None) -> tuple[str, ...]:
    """The ids of a Message-ID / In-Reply-To / References value, without brackets."""
    if not value:
        return ()
    value = clean(decode_raw_header(raw_bytes(unfold(value))))
    found = ["".join(m.split()) for m in _MSGID.findall(value)]
    found = [m for m in found if m]
    if not found:  # bare ids from broken clients
        found = [tok.strip("<>,;") for tok in value.split() if "@" in tok]
        found = [m for m in found if m]
    return tuple(found)


def message_id(value: str | None) -> str | None:
    ids = message_ids(value)
    if ids:
        return ids[0]
    if value is None:
        return None
    rest = "".join(clean(decode_raw_header(raw_bytes(value))).split()).strip("<>")
    return rest or None


# --------------------------------------------------------------------------
# dates

def parse_date(value: str | None) -> datetime | None:
    """A Date value in UTC, or None when there is none or it cannot be read."""
    if not value:
        return None
    value = clean(unfold(value))[:DATE_MAX].strip()
    if not value:
        return None
    if _mp_parse_date is not None:
        try:
            result = _mp_parse_date(value).value
            if result is not None:
                return result.astimezone(timezone.utc)
        except Exception:
            pass
    try:
        result = email.utils.parsedate_to_datetime(value)
    except Exception:
        return None
    if result is None:
        return None
    try:
        if result.tzinfo is None:  # "-0000" or no zone: unknown, take as UTC
            result = result.replace(tzinfo=timezone.utc)
        return result.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return None
