"""Unit tests for gateway.parse (the package's entry points and its header scanner)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import time
from datetime import datetime, timezone
from email.header import Header

import pytest

from gateway.errors import MalformedMessage
from gateway.message import Address, AttachmentInfo, ParsedMessage
from gateway.parse import parse_message


def crlf(text: str | bytes) -> bytes:
    """Join lines with CRLF as received over SMTP."""
    data = text.encode("ascii") if isinstance(text, str) else text
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def mime(headers: list[bytes | str], body: bytes) -> bytes:
    lines = [h.encode("ascii") if isinstance(h, str) else h for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


BASIC = crlf(
    "From: Alice Example <alice@example.com>\n"
    "To: bob@example.org, \"Carol, C.\" <carol@example.org>\n"
    "Cc: dave@example.net\n"
    "Subject: Hello\n"
    "Date: Mon, 03 Mar 2025 10:00:00 +0900\n"
    "Message-ID: <abc.123@example.com>\n"
    "\n"
    "Hi Bob,\n"
    "see you.\n"
)


# ---------------------------------------------------------------- basics


def test_basic_message():
    msg = parse_message(BASIC)
    assert isinstance(msg, ParsedMessage)
    assert msg.raw == BASIC
    assert msg.message_id == "abc.123@example.com"
    assert msg.from_ == Address("Alice Example", "alice@example.com")
    assert msg.sender is None
    assert msg.to == (Address("", "bob@example.org"), Address("Carol, C.", "carol@example.org"))
    assert msg.cc == (Address("", "dave@example.net"),)
    assert msg.reply_to == ()
    assert msg.subject == "Hello"
    assert msg.text_body == "Hi Bob,\nsee you.\n"
    assert msg.html_body == ""
    assert msg.attachments == ()
    assert msg.content_type == "text/plain"
    assert msg.report_type == ""
    assert msg.headers[0] == ("from", "Alice Example <alice@example.com>")
    assert msg.header("SUBJECT") == "Hello"
    assert msg.header("x-missing") is None
    assert len(msg.digest) == 64


def test_value_is_immutable():
    msg = parse_message(BASIC)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.subject = "x"  # type: ignore[misc]


def test_bare_lf_tolerated():
    msg = parse_message(BASIC.replace(b"\r\n", b"\n"))
    assert msg.subject == "Hello"
    assert msg.text_body == "Hi Bob,\nsee you.\n"
    assert msg.from_ == Address("Alice Example", "alice@example.com")


def test_headers_tuple_is_ordered_and_decoded():
    raw = crlf(
        "Received: from a by b; Mon, 3 Mar 2025 10:00:00 +0000\n"
        "X-Thing: one\n"
        "Subject: =?UTF-8?B?w6l0w6k=?=\n"
        " folded\n"
        "X-Thing: two\n"
        "\n"
        "body\n"
    )
    msg = parse_message(raw)
    assert [name for name, _ in msg.headers] == ["received", "x-thing", "subject", "x-thing"]
    assert msg.header("x-thing") == "one"
    assert msg.header("Subject") == "été folded"


# ---------------------------------------------------------------- headers / charsets


def test_iso2022jp_subject_split_across_folded_encoded_words():
    text = "日本語の件名です、長いテキストを分割します"
    data = text.encode("iso2022_jp")
    # cut the ISO-2022-JP byte stream mid-character and mid-escape-run,
    # like broken mailers do, then fold each encoded word onto its own line
    chunks = [data[i : i + 11] for i in range(0, len(data), 11)]
    words = ["=?ISO-2022-JP?B?" + base64.b64encode(c).decode() + "?=" for c in chunks]
    subject = "Subject: " + "\r\n ".join(words)
    raw = mime(["From: a@example.com", subject], b"x\r\n")
    assert parse_message(raw).subject == text


def test_iso2022jp_subject_well_formed_words_on_folded_lines():
    pieces = ["Re: ご注文の", "確認（①番）", " について"]
    # each word is self-contained (ends in ASCII mode), as RFC 2047 wants;
    # ① is a NEC special character outside strict ISO-2022-JP
    words = ["=?iso-2022-jp?B?" + base64.b64encode(p.encode("iso2022_jp_2004")).decode() + "?=" for p in pieces]
    raw = mime(["From: a@example.com", "Subject: " + "\r\n\t".join(words)], b"x\r\n")
    assert parse_message(raw).subject == "".join(pieces).strip()


def test_raw_8bit_utf8_and_sjis_headers():
    raw = mime(
        [
            "From: ".encode() + "山田 太郎".encode("utf-8") + b" <yamada@example.jp>",
            b"Subject: " + "髙橋さん①".encode("cp932"),
        ],
        b"x\r\n",
    )
    msg = parse_message(raw)
    assert msg.from_ == Address("山田 太郎", "yamada@example.jp")
    assert msg.subject == "髙橋さん①"


def test_encoded_display_name_with_comma_does_not_split():
    name = "=?UTF-8?Q?Doe=2C_J=C3=B6hn?="
    raw = mime(["From: " + name + " <jd@example.com>", "To: " + name + " <jd@example.com>, x@example.com"], b"x")
    msg = parse_message(raw)
    assert msg.from_ == Address("Doe, Jöhn", "jd@example.com")
    assert msg.to == (Address("Doe, Jöhn", "jd@example.com"), Address("", "x@example.com"))


def test_sender_and_reply_to():
    raw = mime(
        ["From: a@example.com", "Sender: List <list@example.com>", "Reply-To: r1@example.com, R2 <r2@example.com>"],
        b"x",
    )
    msg = parse_message(raw)
    assert msg.sender == Address("List", "list@example.com")
    assert msg.reply_to == (Address("", "r1@example.com"), Address("R2", "r2@example.com"))


def test_empty_addresses_are_skipped():
    raw = mime(["From: a@example.com", "To: undisclosed-recipients:;", "Cc: "], b"x")
    msg = parse_message(raw)
    assert msg.to == ()
    assert msg.cc == ()


# ---------------------------------------------------------------- bodies


def test_iso2022jp_body_with_nec_circled_digit():
    text = "お世話になっております。\n①の件、承知しました。\n"
    raw = mime(
        ["From: a@example.com", "Content-Type: text/plain; charset=ISO-2022-JP", "Content-Transfer-Encoding: 7bit"],
        text.encode("iso2022_jp_2004").replace(b"\n", b"\r\n"),
    )
    assert parse_message(raw).text_body == text


def test_shift_jis_labelled_cp932_body():
    text = "①髙島屋～ご案内\n"
    raw = mime(
        ["From: a@example.com", "Content-Type: text/plain; charset=Shift_JIS", "Content-Transfer-Encoding: 8bit"],
        text.encode("cp932").replace(b"\n", b"\r\n"),
    )
    msg = parse_message(raw)
    assert msg.text_body == text
    assert "\ufffd" not in msg.text_body


def test_utf8_base64_body():
    text = "Grüße, 世界!\n"
    raw = mime(
        ["From: a@example.com", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64"],
        base64.encodebytes(text.encode("utf-8")).replace(b"\n", b"\r\n"),
    )
    assert parse_message(raw).text_body == text


def test_utf8_quoted_printable_body():
    body = b"Gr=C3=BC=C3=9Fe, this is a long line that is soft=\r\n-wrapped =E4=B8=96=E7=95=8C\r\n"
    raw = mime(
        ["From: a@example.com", "Content-Type: text/plain; charset=\"UTF-8\"", "Content-Transfer-Encoding: quoted-printable"],
        body,
    )
    assert parse_message(raw).text_body == "Grüße, this is a long line that is soft-wrapped 世界\n"


def test_bad_base64_body_does_not_raise():
    raw = mime(
        ["From: a@example.com", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64"],
        b"SGVsbG8gd29ybGQ!!!*\r\nQ\r\n",
    )
    msg = parse_message(raw)
    assert msg.text_body.startswith("Hello world")


def test_declared_charset_with_one_bad_byte_is_not_redetected():
    text = "Grüße aus Köln, das ist ein ganz normaler Text. " * 3
    raw = mime(["From: a@example.com", "Content-Type: text/plain; charset=utf-8"], text.encode() + b"\xc3")
    assert parse_message(raw).text_body == text + "\ufffd"


def test_unknown_charset_body():
    raw = mime(["From: a@example.com", "Content-Type: text/plain; charset=x-no-such-charset"], "café".encode())
    assert parse_message(raw).text_body == "café"


def test_undeclared_charset_shift_jis_body_is_detected():
    text = (
        "いつもお世話になっております。株式会社サンプルの山田でございます。\n"
        "先日ご依頼いただきました見積書を添付いたしますので、ご確認のほどよろしくお願いいたします。\n"
    )
    raw = mime(["From: a@example.com", "Subject: no charset"], text.encode("shift_jis").replace(b"\n", b"\r\n"))
    assert parse_message(raw).text_body == text


def test_html_only_message_gets_text_from_html():
    html = "<html><body><h1>Title</h1><p>Hello <b>world</b> &amp; friends</p></body></html>"
    raw = mime(["From: a@example.com", "Content-Type: text/html; charset=utf-8"], html.encode())
    msg = parse_message(raw)
    assert msg.html_body == html
    assert "Title" in msg.text_body
    assert "Hello world & friends" in msg.text_body
    assert "<" not in msg.text_body


def test_huge_html_only_message_is_converted_quickly():
    html = "<html><head><style>p {color: red}</style></head><body>" + "<p>Hello <b>world</b> &amp; co</p>\r\n" * 200_000
    raw = mime(["From: a@example.com", "Content-Type: text/html; charset=utf-8"], html.encode())
    started = time.perf_counter()
    msg = parse_message(raw)
    assert time.perf_counter() - started < 3.0
    assert msg.text_body.startswith("Hello world & co\n")
    assert "color" not in msg.text_body
    assert "<" not in msg.text_body


def test_alternative_keeps_plain_and_first_html():
    raw = crlf(
        "From: a@example.com\n"
        "Content-Type: multipart/alternative; boundary=\"alt\"\n"
        "\n"
        "preamble\n"
        "--alt\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "\n"
        "plain text\n"
        "--alt\n"
        "Content-Type: text/html; charset=utf-8\n"
        "\n"
        "<p>first</p>\n"
        "--alt\n"
        "Content-Type: text/html; charset=utf-8\n"
        "\n"
        "<p>second</p>\n"
        "--alt--\n"
        "epilogue\n"
    )
    msg = parse_message(raw)
    assert msg.content_type == "multipart/alternative"
    assert msg.text_body == "plain text"
    assert msg.html_body == "<p>first</p>"
    assert msg.attachments == ()


def test_nul_bytes_are_stripped():
    raw = mime(["From: a@example.com", b"Subject: a\x00b", "Message-ID: <x\x00y@example.com>"], b"te\x00xt\x00\r\n")
    msg = parse_message(raw)
    assert msg.subject == "ab"
    assert msg.text_body == "text\n"
    assert msg.message_id == "xy@example.com"
    for name, value in msg.headers:
        assert "\x00" not in name + value


def test_no_lone_surrogates_anywhere():
    raw = mime(["From: \xff\xfe <a@example.com>".encode("latin-1"), b"Subject: \xed\xa0\x80 \xff"], b"\xed\xa0\x80\xff")
    msg = parse_message(raw)
    for value in (msg.subject, msg.text_body, msg.from_.name, *[v for _, v in msg.headers]):
        value.encode("utf-8")  # raises on lone surrogates


def test_long_line_is_kept():
    line = "x" * 1000 + "y" * 1000
    raw = mime(["From: a@example.com", "Subject: long"], line.encode() + b"\r\n")
    msg = parse_message(raw)
    assert line in msg.text_body
    assert len(msg.text_body.strip()) == 2000


# ---------------------------------------------------------------- attachments


def _multipart(parts: list[bytes], ctype: str = "multipart/mixed", boundary: str = "BOUND", extra: str = "") -> bytes:
    head = [
        "From: a@example.com",
        "Subject: with parts",
        "MIME-Version: 1.0",
        f'Content-Type: {ctype}; boundary="{boundary}"{extra}',
    ]
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return mime(head, body)


def test_attachment_sizes_equal_decoded_payload():
    blob = os.urandom(12345)
    qp_payload = b"caf=C3=A9 =3D ok"
    raw = _multipart(
        [
            crlf(b"Content-Type: text/plain; charset=utf-8\n\nbody text"),
            crlf(b"Content-Type: application/pdf\nContent-Disposition: attachment; filename=\"report.pdf\"\n"
                 b"Content-Transfer-Encoding: base64\n\n") + base64.encodebytes(blob).replace(b"\n", b"\r\n"),
            crlf(b"Content-Type: text/csv; name=data.csv\nContent-Transfer-Encoding: quoted-printable\n\n") + qp_payload,
            crlf(b"Content-Type: image/png\nContent-Disposition: inline\nContent-ID: <img1>\n\n") + b"\x89PNG....",
        ]
    )
    msg = parse_message(raw)
    assert msg.text_body == "body text"
    assert msg.attachments == (
        AttachmentInfo("report.pdf", "application/pdf", len(blob)),
        AttachmentInfo("data.csv", "text/csv", len("café = ok".encode())),
        AttachmentInfo("", "image/png", 8),
    )


def test_rfc2231_filename_with_charset_and_continuations():
    name = "見積書_2025年3月分.pdf"
    encoded = "".join(f"%{b:02X}" for b in name.encode("utf-8"))
    half = len(encoded) // 2
    half -= half % 3  # keep %XX triplets whole
    disposition = (
        "Content-Disposition: attachment;\n"
        f" filename*0*=UTF-8''{encoded[:half]};\n"
        f" filename*1*={encoded[half:]}\n"
    )
    raw = _multipart([crlf("Content-Type: application/pdf\n" + disposition + "\n%PDF-1.4\n")])
    (att,) = parse_message(raw).attachments
    assert att.filename == name
    assert att.content_type == "application/pdf"


def test_rfc2231_filename_in_shift_jis():
    name = "髙橋①.txt"
    encoded = "".join(f"%{b:02X}" for b in name.encode("cp932"))
    raw = _multipart([crlf(f"Content-Type: text/plain\nContent-Disposition: attachment; filename*=shift_jis'ja'{encoded}\n\nx")])
    (att,) = parse_message(raw).attachments
    assert att.filename == name


def test_rfc2047_encoded_filename():
    name = "請求書 ①.xlsx"
    word = Header(name, "utf-8").encode()
    raw = _multipart([crlf(f'Content-Type: application/vnd.ms-excel; name="{word}"\nContent-Transfer-Encoding: base64\n\nAAEC')])
    (att,) = parse_message(raw).attachments
    assert att == AttachmentInfo(name, "application/vnd.ms-excel", 3)


def test_message_rfc822_counts_as_attachment():
    inner = crlf("From: x@example.com\nSubject: inner\n\ninner body\n")
    raw = _multipart([crlf(b"Content-Type: text/plain\n\nouter"), crlf(b"Content-Type: message/rfc822\n\n") + inner])
    msg = parse_message(raw)
    assert msg.text_body == "outer"
    assert msg.attachments == (AttachmentInfo("", "message/rfc822", len(inner)),)


def test_multipart_report_delivery_status():
    raw = _multipart(
        [
            crlf(b"Content-Type: text/plain\n\nDelivery failed."),
            crlf(b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n"
                 b"Final-Recipient: rfc822; x@example.com\nAction: failed\nStatus: 5.1.1\n"),
            crlf(b"Content-Type: text/rfc822-headers\n\nFrom: a@example.com\nSubject: original\n"),
        ],
        ctype="multipart/report",
        extra="; report-type=Delivery-Status",
    )
    msg = parse_message(raw)
    assert msg.content_type == "multipart/report"
    assert msg.report_type == "delivery-status"
    assert msg.text_body == "Delivery failed."
    # every part that is not the text is kept, the returned headers too
    assert [a.content_type for a in msg.attachments] == ["message/delivery-status", "text/rfc822-headers"]


# ---------------------------------------------------------------- broken MIME


def test_missing_closing_boundary():
    raw = crlf(
        "From: a@example.com\n"
        "Content-Type: multipart/mixed; boundary=XYZ\n"
        "\n"
        "--XYZ\n"
        "Content-Type: text/plain\n"
        "\n"
        "first\n"
        "--XYZ\n"
        "Content-Type: application/octet-stream\n"
        "Content-Disposition: attachment; filename=a.bin\n"
        "\n"
        "0123456789"
    )
    msg = parse_message(raw)
    assert msg.text_body == "first"
    assert msg.attachments == (AttachmentInfo("a.bin", "application/octet-stream", 10),)


def test_missing_boundary_parameter_is_guessed():
    raw = crlf(
        "From: a@example.com\n"
        "Content-Type: multipart/mixed\n"
        "\n"
        "--guess\n"
        "Content-Type: text/plain\n"
        "\n"
        "found me\n"
        "--guess--\n"
    )
    assert parse_message(raw).text_body == "found me"


def test_multipart_without_any_boundary_is_salvaged_as_text():
    raw = crlf("From: a@example.com\nContent-Type: multipart/mixed; boundary=nope\n\njust text\n")
    msg = parse_message(raw)
    assert msg.content_type == "multipart/mixed"
    assert msg.text_body == "just text\n"


def test_deeply_nested_multipart_is_bounded():
    depth = 1000
    head = b"From: a@example.com\r\nSubject: deep\r\n"
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth))
    closing = b"".join(b"\r\n--b%d--" % i for i in reversed(range(depth)))
    raw = head + opening + b"Content-Type: text/plain\r\n\r\nthe bottom" + closing + b"\r\n"
    started = time.perf_counter()
    msg = parse_message(raw)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0
    assert msg.subject == "deep"
    assert msg.content_type == "multipart/mixed"
    assert "the bottom" not in msg.text_body  # below the depth cap: opaque


def test_moderately_nested_multipart_is_walked():
    depth = 20
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth))
    closing = b"".join(b"\r\n--b%d--" % i for i in reversed(range(depth)))
    raw = b"From: a@example.com\r\n" + opening + b"Content-Type: text/plain\r\n\r\nthe bottom" + closing
    assert parse_message(raw).text_body == "the bottom"


def test_many_parts_are_capped():
    raw = _multipart([b"Content-Type: application/octet-stream\r\n\r\nx"] * 20000)
    started = time.perf_counter()
    msg = parse_message(raw)
    assert time.perf_counter() - started < 5.0
    assert 0 < len(msg.attachments) <= 5000


# ---------------------------------------------------------------- ids, dates, digest


def test_missing_message_id_and_stable_digest_across_hops():
    raw = crlf("From: a@example.com\nSubject: no id\n\nbody\n")
    first = parse_message(raw)
    assert first.message_id is None
    hop = crlf(
        "Received: from mx2.example.net (mx2.example.net [192.0.2.1])\n"
        "\tby mx.example.org with ESMTP id 123;\n"
        "\tMon, 3 Mar 2025 10:00:00 +0000\n"
        "Return-Path: <bounce@example.com>\n"
        "Delivered-To: crm@example.org\n"
        "X-Original-To: crm@example.org\n"
    )
    second = parse_message(hop + raw)
    assert second.digest == first.digest
    changed = parse_message(raw.replace(b"body", b"Body"))
    assert changed.digest != first.digest


def test_digest_with_bare_lf_and_case_variants():
    raw = b"From: a@example.com\nSubject: s\n\nbody\n"
    hop = b"RECEIVED: from x\n  by y; Mon, 3 Mar 2025 10:00:00 +0000\nreturn-path: <a@example.com>\n"
    assert parse_message(hop + raw).digest == parse_message(raw).digest
    # a trace field name inside another field's folded value is not a field
    other = b"From: a@example.com\nSubject: s\n Received: not a field\n\nbody\n"
    assert parse_message(other).digest != parse_message(raw).digest


def test_digest_ignores_trace_fields_only_in_header_section():
    raw = crlf("From: a@example.com\n\nReceived: in the body\n")
    other = crlf("From: a@example.com\n\nReceived: in the BODY\n")
    assert parse_message(raw).digest != parse_message(other).digest


def test_empty_message_id_is_none():
    raw = mime(["From: a@example.com", "Message-ID:   "], b"x")
    assert parse_message(raw).message_id is None


def test_message_id_without_brackets():
    raw = mime(["From: a@example.com", "Message-ID:  bare.id@example.com "], b"x")
    assert parse_message(raw).message_id == "bare.id@example.com"


def test_bad_date_is_none():
    raw = mime(["From: a@example.com", "Date: yesterday-ish, around noon"], b"x")
    assert parse_message(raw).date is None


def test_missing_date_is_none():
    assert parse_message(mime(["From: a@example.com"], b"x")).date is None


def test_date_with_offset_is_converted_to_utc():
    msg = parse_message(BASIC)
    assert msg.date == datetime(2025, 3, 3, 1, 0, tzinfo=timezone.utc)
    assert msg.date.utcoffset().total_seconds() == 0


def test_date_without_zone_is_taken_as_utc():
    raw = mime(["From: a@example.com", "Date: 3 Mar 2025 10:00:00"], b"x")
    assert parse_message(raw).date == datetime(2025, 3, 3, 10, 0, tzinfo=timezone.utc)


def test_in_reply_to_and_references():
    raw = crlf(
        "From: a@example.com\n"
        "In-Reply-To: <parent@example.com> (Bob's message)\n"
        "References: <root@example.com>\n"
        "  <mid@example.com>\n"
        "\t<parent@example.com>\n"
        "\n"
        "x"
    )
    msg = parse_message(raw)
    assert msg.in_reply_to == ("parent@example.com",)
    assert msg.references == ("root@example.com", "mid@example.com", "parent@example.com")


def test_missing_threading_headers():
    msg = parse_message(BASIC)
    assert msg.in_reply_to == ()
    assert msg.references == ()


# ---------------------------------------------------------------- hopeless input


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   \r\n\r\n",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR garbage",
        b"\r\n\r\nbody without any header",
        os.urandom(2048).replace(b":", b""),
    ],
)
def test_hopeless_input_raises_malformed(raw):
    with pytest.raises(MalformedMessage):
        parse_message(raw)


def test_mangled_first_line_is_skipped():
    raw = b"F\trom: broken\r\nFrom: a@example.com\r\nSubject: salvaged\r\n\r\nbody\r\n"
    msg = parse_message(raw)
    assert msg.subject == "salvaged"
    assert msg.from_ == Address("", "a@example.com")
    assert msg.text_body == "body\n"


def test_leading_line_breaks_are_skipped():
    msg = parse_message(b"\r\n\r\nFrom: a@example.com\r\nSubject: late\r\n\r\nbody")
    assert msg.subject == "late"
    assert msg.text_body == "body"


def test_truncated_garbage_after_headers_still_parses():
    raw = b"From: a@example.com\r\nSubject: t\r\n\r\n" + bytes(range(256)) * 4
    msg = parse_message(raw)
    assert msg.subject == "t"
    assert "\x00" not in msg.text_body


# ---------------------------------------------------------------- performance


def test_ten_megabyte_message_is_fast():
    blob = os.urandom(7_500_000)
    raw = _multipart(
        [
            crlf(b"Content-Type: text/plain; charset=utf-8\n\nsee attachment"),
            crlf(b"Content-Type: application/octet-stream\nContent-Disposition: attachment; filename=big.bin\n"
                 b"Content-Transfer-Encoding: base64\n\n") + base64.encodebytes(blob).replace(b"\n", b"\r\n"),
        ]
    )
    assert len(raw) > 10_000_000
    started = time.perf_counter()
    msg = parse_message(raw)
    assert time.perf_counter() - started < 3.0
    assert msg.text_body == "see attachment"
    assert msg.attachments == (AttachmentInfo("big.bin", "application/octet-stream", len(blob)),)


def test_iso2022jp_microsoft_flavour_codec():
    """CP50220 as Outlook writes it: NEC row 13 and half-width katakana inside ISO-2022-JP."""
    from gateway.parse import jis

    assert b"\x1b$B-!-j-b\x1b(B ok".decode(jis.NAME) == "①㈱№ ok"
    assert b"\x1b(I12\x1b(B".decode(jis.NAME) == "ｱｲ"
    assert "テスト".encode("iso2022_jp").decode(jis.NAME) == "テスト"
    with pytest.raises(UnicodeDecodeError):
        b"\x1b$B\x7f\x7f\x1b(B".decode(jis.NAME)
    with pytest.raises(UnicodeDecodeError):
        b"\x1b$Zbad".decode(jis.NAME)


# ---------------------------------------------------------------- issue 11: digest, addresses, parts, charsets


def test_digest_ignores_trace_and_filter_headers_but_not_content():
    from tests.helpers import message

    base = message(subject="Hello", body="Body text.", message_id="<same@x.example>",
                   date="Tue, 01 Dec 2026 09:00:00 +0000")
    hop = (b"Received: from a by b; Tue, 01 Dec 2026 09:00:01 +0000\r\n"
           b"Authentication-Results: mx.example; dkim=pass\r\nARC-Seal: i=1; cv=none\r\n"
           b"X-Spam-Score: 0.1\r\nX-Original-To: box@in.example\r\n")
    digest = parse_message(base).digest
    assert parse_message(hop + base).digest == digest
    assert parse_message(base + b"\r\n\r\n").digest == digest  # trailing blank lines
    for old, new in ((b"Subject: Hello", b"Subject: Hallo"), (b"Body text.", b"Body text!"),
                     (b"09:00:00 +0000", b"09:00:01 +0000"), (b"hashimoto@zylker.example", b"kitazawa@zylker.example")):
        assert old in base
        assert parse_message(base.replace(old, new)).digest != digest, old


def test_display_name_containing_at_sign_is_a_name():
    raw = mime(["From: a@example.com", "To: smith@a.example, Mikel@Lindsaar <raasdnil@b.example>, tom@c.example"], b"x")
    assert parse_message(raw).to == (
        Address("", "smith@a.example"), Address("Mikel@Lindsaar", "raasdnil@b.example"), Address("", "tom@c.example"))


def test_address_lists_with_quotes_comments_and_groups():
    raw = mime(["From: a@example.com",
                'To: "Doe, John" <jd@x.example>, (team, west) ann@y.example, '
                'friends: bob@z.example, "Q <x>" <q@w.example>;, undisclosed-recipients:;'], b"x")
    assert [(a.name, a.address) for a in parse_message(raw).to] == [
        ("Doe, John", "jd@x.example"), ("team, west", "ann@y.example"), ("", "bob@z.example"),
        ("Q <x>", "q@w.example")]


def test_inline_text_part_with_a_file_name_is_the_text_body():
    raw = crlf("From: a@example.com\nContent-Type: text/plain; charset=utf-8\n"
               "Content-Disposition: inline; filename=note.txt\n\nThe only text.\n")
    msg = parse_message(raw)
    assert msg.text_body.strip() == "The only text."
    assert msg.attachments == (AttachmentInfo("note.txt", "text/plain", len(b"The only text.\r\n")),)
    # next to a real text body it is only an attachment
    both = _multipart([crlf("Content-Type: text/plain\n\nBody."),
                       crlf("Content-Type: text/plain; name=log.txt\nContent-Disposition: inline\n\nlog line")])
    msg = parse_message(both)
    assert msg.text_body == "Body."
    assert [a.filename for a in msg.attachments] == ["log.txt"]


def test_calendar_invitation_is_kept_and_retrievable():
    from gateway.parse import attachment

    ics = crlf("BEGIN:VCALENDAR\nVERSION:2.0\nMETHOD:REQUEST\nBEGIN:VEVENT\nSUMMARY:Review\n"
               "DTSTART:20261202T090000Z\nEND:VEVENT\nEND:VCALENDAR\n")
    raw = _multipart([crlf("Content-Type: text/plain\n\nJoin us."), crlf("Content-Type: text/html\n\n<p>Join us.</p>"),
                      b"Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n" + ics],
                     ctype="multipart/alternative")
    msg = parse_message(raw)
    assert msg.text_body == "Join us."
    assert msg.attachments == (AttachmentInfo("invite.ics", "text/calendar", len(ics)),)
    info, data = attachment(raw, 0)
    assert info == msg.attachments[0] and data == ics
    assert attachment(raw, 1) is None
    named = _multipart([crlf("Content-Type: text/plain\n\nx"),
                        b"Content-Type: text/calendar; name=meeting.ics\r\n\r\n" + ics])
    assert [a.filename for a in parse_message(named).attachments] == ["meeting.ics"]


def test_undeclared_latin1_subject_is_not_cjk():
    raw = mime(["From: a@example.com", b"Subject: Forma\xe7\xe3o", b"To: Jos\xe9 <jose@example.pt>"], b"x")
    msg = parse_message(raw)
    assert msg.subject == "Formação"
    assert msg.to[0].name == "José"


def test_undeclared_8bit_header_prefers_the_charset_the_message_declares():
    # windows-1250 body: the raw subject is in it too (ř, ů are not in windows-1252)
    raw = mime(["From: a@example.com", "Subject: ".encode() + "Příliš žluťoučký kůň".encode("cp1250"),
                "Content-Type: text/plain; charset=windows-1250"], "Dobrý den".encode("cp1250"))
    msg = parse_message(raw)
    assert msg.subject == "Příliš žluťoučký kůň"
    assert msg.text_body == "Dobrý den"


def test_rfc2231_name_mislabelled_iso2022jp_is_not_mojibake():
    name = "Relatório de avaliação.pdf"
    encoded = "".join(f"%{b:02X}" for b in name.encode("cp1252"))
    raw = _multipart([crlf("Content-Type: text/plain\n\nx"),
                      crlf(f"Content-Type: application/pdf\nContent-Disposition: attachment; "
                           f"filename*=iso-2022-jp'ja'{encoded}\n\n%PDF")])
    assert [a.filename for a in parse_message(raw).attachments] == [name]
    # and a real Japanese name in the same mislabelled way (Shift_JIS bytes) still reads
    name = "見積書のご案内.pdf"
    encoded = "".join(f"%{b:02X}" for b in name.encode("cp932"))
    raw = _multipart([crlf("Content-Type: text/plain\n\nx"),
                      crlf(f"Content-Type: application/pdf\nContent-Disposition: attachment; "
                           f"filename*=iso-2022-jp'ja'{encoded}\n\n%PDF")])
    assert [a.filename for a in parse_message(raw).attachments] == [name]


def test_parts_below_the_depth_limit_are_counted_not_dropped_silently():
    from gateway.parse.limits import MAX_DEPTH

    depth = MAX_DEPTH + 3
    body = b"Content-Type: text/plain\r\n\r\ndeep text\r\n"
    for level in range(depth):
        b = f"b{level}".encode()
        body = (b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n--" + b + b"\r\n" + body
                + b"\r\n--" + b + b"--\r\n")
    raw = b"From: a@example.com\r\nSubject: deep\r\n" + body
    msg = parse_message(raw)
    assert msg.skipped_parts == 1
    assert msg.text_body == "" and msg.empty_body
    shallow = parse_message(crlf("From: a@example.com\n\nplain"))
    assert (shallow.skipped_parts, shallow.empty_body) == (0, False)


# ---------------------------------------------------------------- the header-section scanner


def test_header_section_ends_at_the_first_empty_line_lf_or_crlf():
    from gateway.parse.headers import split_header_section

    for eol in (b"\r\n", b"\n"):
        raw = eol.join([b"From: a@example.com", b"Subject: one", b"\ttwo", b"", b"body", b""])
        section = split_header_section(raw)
        assert section.fields == [("From", "a@example.com"), ("Subject", "one\ttwo")]
        assert raw[section.body_start:] == b"body" + eol


def test_header_section_salvage_and_part_blocks():
    from gateway.parse.headers import split_header_section

    raw = b"\r\n\r\nF\trom: x\r\nFrom: a@example.com\r\n\r\nbody"
    section = split_header_section(raw)
    assert section.fields == [("From", "a@example.com")] and raw[section.body_start:] == b"body"
    # a MIME part's block starts at its first byte and may be empty
    part = split_header_section(b"\r\nbody", salvage=False)
    assert part.fields == [] and part.body_start == 2
    # the first line that is no header field starts the body
    section = split_header_section(b"From a@b Mon\r\nFrom: a@example.com\r\nno header\r\nX: y\r\n")
    assert section.fields == [("From", "a@example.com")]
    assert section.body_start == len(b"From a@b Mon\r\nFrom: a@example.com\r\n")


def test_split_fields_gives_folded_fields_and_the_body_as_the_relay_needs_them():
    from gateway.parse.headers import split_fields

    for eol in (b"\r\n", b"\n"):
        raw = eol.join([b"From: a@example.com", b"Subject: one", b" two", b"X-Gateway-Class: x", b"",
                        b"body", b"", b"more", b""])
        assert split_fields(raw) == ([b"From: a@example.com", b"Subject: one\r\n two", b"X-Gateway-Class: x"],
                                     eol.join([b"body", b"", b"more", b""]))
    assert split_fields(b"From: a@example.com\r\nSubject: s") == ([b"From: a@example.com", b"Subject: s"], b"")
    # as the parser reads it: an mbox "From " line is no field, a junk line starts the body
    assert split_fields(b"From a@b Mon\r\nFrom: a@example.com\r\njunk\r\n\r\nbody") == (
        [b"From: a@example.com"], b"junk\r\n\r\nbody")


def test_digest_is_computed_from_the_header_section_the_parser_read():
    raw = crlf("\nFrom: A <a@example.com>\nSubject:  Hello\n   world\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n\nBody\n\n")
    expected = hashlib.sha256(b"from:A <a@example.com>\ndate:Mon, 1 Jan 2024 10:00:00 +0000\n"
                              b"subject:Hello world\n\nBody").hexdigest()
    assert parse_message(raw).digest == expected
