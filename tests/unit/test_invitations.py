"""Unit tests for gateway.parse.invitations: text/calendar parts read into Invitations."""

from __future__ import annotations

import time
from datetime import date, datetime, timezone

import pytest

from gateway.message import Attendee, Invitation
from gateway.parse.invitations import CALENDAR_MAX, read


def ics(text: str) -> bytes:
    """iCalendar lines end with CRLF."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


# As Outlook / Exchange send a meeting request: a Windows zone name with its VTIMEZONE.
OUTLOOK_REQUEST = ics("""\
BEGIN:VCALENDAR
METHOD:REQUEST
PRODID:Microsoft Exchange Server 2010
VERSION:2.0
BEGIN:VTIMEZONE
TZID:Tokyo Standard Time
BEGIN:STANDARD
DTSTART:16010101T000000
TZOFFSETFROM:+0900
TZOFFSETTO:+0900
END:STANDARD
BEGIN:DAYLIGHT
DTSTART:16010101T000000
TZOFFSETFROM:+0900
TZOFFSETTO:+0900
END:DAYLIGHT
END:VTIMEZONE
BEGIN:VEVENT
ORGANIZER;CN=Charles Stone:mailto:CharlesS@zillum.com
ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=Alice Exam
 ple:mailto:alice@example.com
ATTENDEE;ROLE=OPT-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN="Yamada, T
 aro":MAILTO:yamada@customer.example
ATTENDEE;CUTYPE=RESOURCE;ROLE=NON-PARTICIPANT;RSVP=FALSE:mailto:room-a@zill
 um.com
DESCRIPTION;LANGUAGE=ja-JP:お見積りの打ち合わせです。\\n
UID:040000008200E00074C5B7101A82E0080000000010A5F5D2B2C6DA01000000000000000
 010000000B5E8F5F8A2D3E14E9F0C1C7B0E3B6A5C
SUMMARY;LANGUAGE=ja-JP:見積もり打ち合わせ (2027年度)
DTSTART;TZID=Tokyo Standard Time:20261130T100000
DTEND;TZID=Tokyo Standard Time:20261130T113000
CLASS:PUBLIC
PRIORITY:5
DTSTAMP:20261120T010000Z
TRANSP:OPAQUE
STATUS:CONFIRMED
SEQUENCE:0
LOCATION;LANGUAGE=ja-JP:会議室A\\, 本社5F
END:VEVENT
END:VCALENDAR
""")


def test_outlook_request() -> None:
    inv = read(OUTLOOK_REQUEST, "utf-8")
    assert inv == Invitation(
        method="REQUEST",
        summary="見積もり打ち合わせ (2027年度)",
        start=datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc),
        end=datetime(2026, 11, 30, 2, 30, tzinfo=timezone.utc),
        organizer="CharlesS@zillum.com",
        attendees=(
            Attendee(address="alice@example.com", name="Alice Example", status="NEEDS-ACTION"),
            Attendee(address="yamada@customer.example", name="Yamada, Taro", status="NEEDS-ACTION"),
            Attendee(address="room-a@zillum.com", name="", status=""),
        ),
        location="会議室A, 本社5F",
        uid="040000008200E00074C5B7101A82E0080000000010A5F5D2B2C6DA01000000000000000"
            "010000000B5E8F5F8A2D3E14E9F0C1C7B0E3B6A5C",
    )
    assert inv.start.tzinfo == timezone.utc  # type: ignore[union-attr]


def test_iana_zone_without_charset() -> None:
    data = ics("""\
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//Google Inc//Google Calendar 70.9054//EN
METHOD:request
BEGIN:VTIMEZONE
TZID:Asia/Tokyo
BEGIN:STANDARD
DTSTART:19700101T000000
TZOFFSETFROM:+0900
TZOFFSETTO:+0900
TZNAME:JST
END:STANDARD
END:VTIMEZONE
BEGIN:VEVENT
DTSTART;TZID=Asia/Tokyo:20261130T180000
DTEND;TZID=Asia/Tokyo:20261130T190000
ORGANIZER;CN=山田 太郎:mailto:yamada@customer.example
ATTENDEE;CUTYPE=INDIVIDUAL;ROLE=REQ-PARTICIPANT;PARTSTAT=ACCEPTED;CN=山田 太郎:
 mailto:yamada@customer.example
UID:abc123@google.com
SUMMARY:定例会
END:VEVENT
END:VCALENDAR
""")
    inv = read(data, None)
    assert inv == Invitation(
        method="REQUEST",
        summary="定例会",
        start=datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc),
        end=datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc),
        organizer="yamada@customer.example",
        attendees=(Attendee(address="yamada@customer.example", name="山田 太郎", status="ACCEPTED"),),
        location="",
        uid="abc123@google.com",
    )
    assert inv.start.tzinfo == timezone.utc and inv.end.tzinfo == timezone.utc  # type: ignore[union-attr]


def test_reply_accepted() -> None:
    data = ics("""\
BEGIN:VCALENDAR
METHOD:REPLY
PRODID:Microsoft Exchange Server 2010
VERSION:2.0
BEGIN:VEVENT
ATTENDEE;PARTSTAT=ACCEPTED;CN=Alice Example:mailto:alice@example.com
ORGANIZER;CN=Charles Stone:mailto:charless@zillum.com
SUMMARY:Accepted: Quote review
DTSTART:20261130T010000Z
DTEND:20261130T020000Z
UID:quote-review-1@zillum.com
END:VEVENT
END:VCALENDAR
""")
    inv = read(data, "us-ascii")
    assert inv == Invitation(
        method="REPLY",
        summary="Accepted: Quote review",
        start=datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc),
        end=datetime(2026, 11, 30, 2, 0, tzinfo=timezone.utc),
        organizer="charless@zillum.com",
        attendees=(Attendee(address="alice@example.com", name="Alice Example", status="ACCEPTED"),),
        location="",
        uid="quote-review-1@zillum.com",
    )
    assert inv.start.tzinfo == timezone.utc  # type: ignore[union-attr]


def test_cancel_shift_jis_floating() -> None:
    data = ics("""\
BEGIN:VCALENDAR
METHOD:CANCEL
VERSION:2.0
BEGIN:VEVENT
ORGANIZER:mailto:charless@zillum.com
ATTENDEE;PARTSTAT=needs-action:mailto:alice@example.com
SUMMARY:キャンセル: 打ち合わせ
DTSTART:20261130T100000
DTEND:20261130T110000
LOCATION:オンライン
UID:meeting-7@zillum.com
STATUS:CANCELLED
END:VEVENT
END:VCALENDAR
""").decode("utf-8").encode("cp932")
    inv = read(data, "Shift_JIS")
    assert inv == Invitation(
        method="CANCEL",
        summary="キャンセル: 打ち合わせ",
        start=datetime(2026, 11, 30, 10, 0),  # floating: stays naive
        end=datetime(2026, 11, 30, 11, 0),
        organizer="charless@zillum.com",
        attendees=(Attendee(address="alice@example.com", name="", status="NEEDS-ACTION"),),
        location="オンライン",
        uid="meeting-7@zillum.com",
    )
    assert inv.start.tzinfo is None  # type: ignore[union-attr]


def test_all_day_event() -> None:
    data = ics("""\
BEGIN:VCALENDAR
METHOD:PUBLISH
VERSION:2.0
BEGIN:VEVENT
DTSTART;VALUE=DATE:20261130
DTEND;VALUE=DATE:20261201
SUMMARY:Office closed
UID:closed-2026-11-30@zillum.com
END:VEVENT
END:VCALENDAR
""")
    inv = read(data, "utf-8")
    assert inv == Invitation(
        method="PUBLISH",
        summary="Office closed",
        start=date(2026, 11, 30),
        end=date(2026, 12, 1),
        organizer=None,
        attendees=(),
        location="",
        uid="closed-2026-11-30@zillum.com",
    )
    assert type(inv.start) is date  # type: ignore[union-attr]


def test_outlook_offset_tzid_without_vtimezone() -> None:
    data = ics("""\
BEGIN:VCALENDAR
VERSION:2.0
BEGIN:VEVENT
DTSTART;TZID="(UTC+09:00) Osaka, Sapporo, Tokyo":20261130T100000
SUMMARY:x
END:VEVENT
END:VCALENDAR
""")
    inv = read(data, "utf-8")
    assert inv is not None
    assert (inv.method, inv.start, inv.end, inv.organizer) == (
        "", datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc), None, None)
    assert inv.start.tzinfo == timezone.utc  # type: ignore[union-attr]


@pytest.mark.parametrize("payload", [
    b"\x00\x01\x02garbage\xff\xfe",
    b"",
    b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n",  # no VEVENT
    b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:x\r\n",  # cut off
    b"Subject: not a calendar\r\n\r\nhello\r\n",
    ics("BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY:" + "x" * CALENDAR_MAX + "\nEND:VEVENT\nEND:VCALENDAR\n"),
])
def test_not_a_calendar(payload: bytes) -> None:
    assert read(payload, "utf-8") is None


def test_broken_values() -> None:
    data = ics("""\
BEGIN:VCALENDAR
METHOD:REQUEST
BEGIN:VEVENT
DTSTART:tomorrow
SUMMARY:nul\x00byte
ATTENDEE:mailto:
END:VEVENT
END:VCALENDAR
""")
    inv = read(data, "utf-8")
    assert inv is not None
    assert (inv.method, inv.summary, inv.start, inv.attendees) == ("REQUEST", "nulbyte", None, ())


def test_recurring_request_first_event() -> None:
    """A series with an exception: the first VEVENT is read; a VTIMEZONE written after
    the events still places its times."""
    data = ics("""\
BEGIN:VCALENDAR
METHOD:REQUEST
VERSION:2.0
BEGIN:VEVENT
RRULE:FREQ=WEEKLY;BYDAY=MO
DTSTART;TZID=India Office:20261130T100000
DTEND;TZID=India Office:20261130T103000
SUMMARY:Weekly sync
UID:series-1@zillum.com
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT15M
END:VALARM
END:VEVENT
BEGIN:VEVENT
RECURRENCE-ID;TZID=India Office:20261207T100000
DTSTART;TZID=India Office:20261207T110000
DTEND;TZID=India Office:20261207T113000
SUMMARY:Weekly sync (moved)
UID:series-1@zillum.com
END:VEVENT
BEGIN:VTIMEZONE
TZID:India Office
BEGIN:STANDARD
DTSTART:16010101T000000
TZOFFSETFROM:+0530
TZOFFSETTO:+0530
END:STANDARD
END:VTIMEZONE
END:VCALENDAR
""")
    inv = read(data, "utf-8")
    assert inv == Invitation(
        method="REQUEST",
        summary="Weekly sync",
        start=datetime(2026, 11, 30, 4, 30, tzinfo=timezone.utc),
        end=datetime(2026, 11, 30, 5, 0, tzinfo=timezone.utc),
        organizer=None,
        attendees=(),
        location="",
        uid="series-1@zillum.com",
    )
    assert inv.start.tzinfo == timezone.utc  # type: ignore[union-attr]


def test_many_events_are_quick() -> None:
    """icalendar parses ~0.5 MB/s: the events after the first are cut off before."""
    event = ("BEGIN:VEVENT\r\nDTSTART:20261130T010000Z\r\nSUMMARY:{n}\r\n"
             "ATTENDEE;CN=A;PARTSTAT=ACCEPTED:mailto:a@example.com\r\nUID:u{n}\r\nEND:VEVENT\r\n")
    body = "".join(event.format(n=n) for n in range(7000))
    data = f"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\n{body}END:VCALENDAR\r\n".encode("ascii")
    assert 900_000 < len(data) <= CALENDAR_MAX
    started = time.perf_counter()
    inv = read(data, "utf-8")
    elapsed = time.perf_counter() - started
    assert inv is not None and (inv.summary, inv.uid) == ("0", "u0")
    assert elapsed < 0.5, elapsed
