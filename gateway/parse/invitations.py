"""Meeting invitations: a ``text/calendar`` part (iCalendar, RFC 5545) read into an
:class:`gateway.message.Invitation`.

The part is decoded like any text body (its charset, else UTF-8) and parsed with
``icalendar``, the VEVENTs after the first cut off beforehand (:func:`_first_event`).
The first VEVENT is read: SUMMARY, DTSTART/DTEND, ORGANIZER, the ATTENDEEs
(address, CN, PARTSTAT), LOCATION and UID, with the calendar's METHOD (REQUEST,
REPLY, CANCEL, PUBLISH...), upper-cased.  Times: a zoned value (a TZID, with or
without its VTIMEZONE; icalendar maps Windows names such as "Tokyo Standard Time"
to IANA zones) or a UTC one becomes an aware UTC datetime; a floating value (no
zone, or a TZID nobody can place) stays naive; a DATE stays a ``date`` (all-day).
A TZID that names no zone but writes its offset, as Outlook's
"(UTC+09:00) Osaka, Sapporo, Tokyo", is placed by that offset.

:func:`read` never raises: no VEVENT, not iCalendar, or more than
:data:`CALENDAR_MAX` bytes give None.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

import icalendar

from gateway.message import Attendee, Invitation
from gateway.parse.charsets import decode_text
from gateway.parse.text import clean

__all__ = ["read"]

# Larger calendar parts are not read (an invitation is a few KB).
CALENDAR_MAX = 1024 * 1024

_TZID_OFFSET = re.compile(r"\((?:UTC|GMT)\s*([+-])(\d{1,2}):?(\d{2})\)")
_MAILTO = re.compile(r"^\s*mailto:", re.IGNORECASE)


def read(payload: bytes, charset: str | None) -> Invitation | None:
    """The first event of a text/calendar part, or None."""
    try:
        if not payload or len(payload) > CALENDAR_MAX:
            return None
        return _read(decode_text(bytes(payload), charset or "utf-8"))
    except Exception:
        return None


def _read(text: str) -> Invitation | None:
    if "BEGIN:VCALENDAR" not in text.upper():
        return None
    event = None
    calendar = None
    for candidate in icalendar.Calendar.from_ical(_first_event(text), multiple=True):
        events = candidate.walk("VEVENT")
        if events:
            calendar, event = candidate, events[0]
            break
    if event is None or calendar is None:
        return None
    attendees = event.get("ATTENDEE")
    if attendees is None:
        attendees = []
    elif not isinstance(attendees, list):
        attendees = [attendees]
    people = []
    for attendee in attendees:
        try:
            address = _address(attendee)
            if address:
                people.append(Attendee(address=address, name=_param(attendee, "CN"),
                                       status=_param(attendee, "PARTSTAT").upper()))
        except Exception:
            continue  # one broken attendee does not lose the invitation
    organizer = _address(event.get("ORGANIZER")) if event.get("ORGANIZER") is not None else ""
    return Invitation(
        method=_text(calendar.get("METHOD")).upper(),
        summary=_text(event.get("SUMMARY")),
        start=_when(event.get("DTSTART")),
        end=_when(event.get("DTEND")),
        organizer=organizer or None,
        attendees=tuple(people),
        location=_text(event.get("LOCATION")),
        uid=_text(event.get("UID")),
    )


def _first_event(text: str) -> str:
    """The calendar without its VEVENTs after the first: icalendar parses about
    0.5 MB/s, and a recurring meeting's request carries an event per exception.
    Everything else (the VTIMEZONEs wherever they are) is kept."""
    if text.upper().count("BEGIN:VEVENT") < 2:
        return text
    kept: list[str] = []
    state = "before"  # before -> in (the first event) -> after; "skip" inside a later one
    for line in text.splitlines(keepends=True):
        marker = line.strip().upper()
        if state == "skip":
            if marker == "END:VEVENT":
                state = "after"
            continue
        if marker == "BEGIN:VEVENT":
            if state == "after":
                state = "skip"
                continue
            state = "in"
        elif marker == "END:VEVENT" and state == "in":
            state = "after"
        kept.append(line)
    return "".join(kept)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # a property given twice: the first
        value = value[0] if value else ""
    return clean(str(value)).strip()


def _address(value: Any) -> str:
    """A CAL-ADDRESS without its "mailto:" (case kept)."""
    return _MAILTO.sub("", _text(value)).strip()


def _param(value: Any, name: str) -> str:
    params = getattr(value, "params", None)
    if not params:
        return ""
    found = params.get(name)
    if isinstance(found, (list, tuple)):
        found = found[0] if found else ""
    return clean(str(found or "")).strip().strip('"').strip()


def _when(value: Any) -> datetime | date | None:
    """A DTSTART/DTEND: aware UTC, naive (floating) or a date; None when absent or
    broken (icalendar keeps an unparseable value as a property that raises on use)."""
    try:
        return _moment(value)
    except Exception:
        return None


def _moment(value: Any) -> datetime | date | None:
    if isinstance(value, list):
        value = value[0] if value else None
    moment = getattr(value, "dt", None)
    if isinstance(moment, datetime):
        if moment.tzinfo is None or moment.utcoffset() is None:
            offset = _TZID_OFFSET.search(_param(value, "TZID"))
            if offset is None:
                return moment.replace(tzinfo=None)  # floating: the reader's local time
            minutes = int(offset.group(2)) * 60 + int(offset.group(3))
            if offset.group(1) == "-":
                minutes = -minutes
            moment = moment.replace(tzinfo=timezone(timedelta(minutes=minutes)))
        return moment.astimezone(timezone.utc)
    if isinstance(moment, date):
        return moment
    return None
