"""Unit tests for gateway.parse.forwards: forwards recognised and their originals read,
one client family at a time, with the body as that client writes it."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from gateway.message import Address, TextSplit
from gateway.parse import parse_message
from gateway.parse.forwards import find, parse_addresses, parse_when


def stub_split(text: str) -> TextSplit:
    """The new text of a text: here, the text itself (newtext.split is not under test)."""
    return TextSplit(text.strip())


CHARLES = Address("Charles Stone", "charless@zillum.com")
ALICE = Address("Alice Example", "alice@example.com")
CAROL = Address("Carol Jones", "carol@example.com")
YAMADA = Address("山田 太郎", "yamada@customer.example")
SATO = Address("佐藤 花子", "sato@example.com")
ORIGINAL = "Dear Alice:\n\nHere is the quote we discussed.\n\nCharles"
ORIGINAL_JA = "佐藤様\n\nいつもお世話になっております。\nお見積りをお送りします。\n\n山田"


def test_gmail() -> None:
    text = (
        "Please see the quote below.\n"
        "\n"
        "---------- Forwarded message ---------\n"
        "From: Charles Stone <charless@zillum.com>\n"
        "Date: Mon, Nov 30, 2026 at 10:00\u202fAM\n"
        "Subject: Quote for the 2027 renewal\n"
        "To: Alice Example <alice@example.com>, <bob@example.com>\n"
        "Cc: Carol Jones <carol@example.com>\n"
        "\n"
        "\n"
        f"{ORIGINAL}\n"
    )
    fw = find("Fwd: Quote for the 2027 renewal", text, None, stub_split)
    assert fw is not None
    assert fw.method == "gmail"
    assert fw.from_ == CHARLES
    assert fw.to == (ALICE, Address("", "bob@example.com"))
    assert fw.cc == (CAROL,)
    assert fw.date == datetime(2026, 11, 30, 10, 0)  # no zone written: naive
    assert fw.date.tzinfo is None
    assert fw.date_text == "Mon, Nov 30, 2026 at 10:00\u202fAM"
    assert fw.subject == "Quote for the 2027 renewal"
    assert fw.message_id is None
    # quotequail alone drops "Dear Alice:" (it reads it as one more header field)
    assert fw.text_body == ORIGINAL
    assert fw.split == TextSplit(ORIGINAL)
    assert fw.note == "Please see the quote below."
    assert fw.problem == ""


def test_gmail_japanese() -> None:
    text = (
        "ご確認をお願いします。\n"
        "\n"
        "---------- 転送メッセージ ---------\n"
        "From: 山田 太郎 <yamada@customer.example>\n"
        "Date: 2026年11月30日(月) 10:00\n"
        "Subject: お見積りのご依頼\n"
        "To: <sato@example.com>\n"
        "\n"
        "\n"
        f"{ORIGINAL_JA}\n"
    )
    fw = find("Fwd: お見積りのご依頼", text, None, stub_split)
    assert fw is not None
    assert fw.method == "gmail"
    assert fw.from_ == YAMADA
    assert fw.to == (Address("", "sato@example.com"),)
    assert fw.cc == ()
    assert fw.date == datetime(2026, 11, 30, 10, 0)
    assert fw.date_text == "2026年11月30日(月) 10:00"
    assert fw.subject == "お見積りのご依頼"
    assert fw.text_body == ORIGINAL_JA
    assert fw.split == TextSplit(ORIGINAL_JA)
    assert fw.note == "ご確認をお願いします。"  # without the marker line
    assert fw.problem == ""


def test_gmail_marker_without_forward_subject() -> None:
    text = (
        "For the file.\n\n---------- Forwarded message ---------\n"
        "From: Charles Stone <charless@zillum.com>\nDate: Mon, Nov 30, 2026 at 3:15 PM\n"
        "Subject: Quote\nTo: Alice Example <alice@example.com>\n\n\nHello\n"
    )
    fw = find("Quote", text, None, stub_split)
    assert fw is not None
    assert (fw.method, fw.from_, fw.date, fw.text_body, fw.note) == (
        "gmail", CHARLES, datetime(2026, 11, 30, 15, 15), "Hello", "For the file.")


def test_outlook() -> None:
    text = (
        "Alice, can you take this one?\n"
        "\n"
        "________________________________\n"
        "From: Charles Stone <charless@zillum.com>\n"
        "Sent: Monday, November 30, 2026 10:00 AM\n"
        "To: Alice Example <alice@example.com>; Stone, Bob <bob@example.com>\n"
        "Cc: Carol Jones <carol@example.com>\n"
        "Subject: Quote for the 2027 renewal\n"
        "\n"
        f"{ORIGINAL}\n"
    )
    fw = find("FW: Quote for the 2027 renewal", text, None, stub_split)
    assert fw is not None
    assert fw.method == "outlook"
    assert fw.from_ == CHARLES
    assert fw.to == (ALICE, Address("Stone, Bob", "bob@example.com"))  # Outlook separates with ";"
    assert fw.cc == (CAROL,)
    assert fw.date == datetime(2026, 11, 30, 10, 0)
    assert fw.date_text == "Monday, November 30, 2026 10:00 AM"
    assert fw.subject == "Quote for the 2027 renewal"
    assert fw.message_id is None
    assert fw.text_body == ORIGINAL
    assert fw.split == TextSplit(ORIGINAL)
    assert fw.note == "Alice, can you take this one?"
    assert fw.problem == ""


def test_outlook_classic_mailto() -> None:
    text = (
        "See below.\n"
        "\n"
        "-----Original Message-----\n"
        "From: Charles Stone [mailto:charless@zillum.com] \n"
        "Sent: Monday, November 30, 2026 4:30 PM\n"
        "To: Alice Example; Bob Smith <bob@example.com>\n"
        "Subject: Quote\n"
        "\n"
        "To: all staff\n"
        "The quote is attached.\n"
    )
    fw = find("FW: Quote", text, None, stub_split)
    assert fw is not None
    assert fw.method == "outlook"
    assert fw.from_ == CHARLES
    assert fw.to == (Address("Bob Smith", "bob@example.com"),)  # "Alice Example" has no address: dropped
    assert fw.date == datetime(2026, 11, 30, 16, 30)
    assert fw.subject == "Quote"
    assert fw.text_body == "To: all staff\nThe quote is attached."  # not read as a field
    assert fw.note == "See below."


def test_outlook_japanese() -> None:
    text = (
        "佐藤さん、対応をお願いします。\n"
        "送信者: 営業部の山田さんです。\n"  # a line like a field in the note: no block
        "\n"
        "________________________________\n"
        "差出人: 山田 太郎 <yamada@customer.example>\n"
        "送信日時: 2026年11月30日 10:00\n"
        "宛先: 佐藤 花子 <sato@example.com>\n"
        "CC: 鈴木 一郎 <suzuki@example.com>; tanaka@example.com\n"
        "件名: お見積りのご依頼\n"
        "\n"
        f"{ORIGINAL_JA}\n"
    )
    fw = find("FW: お見積りのご依頼", text, None, stub_split)
    assert fw is not None
    assert fw.method == "outlook-ja"
    assert fw.from_ == YAMADA
    assert fw.to == (SATO,)
    assert fw.cc == (Address("鈴木 一郎", "suzuki@example.com"), Address("", "tanaka@example.com"))
    assert fw.date == datetime(2026, 11, 30, 10, 0)
    assert fw.date_text == "2026年11月30日 10:00"
    assert fw.subject == "お見積りのご依頼"
    assert fw.message_id is None
    assert fw.text_body == ORIGINAL_JA
    assert fw.split == TextSplit(ORIGINAL_JA)
    assert fw.note == "佐藤さん、対応をお願いします。\n送信者: 営業部の山田さんです。"
    assert fw.problem == ""


def test_outlook_japanese_original_message_fullwidth() -> None:
    text = (
        "ご確認ください。\n"
        "\n"
        "-----元のメッセージ-----\n"
        "送信者： 山田 太郎 <yamada@customer.example>\n"
        "送信日時： 2026年11月30日 月曜日 17:45\n"
        "宛先： sato@example.com\n"
        "件名： お見積りのご依頼\n"
        "\n"
        "本文です。\n"
    )
    fw = find("ＦＷ：お見積りのご依頼", text, None, stub_split)
    assert fw is not None
    assert (fw.method, fw.from_, fw.to) == ("outlook-ja", YAMADA, (Address("", "sato@example.com"),))
    assert fw.date == datetime(2026, 11, 30, 17, 45)
    assert (fw.subject, fw.text_body, fw.note) == ("お見積りのご依頼", "本文です。", "ご確認ください。")


def test_apple_mail() -> None:
    text = (
        "FYI\n"
        "\n"
        "Begin forwarded message:\n"
        "\n"
        "From: Charles Stone <charless@zillum.com>\n"
        "Subject: Quote for the 2027 renewal\n"
        "Date: November 30, 2026 at 10:00:00 GMT+9\n"
        "To: Alice Example <alice@example.com>\n"
        "Cc: Carol Jones <carol@example.com>\n"
        "\n"
        f"{ORIGINAL}\n"
    )
    fw = find("Fwd: Quote for the 2027 renewal", text, None, stub_split)
    assert fw is not None
    assert fw.method == "apple"
    assert fw.from_ == CHARLES
    assert fw.to == (ALICE,)
    assert fw.cc == (CAROL,)
    assert fw.date == datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc)  # GMT+9: aware, in UTC
    assert fw.date.tzinfo == timezone.utc
    assert fw.date_text == "November 30, 2026 at 10:00:00 GMT+9"
    assert fw.subject == "Quote for the 2027 renewal"
    assert fw.text_body == ORIGINAL
    assert fw.split == TextSplit(ORIGINAL)
    assert fw.note == "FYI"
    assert fw.problem == ""


def test_thunderbird() -> None:
    text = (
        "Please handle.\n"
        "\n"
        "\n"
        "-------- Forwarded Message --------\n"
        "Subject: \tQuote for the 2027 renewal\n"
        "Date: \tMon, 30 Nov 2026 10:00:00 +0900\n"
        "From: \tCharles Stone <charless@zillum.com>\n"
        "To: \tAlice Example <alice@example.com>\n"
        "CC: \tCarol Jones <carol@example.com>\n"
        "\n"
        "\n"
        "\n"
        f"{ORIGINAL}\n"
    )
    fw = find("Fwd: Quote for the 2027 renewal", text, None, stub_split)
    assert fw is not None
    assert fw.method == "thunderbird"
    assert fw.from_ == CHARLES
    assert fw.to == (ALICE,)
    assert fw.cc == (CAROL,)
    assert fw.date == datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc)
    assert fw.date.tzinfo == timezone.utc
    assert fw.date_text == "Mon, 30 Nov 2026 10:00:00 +0900"
    assert fw.subject == "Quote for the 2027 renewal"
    assert fw.text_body == ORIGINAL
    assert fw.split == TextSplit(ORIGINAL)
    assert fw.note == "Please handle."
    assert fw.problem == ""


def test_html_rendering_indented() -> None:
    """An HTML-only forward arrives as its text rendering, nested blocks indented."""
    text = (
        "  FYI\n\n      ---------- Forwarded message ---------\n"
        "      From: Charles Stone <charless@zillum.com>\n"
        "      Date: Mon, Nov 30, 2026 at 10:00 AM\n"
        "      Subject: Quote\n"
        "      To: Alice Example <alice@example.com>\n\n\n"
        "      Hello Alice,\n      the quote.\n"
    )
    fw = find("Fwd: Quote", text, None, stub_split)
    assert fw is not None
    assert (fw.method, fw.from_, fw.to, fw.subject) == ("gmail", CHARLES, (ALICE,), "Quote")
    assert (fw.text_body, fw.note) == ("Hello Alice,\nthe quote.", "FYI")


def test_attachment() -> None:
    inner = (
        "From: Charles Stone <charless@zillum.com>\r\n"
        "To: Alice Example <alice@example.com>\r\n"
        "Cc: Carol Jones <carol@example.com>\r\n"
        "Subject: Quote for the 2027 renewal\r\n"
        "Date: Mon, 30 Nov 2026 10:00:00 +0900\r\n"
        "Message-ID: <quote-2027@zillum.com>\r\n"
        "\r\n"
        "Dear Alice,\r\nhere is the quote.\r\n"
    ).encode("ascii")
    attached = parse_message(inner)
    fw = find("Fwd: Quote for the 2027 renewal", "See the attached original.\n", attached, stub_split)
    assert fw is not None
    assert fw.method == "attachment"
    assert fw.from_ == CHARLES
    assert fw.to == (ALICE,)
    assert fw.cc == (CAROL,)
    assert fw.date == datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc)
    assert fw.date_text == "Mon, 30 Nov 2026 10:00:00 +0900"
    assert fw.subject == "Quote for the 2027 renewal"
    assert fw.message_id == "quote-2027@zillum.com"
    assert fw.text_body == attached.text_body
    assert "here is the quote." in fw.text_body
    assert fw.split == attached.split
    assert fw.note == "See the attached original."
    assert fw.problem == ""


def test_reply_with_outlook_block() -> None:
    text = (
        "Thanks, I will send it tomorrow.\n"
        "\n"
        "________________________________\n"
        "From: Charles Stone <charless@zillum.com>\n"
        "Sent: Monday, November 30, 2026 10:00 AM\n"
        "To: Alice Example <alice@example.com>\n"
        "Subject: Quote\n"
        "\n"
        "Could you send the quote?\n"
    )
    assert find("RE: Quote", text, None, stub_split) is None
    # the block alone under a subject that is no forward: a reply's quote too
    assert find("Quote", text.replace("________________________________", "-----Original Message-----"),
                None, stub_split) is None
    # a reply to a forward, quoting its marker
    assert find("Re: Fwd: Quote", "Thanks\n\n---------- Forwarded message ---------\n"
                "From: Charles Stone <charless@zillum.com>\nSubject: Quote\n\nbody\n", None, stub_split) is None


def test_reply_under_forward_subject() -> None:
    text = "Hi\n\nOn Mon, Nov 30, 2026 at 10:00 AM Charles Stone <charless@zillum.com> wrote:\n> a\n> b\n> c\n"
    assert find("Fwd: Quote", text, None, stub_split) is None


def test_ordinary_mail() -> None:
    text = "Hi Alice,\n\nthe forwarded message you asked about is in the shared folder.\nDate: Monday\nTo: all\n"
    assert find("Meeting on Monday", text, None, stub_split) is None
    assert find("", "", None, stub_split) is None


def test_sender_without_address() -> None:
    text = (
        "See below.\n\n________________________________\n"
        "From: Charles Stone\n"
        "Sent: Monday, November 30, 2026 10:00 AM\n"
        "To: Alice Example <alice@example.com>\n"
        "Subject: Quote\n\nbody\n"
    )
    fw = find("FW: Quote", text, None, stub_split)
    assert fw is not None
    assert fw.from_ is None
    assert fw.problem == "original sender not readable"
    assert (fw.to, fw.subject, fw.text_body) == ((ALICE,), "Quote", "body")


def test_unreadable_date_is_no_problem() -> None:
    text = ("---------- Forwarded message ---------\nFrom: Charles Stone <charless@zillum.com>\n"
            "Date: sometime last week\nSubject: Quote\n\nbody\n")
    fw = find("Fwd: Quote", text, None, stub_split)
    assert fw is not None
    assert (fw.date, fw.date_text, fw.problem, fw.note) == (None, "sometime last week", "", "")


def test_split_raising_gives_none() -> None:
    def broken(text: str) -> TextSplit:
        raise RuntimeError("boom")

    text = "---------- Forwarded message ---------\nFrom: Charles Stone <charless@zillum.com>\n\nbody\n"
    assert find("Fwd: x", text, None, broken) is None


def test_large_text_is_quick() -> None:
    head = ("Note\n\n---------- Forwarded message ---------\nFrom: Charles Stone <charless@zillum.com>\n"
            "Date: Mon, Nov 30, 2026 at 10:00 AM\nSubject: Big\nTo: alice@example.com\n\n")
    big = head + ("word " * 20 + "\n") * 30_000  # ~3 MB
    assert len(big) > 3_000_000
    hostile = [
        "x: y\n" * 600_000,  # header-like lines: quotequail's scan is quadratic in them
        "差出人: x\n\n" * 300_000,
        "> q\n" * 750_000,
        "a" * 3_000_000,
    ]
    started = time.perf_counter()
    fw = find("Fwd: Big", big, None, stub_split)
    for text in hostile:
        find("Fwd: x", text, None, stub_split)
        find("Quote", text, None, stub_split)
    elapsed = time.perf_counter() - started
    assert fw is not None and fw.from_ == CHARLES and fw.subject == "Big"
    assert len(fw.text_body) < 256 * 1024  # only the first 256 KB are looked at
    assert elapsed < 2.0, elapsed


@pytest.mark.parametrize(("value", "expected"), [
    ("Mon, Nov 30, 2026 at 10:00 AM", datetime(2026, 11, 30, 10, 0)),  # Gmail
    ("Mon, Nov 30, 2026 at 12:05\u202fPM", datetime(2026, 11, 30, 12, 5)),
    ("Mon, 30 Nov 2026 at 00:30", datetime(2026, 11, 30, 0, 30)),  # Gmail, UK English
    ("November 30, 2026 at 10:00:00 GMT+9", datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc)),  # Apple
    ("30 November 2026 at 10:00:00 JST", datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc)),
    ("November 30, 2026 at 10:00:00 PM EST", datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)),
    ("Mon, 30 Nov 2026 10:00:00 +0900", datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc)),  # Thunderbird
    ("Mon, 30 Nov 2026 10:00:00 -0530 (XYZ)", datetime(2026, 11, 30, 15, 30, tzinfo=timezone.utc)),
    ("Monday, November 30, 2026 10:00 AM", datetime(2026, 11, 30, 10, 0)),  # Outlook
    ("Monday, November 30, 2026 12:00 AM", datetime(2026, 11, 30, 0, 0)),
    ("2026年11月30日 10:00", datetime(2026, 11, 30, 10, 0)),  # Japanese Outlook
    ("2026年11月30日 月曜日 10:00", datetime(2026, 11, 30, 10, 0)),
    ("2026年11月30日(月) 10:00", datetime(2026, 11, 30, 10, 0)),  # Japanese Gmail
    ("2026年11月30日(月) 午後3:05", datetime(2026, 11, 30, 15, 5)),
    ("２０２６年１１月３０日（月）　１０：００", datetime(2026, 11, 30, 10, 0)),
    ("Nov 30, 2026 at 10:00 AM XYZ", None),  # a zone nobody can place
    ("Feb 30, 2026 at 10:00 AM", None),
    ("Monday, November 30, 2026", None),  # no time
    ("yesterday", None),
    ("", None),
])
def test_dates(value: str, expected: datetime | None) -> None:
    result = parse_when(value)
    assert result == expected
    if expected is not None:
        assert result.tzinfo == expected.tzinfo  # type: ignore[union-attr]  # naive, or UTC


@pytest.mark.parametrize(("value", "expected"), [
    ("Charles Stone <charless@zillum.com>", (CHARLES,)),
    ("Charles Stone [mailto:charless@zillum.com]", (CHARLES,)),
    ("'Charles Stone' <mailto:charless@zillum.com>", (CHARLES,)),
    ('"Stone, Charles" <charless@zillum.com>, carol@example.com',
     (Address("Stone, Charles", "charless@zillum.com"), Address("", "carol@example.com"))),
    ("山田 太郎 <yamada@customer.example>", (YAMADA,)),
    ("Charles Stone", ()),
    ("Charles Stone, <>, alice@example.com", (Address("", "alice@example.com"),)),
    ("", ()),
])
def test_addresses(value: str, expected: tuple[Address, ...]) -> None:
    assert parse_addresses(value) == expected
