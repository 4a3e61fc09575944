"""Forwarded messages: recognise a forward and read its original.

Two kinds are recognised:

* an attached original (the first ``message/rfc822`` part, parsed by the caller):
  method ``attachment``, every field taken from that message;
* an inline forward block, as mail clients write it into the forwarding message's
  text (an HTML-only message arrives as its text rendering):

  - Gmail: ``---------- Forwarded message ---------`` then From/Date/Subject/To/Cc
    (``gmail``); Japanese Gmail writes ``---------- 転送メッセージ ---------``, the
    same English field names and a Japanese date (``gmail`` too);
  - Apple Mail: ``Begin forwarded message:`` then From/Subject/Date/To (``apple``);
  - Thunderbird: ``-------- Forwarded Message --------`` then ``Subject: <TAB>...``
    fields (``thunderbird``);
  - Outlook: a line of underscores or ``-----Original Message-----`` (or nothing)
    then From/Sent/To/Cc/Subject (``outlook``); Japanese Outlook: 差出人/送信日時/
    宛先/CC/件名 (also 送信者, 日付, full-width colons), optionally after the
    underscores or ``-----元のメッセージ-----`` (``outlook-ja``);
  - any other block quotequail takes for a forward (its other languages, an
    indented ``> From:`` block): ``inline``.

Only a message that looks like a forward is examined (cheap checks first): its
subject starts with a forward prefix (Fwd:, FW:, WG:, TR:, RV:, Doorst:, 転送:,
ＦＷ：...), or its text holds an explicit forward marker line (Gmail, Apple Mail,
Thunderbird, Japanese Gmail).  A subject starting with a reply prefix (Re:, AW:,
SV:, 返信:...; "Re: Fwd: x" too) is a reply: its markers and Outlook blocks sit in
the quoted history, so it is not read as a forward.  Neither is an Outlook header
block alone ("-----Original Message-----", From:/Sent:/To:) under a subject
that is no forward: that is how Outlook quotes in a reply.

What quotequail (``quotequail.unwrap``) does: it finds the first forward/reply
pattern line (its English, German, French, Spanish, Dutch, Swedish, Russian
markers, the Outlook underscore line, "On ... wrote:"), or a bare block of at
least two known header fields, and says whether it is a forward or a reply; we
accept only ``forward``.  What we add:

* Japanese: quotequail knows neither 転送メッセージ / 元のメッセージ nor the Japanese
  Outlook field names (nor the full-width colon); :func:`_find_ja` finds those
  blocks, and our field reader knows the names.
* The field reader (:func:`_read_block`): quotequail keeps reading "Word: ..."
  lines after the block's blank line, so an original starting "Dear Alice:" lost
  that line and one starting "To: all staff" overwrote To.  Ours ends the block at
  its blank line (unless a field not yet seen follows, as HTML renderings space
  them) and takes the original's text from there; quotequail's values fill only
  fields ours did not read (its other languages).
* Values: addresses (``Name <a@b>``, bare, comma or Outlook-semicolon separated,
  ``Name [mailto:a@b]``; entries without an address are dropped) and the dates
  each client writes (:func:`parse_when`): aware UTC when a zone is written, naive
  when none is (an inline block shows the forwarder's local time).
* Bounds: only the first 256 KB of text are looked at, and quotequail only sees
  the first :data:`QQ_LINES` lines cut to :data:`QQ_LINE_CHARS` characters (its
  header scan is quadratic in the number of "Word: value" lines).

:func:`find` never raises: anything unexpected gives None.
"""

from __future__ import annotations

import email.utils
import re
import textwrap
import unicodedata
from datetime import datetime, timedelta, timezone
from typing import Callable

import quotequail

from gateway.message import Address, Forwarded, ParsedMessage, TextSplit
from gateway.parse.fields import split_list
from gateway.parse.text import clean, normalize_newlines

__all__ = ["find", "parse_when"]

# Characters of the forwarding message's text looked at.
TEXT_MAX = 256 * 1024
# What quotequail sees: the first lines, each cut (a forward block starts near the top).
QQ_LINES = 300
QQ_LINE_CHARS = 1000
# "差出人:" lines tried as the start of a Japanese Outlook block.
JA_CANDIDATES = 20
# Lines one header block may span (fields and their continuation lines).
BLOCK_LINES = 60
# Characters of a date value looked at.
DATE_CHARS = 200

# --------------------------------------------------------------------------
# is it a forward at all?

# After NFKC (ＦＷ： -> FW:): "Fwd:", "FW:", "[Fwd: x]", "Fwd[2]:", "転送:" ...
_FORWARD_SUBJECT = re.compile(r"\s*\[?\s*(?:fwd?|wg|tr|rv|doorst|転送)\s*(?:\[\d+\]|\(\d+\))?\s*:", re.IGNORECASE)
_REPLY_SUBJECT = re.compile(r"\s*\[?\s*(?:re|aw|sv|antw|odp|返信|答复|回复)\s*(?:\[\d+\]|\(\d+\))?\s*:",
                            re.IGNORECASE)
# A tag a list or a gateway puts in front: "[EXTERNAL] FW: ...", "【外部】FW: ..."
_SUBJECT_TAG = re.compile(r"\s*(?:\[[^\[\]]{1,30}\]|【[^【】]{1,30}】)")
# Explicit forward marker lines (not quoted): Gmail, Thunderbird, Apple Mail, Japanese Gmail.
_MARKER_HINTS = ("orwarded", "転送メッセージ")
_MARKER_LINE = re.compile(
    r"^[ \t]*(?:-{2,}[ \t]*(?:Forwarded [mM]essage|転送メッセージ)[ \t]*-{2,}|Begin forwarded message:)[ \t]*$",
    re.MULTILINE,
)


def _subject_kind(subject: str) -> str:
    """"forward", "reply" or "" by the subject's first prefix (after at most three
    tags)."""
    head = unicodedata.normalize("NFKC", subject[:120])
    at = 0
    for _ in range(4):
        if _FORWARD_SUBJECT.match(head, at):
            return "forward"
        if _REPLY_SUBJECT.match(head, at):
            return "reply"
        tag = _SUBJECT_TAG.match(head, at)
        if tag is None:
            break
        at = tag.end()
    return ""


def _has_marker(text: str) -> bool:
    if not any(hint in text for hint in _MARKER_HINTS):
        return False
    return _MARKER_LINE.search(text) is not None


# --------------------------------------------------------------------------
# the header block

_FIELD = re.compile(r"^[ \t]*\*?([^\W\d_][\w .'-]{0,38}?)\*?[ \t]*[:：][ \t]*(.*?)[ \t]*$")
_KEYS = {
    **dict.fromkeys(("from", "差出人", "送信者", "von", "de", "van", "från"), "from"),
    **dict.fromkeys(("to", "宛先", "an", "para", "à", "aan", "till"), "to"),
    "cc": "cc",
    "bcc": "bcc",
    **dict.fromkeys(("date", "sent", "送信日時", "日付", "日時", "datum", "gesendet", "enviado el", "fecha",
                     "envoyé", "verzonden"), "date"),
    **dict.fromkeys(("subject", "件名", "betreff", "asunto", "objet", "sujet", "onderwerp", "ämne"), "subject"),
}
_JA_NAMES = frozenset(("差出人", "送信者", "送信日時", "日付", "日時", "宛先", "件名"))


def _field(line: str) -> tuple[str, str | None, str] | None:
    """(name as written, its key or None, value) of a "Name: value" line."""
    found = _FIELD.match(line)
    if found is None:
        return None
    name = " ".join(found.group(1).split())
    return name, _KEYS.get(name.lower()), found.group(2)


class _Block:
    __slots__ = ("fields", "names", "end")

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.names: list[str] = []  # the field names as written, in order
        self.end = 0  # index of the first line after the block


def _read_block(lines: list[str], i: int) -> _Block:
    """The header fields starting at ``lines[i]`` (blank lines before them skipped).
    The block ends at its blank line, unless a known field not yet seen follows the
    blank; a field's value may continue on up to 3 lines when the block goes on (or
    ends) after them."""
    block = _Block()
    size = len(lines)
    stop = min(size, i + BLOCK_LINES)
    n = i
    while n < stop and not lines[n].strip():
        n += 1
    block.end = n
    last_key: str | None = None
    seen_any = False
    while n < stop:
        line = lines[n]
        if not line.strip():
            m = n + 1
            while m < stop and not lines[m].strip():
                m += 1
            field = _field(lines[m]) if m < stop else None
            if field is not None and field[1] is not None and field[1] not in block.fields:
                n = m
                continue
            break
        field = _field(line)
        if field is not None:
            name, key, value = field
            block.names.append(name)
            if key is not None and key not in block.fields:
                block.fields[key] = value
            last_key = key
            seen_any = True
            n += 1
            block.end = n
            continue
        if not seen_any:
            break
        run = n
        while run < stop and run - n < 4 and lines[run].strip() and _field(lines[run]) is None:
            run += 1
        if run - n > 3 or not (run >= size or not lines[run].strip() or _field(lines[run]) is not None):
            break  # not a wrapped value: the original starts without a blank line
        if last_key is not None and last_key in block.fields:
            extra = " ".join(line.strip() for line in lines[n:run])
            block.fields[last_key] = f"{block.fields[last_key]} {extra}".strip()
        n = run
        block.end = n
    return block


# --------------------------------------------------------------------------
# locating the block

_SEPARATOR = re.compile(r"^[ \t]*(?:_{10,}|-{3,}[ \t]*(?:Original Message|元のメッセージ)[ \t]*-{3,})[ \t]*$",
                        re.IGNORECASE)
_JA_HINTS = ("転送メッセージ", "元のメッセージ", "差出人", "送信者")
_JA_START = re.compile(
    r"^[ \t]*(?:(?P<gmail>-{3,}[ \t]*転送メッセージ[ \t]*-{3,})|(?P<orig>-{3,}[ \t]*元のメッセージ[ \t]*-{3,})"
    r"|(?P<from>\*?(?:差出人|送信者)\*?[ \t]*[:：]))[ \t]*",
    re.MULTILINE,
)


def _find_ja(text: str, lines: list[str]) -> tuple[int, str] | None:
    """(line index, method) of the first Japanese forward block: quotequail knows
    neither Japanese Gmail's marker nor Japanese Outlook's fields."""
    if not any(hint in text for hint in _JA_HINTS):
        return None
    index = position = 0
    for tried, found in enumerate(_JA_START.finditer(text)):
        if tried >= JA_CANDIDATES:
            break
        index += text.count("\n", position, found.start())
        position = found.start()
        if found.group("gmail"):
            return index, "gmail"
        if found.group("orig"):
            return index, "outlook-ja"
        if len(_read_block(lines, index).fields) < 2:
            continue  # "差出人: ..." in prose
        before = index - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        if before >= 0 and _SEPARATOR.match(lines[before]):
            return before, "outlook-ja"
        return index, "outlook-ja"
    return None


def _find_qq(lines: list[str]) -> tuple[int, dict[str, str]] | None:
    """(start line, result) of what quotequail found first (a forward, a reply or a
    quote: see result["type"]), or None when it found nothing."""
    window = [line[:QQ_LINE_CHARS] for line in lines[:QQ_LINES]]
    result = quotequail.unwrap("\n".join(window))
    if not result:
        return None
    nonblank = [k for k, line in enumerate(window) if line.strip()]
    if not nonblank:
        return None
    # quotequail gives the text above the block (stripped), not the line it starts at
    top = result.get("text_top") or ""
    after = nonblank[0] + len(top.split("\n")) if top else 0
    rest = [k for k in nonblank if k >= after]
    if not rest:
        return None
    return rest[0], result


def _unindent(lines: list[str], i: int) -> list[str]:
    """The run of ">"-quoted lines from ``lines[i]``, one level of quoting off."""
    out = []
    for line in lines[i:]:
        stripped = line.lstrip()
        if not stripped.startswith(">"):
            break
        stripped = stripped[1:]
        out.append(stripped[1:] if stripped.startswith(" ") else stripped)
    return out


def _is_field_start(line: str) -> bool:
    field = _field(line)
    return field is not None and field[1] is not None


def _original(lines: list[str], start: int) -> tuple[_Block, list[str], str]:
    """The block at ``start`` (its marker line, or its first field line), the lines
    its fields came from, and the marker line ("" when none)."""
    region, p = lines, start
    if region[p].lstrip().startswith(">"):
        region, p = _unindent(region, p), 0
    marker = ""
    if not _is_field_start(region[p]):
        marker = region[p].strip()
        p += 1
        # a marker wrapped over two lines ("---------- Forwarded" / "message ---")
        if p < len(region) and region[p].strip() and not _field(region[p]) and not region[p].lstrip().startswith(">"):
            if re.fullmatch(r"[\w ]*-{2,}", region[p].strip()):
                marker = f"{marker} {region[p].strip()}"
                p += 1
    while p < len(region) and not region[p].strip():
        p += 1
    if p < len(region) and region[p].lstrip().startswith(">"):  # Apple: marker, then a quoted block
        region, p = _unindent(region, p), 0
    return _read_block(region, p), region, marker


_GMAIL = re.compile(r"-{8,} ?(?:Forwarded message|転送メッセージ) ?-{8,}")
_THUNDERBIRD = re.compile(r"-{8} ?Forwarded Message ?-{8}")


def _method(marker: str, block: _Block) -> str:
    if any(name in _JA_NAMES for name in block.names):
        return "outlook-ja"
    if _GMAIL.fullmatch(marker):
        return "gmail"
    if _THUNDERBIRD.fullmatch(marker):
        return "thunderbird"
    if marker == "Begin forwarded message:":
        return "apple"
    if _SEPARATOR.match(marker) or (not marker and any(n.lower() == "sent" for n in block.names)):
        return "outlook"
    return "inline"


# --------------------------------------------------------------------------
# values

_MAILTO_BRACKET = re.compile(r"\[\s*mailto:\s*([^\]\s]+)\s*\]", re.IGNORECASE)
_MAILTO_ANGLE = re.compile(r"<\s*mailto:", re.IGNORECASE)
_ADDR = re.compile(r"[^\s@<>()\[\],;:\"]+@[^\s@<>()\[\],;:\"]+")
_ANGLE_ADDR = re.compile(r"^(.*?)<([^<>]*)>\s*$", re.DOTALL)


def _pairs(piece: str) -> list[tuple[str, str]]:
    """(name, address) of one list entry: "Name <a@b>" whatever the name holds
    (an Outlook "Stone, Charles"), else what the RFC 5322 parser makes of it."""
    found = _ANGLE_ADDR.match(piece)
    if found is not None:
        return [(found.group(1), found.group(2))]
    return email.utils.getaddresses([piece])


def parse_addresses(value: str) -> tuple[Address, ...]:
    """The mailboxes of an address list as a client wrote it; entries without a
    usable address are dropped."""
    value = clean(value).strip()
    if not value:
        return ()
    value = _MAILTO_BRACKET.sub(r"<\1>", value)
    value = _MAILTO_ANGLE.sub("<", value)
    if ";" in value:  # Outlook: "Stone, Charles <c@x>; Bob <b@x>"
        pieces = value.split(";")
    else:
        pieces = split_list(value)
    out: list[Address] = []
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        try:
            pairs = _pairs(piece)
        except Exception:
            continue
        for name, address in pairs:
            address = address.strip().strip("*").strip()
            if not _ADDR.fullmatch(address):
                continue
            name = " ".join(name.split()).strip("*'\" ").strip()
            if name == address:
                name = ""
            out.append(Address(name=clean(name), address=clean(address)))
    return tuple(out)


_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_ZONES = {
    "UT": 0, "UTC": 0, "GMT": 0, "Z": 0, "WET": 0, "WEST": 60, "BST": 60, "CET": 60, "MEZ": 60, "CEST": 120,
    "MESZ": 120, "EET": 120, "EEST": 180, "MSK": 180, "SGT": 480, "HKT": 480, "AWST": 480, "JST": 540,
    "KST": 540, "AEST": 600, "AEDT": 660, "NZST": 720, "NZDT": 780, "HST": -600, "AKST": -540, "AKDT": -480,
    "PST": -480, "PDT": -420, "MST": -420, "MDT": -360, "CST": -360, "CDT": -300, "EST": -300, "EDT": -240,
}
_ZONE_GMT = re.compile(r"\(?(?:GMT|UTC|UT)\s*([+-])\s*(\d{1,2})(?::?(\d{2}))?\)?$")
_ZONE_NUM = re.compile(r"([+-])(\d{2}):?(\d{2})(?:\s*\([^()]*\))?$")
_ZONE_NAME = re.compile(r"\(?\b([A-Z]{1,5})\)?$")
_DATE_JA = re.compile(r"(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*日")
_DATE_ISO = re.compile(r"\b(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})\b")
_DATE_MDY = re.compile(r"\b([A-Za-z]{3,9})\.? (\d{1,2})(?:st|nd|rd|th)? (\d{4})\b")
_DATE_DMY = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)?\.? ([A-Za-z]{3,9})\.? (\d{4})\b")
_TIME = re.compile(r"(午前|午後)?\s*(\d{1,2}):(\d{2})(?::(\d{2}))?"
                   r"(?:\s*([AaPp])\.?[Mm]\.?(?![A-Za-z]))?(?:\s*(午前|午後))?")


def _month(word: str) -> int | None:
    word = word.lower()
    if len(word) < 3:
        return None
    for number, name in enumerate(_MONTHS, 1):
        if name.startswith(word) or (word == "sept" and number == 9):
            return number
    return None


def parse_when(value: str) -> datetime | None:
    """A date as a mail client writes it in a forward block: aware UTC when a zone
    or offset is written, naive when none is, None when it cannot be read (an
    unknown zone name included).  Gmail "Mon, Nov 30, 2026 at 10:00 AM", Apple
    "November 30, 2026 at 10:00:00 GMT+9" / "30 November 2026 at 10:00:00 JST",
    RFC 5322 "Mon, 30 Nov 2026 10:00:00 +0900", Outlook "Monday, November 30, 2026
    10:00 AM", Japanese "2026年11月30日 月曜日 10:00" / "2026年11月30日(月) 10:00"."""
    text = " ".join(unicodedata.normalize("NFKC", value[:DATE_CHARS]).replace(",", " ").split())
    if not text:
        return None
    offset: int | None = None  # minutes east of UTC
    zone = _ZONE_GMT.search(text)
    if zone is not None:
        offset = int(zone.group(2)) * 60 + int(zone.group(3) or 0)
    else:
        zone = _ZONE_NUM.search(text)
        if zone is not None:
            offset = int(zone.group(2)) * 60 + int(zone.group(3))
        else:
            zone = _ZONE_NAME.search(text)
            if zone is not None and zone.group(1) in ("AM", "PM", "A", "P", "M"):
                zone = None
            if zone is not None:
                if zone.group(1) not in _ZONES:
                    return None  # a zone we cannot place: better no date than a wrong one
                offset = _ZONES[zone.group(1)]
    if zone is not None:
        if zone.re is not _ZONE_NAME and zone.group(1) == "-":
            offset = -offset  # type: ignore[operator]
        text = text[:zone.start()].strip()

    ymd: tuple[int, int, int] | None = None
    rest = ""
    for pattern in (_DATE_JA, _DATE_ISO):
        found = pattern.search(text)
        if found is not None:
            ymd = (int(found.group(1)), int(found.group(2)), int(found.group(3)))
            rest = text[found.end():]
            break
    if ymd is None:
        candidates = []
        for found in _DATE_MDY.finditer(text):
            month = _month(found.group(1))
            if month is not None:
                candidates.append((found.start(), (int(found.group(3)), month, int(found.group(2))), found.end()))
                break
        for found in _DATE_DMY.finditer(text):
            month = _month(found.group(2))
            if month is not None:
                candidates.append((found.start(), (int(found.group(3)), month, int(found.group(1))), found.end()))
                break
        if not candidates:
            return None
        _, ymd, end = min(candidates)
        rest = text[end:]
    clock = _TIME.search(rest)
    if clock is None:
        return None
    hour, minute, second = int(clock.group(2)), int(clock.group(3)), int(clock.group(4) or 0)
    half = clock.group(5) or clock.group(1) or clock.group(6)
    if half:
        if hour < 1 or hour > 12:
            return None
        pm = half in ("p", "P", "午後")
        hour = hour % 12 + (12 if pm else 0)
    if second == 60:
        second = 59  # a leap second
    try:
        when = datetime(ymd[0], ymd[1], ymd[2], hour, minute, second)
        if offset is None:
            return when
        return when.replace(tzinfo=timezone(timedelta(minutes=offset))).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------
# the entry point

def find(subject: str, text: str, attached: ParsedMessage | None,
         split: Callable[[str], TextSplit]) -> Forwarded | None:
    """The original of a forward: ``attached`` (the parsed first message/rfc822
    part) when given, else an inline forward block of ``text``; None when the
    message is no forward (or anything goes wrong).  ``split`` gives a text's new
    text (gateway.parse.newtext.split)."""
    try:
        if attached is not None:
            return _attached(text, attached, split)
        return _inline(subject or "", text or "", split)
    except Exception:
        return None


def _attached(text: str, attached: ParsedMessage, split: Callable[[str], TextSplit]) -> Forwarded:
    date_text = clean(attached.header("date") or "").strip()
    return Forwarded(
        method="attachment",
        from_=attached.from_,
        to=attached.to,
        cc=attached.cc,
        date=attached.date,
        date_text=date_text,
        subject=attached.subject,
        message_id=attached.message_id,
        text_body=attached.text_body,
        split=attached.split,
        note=clean(split(clean(text[:TEXT_MAX])).new_text),
        problem="" if attached.from_ is not None else "original sender not readable",
    )


def _inline(subject: str, text: str, split: Callable[[str], TextSplit]) -> Forwarded | None:
    text = text[:TEXT_MAX]
    if not text.strip():
        return None
    kind = _subject_kind(subject)
    if kind == "reply":
        return None
    if kind != "forward" and not _has_marker(text):
        return None
    text = clean(normalize_newlines(text))
    lines = text.split("\n")

    ja = _find_ja(text, lines)
    qq = _find_qq(lines)
    extra: dict[str, str] = {}
    if qq is not None and (ja is None or qq[0] < ja[0]):
        start, extra = qq
        if extra.get("type") != "forward":
            return None  # a reply or a quote comes first
        method = ""
    elif ja is not None:
        start, method = ja
    else:
        return None

    block, region, marker = _original(lines, start)
    if not method:
        method = _method(marker, block)
    fields = dict(block.fields)
    for key in ("from", "to", "cc", "date", "subject"):
        if key not in fields and extra.get(key):
            fields[key] = extra[key]

    # dedented: a text rendering of HTML indents nested blocks
    body = textwrap.dedent("\n".join(region[block.end:])).strip()
    note = textwrap.dedent("\n".join(lines[:start])).strip()
    senders = parse_addresses(fields.get("from", ""))
    date_text = clean(fields.get("date", "").strip())
    return Forwarded(
        method=method,
        from_=senders[0] if senders else None,
        to=parse_addresses(fields.get("to", "")),
        cc=parse_addresses(fields.get("cc", "")),
        date=parse_when(date_text) if date_text else None,
        date_text=date_text,
        subject=clean(fields.get("subject", "").strip()),
        message_id=None,
        text_body=body,
        split=split(body),
        note=clean(split(note).new_text),
        problem="" if senders else "original sender not readable",
    )
