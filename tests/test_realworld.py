"""Real-world and hostile mail, end to end: filed decoded, or refused with 554 5.6.0;
never a crash, a hang, a 5xx of our own making, or a half-written record."""

from __future__ import annotations

import base64

import pytest
import sqlalchemy as sa

H = "hashimoto@zylker.example"


def _raw(headers: list[str], body: bytes, ctype: str = "text/plain; charset=utf-8", cte: str = "8bit") -> bytes:
    head = [
        f"From: =?ISO-2022-JP?B?{base64.b64encode('橋本'.encode('iso2022_jp')).decode()}?= <hashimoto@zylker.example>",
        "To: customer@example.jp",
        "Date: Mon, 23 Nov 2026 10:00:00 +0900",
        "MIME-Version: 1.0",
        f"Content-Type: {ctype}",
        f"Content-Transfer-Encoding: {cte}",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body + b"\r\n"


def _stored(gw) -> dict:
    (email,) = gw.export()["emails"]
    with gw.engine.connect() as conn:
        email["text_body"] = conn.execute(sa.text("SELECT text_body FROM emails WHERE id = :i"), {"i": email["id"]}).scalar_one()
    return email


def _subject_iso2022jp(text: str) -> str:
    # Two encoded words on folded lines, the split falling between characters.
    half = len(text) // 2
    words = [base64.b64encode(part.encode("iso2022_jp")).decode() for part in (text[:half], text[half:])]
    return "Subject: " + "\r\n ".join(f"=?ISO-2022-JP?B?{w}?=" for w in words)


def test_iso_2022_jp(gw):
    body = "お世話になっております。①の件です。".encode("iso2022_jp_2004")
    data = _raw([_subject_iso2022jp("御見積書送付のご案内"), "Message-ID: <jis@zylker.example>"], body,
                ctype="text/plain; charset=ISO-2022-JP", cte="7bit")
    assert gw.lmtp(H, [gw.dropbox(H)], data).codes == [250]
    email = _stored(gw)
    assert email["subject"] == "御見積書送付のご案内"
    assert "①の件です" in email["text_body"]
    assert email["from_name"] == "橋本"


def test_shift_jis_labelled_cp932(gw):
    body = "髙橋様 ①②③ ～ よろしくお願いします".encode("cp932")
    subject = "=?Shift_JIS?B?" + base64.b64encode("髙橋様へのご連絡".encode("cp932")).decode() + "?="
    data = _raw([f"Subject: {subject}"], body, ctype="text/plain; charset=Shift_JIS")
    assert gw.lmtp(H, [gw.dropbox(H)], data).codes == [250]
    email = _stored(gw)
    assert email["subject"] == "髙橋様へのご連絡"
    assert "髙橋様 ①②③ ～" in email["text_body"]


def test_utf8_and_rfc2231_filename(gw):
    name = "見積書（最終版）.pdf"
    encoded = "".join(f"%{b:02X}" for b in name.encode("utf-8"))
    part1, part2 = encoded[:39], encoded[39:]  # split inside a UTF-8 character (legal)
    body = (
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode("ご確認ください🙏".encode()) + b"\r\n"
        b"--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment;\r\n filename*0*=utf-8''" + part1.encode() + b";\r\n filename*1*=" + part2.encode()
        + b"\r\n\r\n" + base64.b64encode(b"%PDF" + b"1" * 96) + b"\r\n--b1--\r\n"
    )
    data = _raw(["Subject: =?UTF-8?Q?=E8=A6=8B=E7=A9=8D?= =?UTF-8?B?5pu4?="], body, ctype='multipart/mixed; boundary="b1"')
    assert gw.lmtp(H, [gw.dropbox(H)], data).codes == [250]
    email = _stored(gw)
    assert email["subject"] == "見積書"
    assert email["attachments"] == [{"filename": name, "content_type": "application/pdf", "size": 100}]
    assert "ご確認ください🙏" in email["text_body"]


def test_missing_message_id_nul_bytes_and_long_lines(gw):
    body = b"before\x00after\r\n" + b"L" * 5000 + b"\r\nend"
    data = _raw(["Subject: nul\x00 test"], body)
    assert b"Message-ID" not in data
    tx = gw.lmtp(H, [gw.dropbox(H)], data)
    assert tx.codes == [250]
    email = _stored(gw)
    assert email["message_id"] is None
    assert "\x00" not in email["text_body"] and "beforeafter" in email["text_body"]
    assert "L" * 5000 in email["text_body"]
    assert gw.cli("email", "raw", str(email["id"])).stdout == data  # raw kept byte for byte


def test_malformed_mime_is_filed_as_well_as_possible(gw):
    body = b"--nope\r\nContent-Type: text/plain\r\n\r\nno closing boundary, bad base64 next\r\n--nope\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!***\r\n"
    data = _raw(["Subject: broken"], body, ctype='multipart/mixed; boundary="nope"')
    assert gw.lmtp(H, [gw.dropbox(H)], data).codes == [250]
    assert "no closing boundary" in _stored(gw)["text_body"]


def test_deep_nesting(gw):
    depth = 400
    parts = b""
    for i in range(depth):
        parts += f"--b{i}\r\nContent-Type: multipart/mixed; boundary=\"b{i + 1}\"\r\n\r\n".encode()
    parts += b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep\r\n" % depth
    for i in reversed(range(depth + 1)):
        parts += f"--b{i}--\r\n".encode()
    data = _raw(["Subject: deep"], parts, ctype='multipart/mixed; boundary="b0"')
    tx = gw.lmtp(H, [gw.dropbox(H)], data)
    # Deeper than the parser goes (gateway.parse.limits.MAX_DEPTH): the rest is opaque, the mail filed.
    assert tx.codes == [250]
    assert tx.noop[0] == 250
    assert _stored(gw)["subject"] == "deep"


@pytest.mark.parametrize("data, code", [
    (b"\x00\x01\x02 not a mail at all \xff\xfe", 554),
    (b"no header separator at all and very long " * 200, 554),
    (b"Subject: only a header", 250),
    (b": empty name\r\n\r\nbody", 554),
])
def test_garbage_is_filed_or_refused_cleanly(gw, data, code):
    tx = gw.lmtp(H, [gw.dropbox(H)], data)
    # Filed whole (the envelope sender stands in for a missing From), or unparseable
    # (554 5.6.0) -- nothing in between.
    assert tx.codes == [code], tx.data
    assert tx.data[0][1][:5] == (b"2.0.0" if code == 250 else b"5.6.0")
    assert tx.noop[0] == 250
    if tx.codes == [250]:
        (email,) = gw.export()["emails"]
        assert gw.cli("email", "raw", str(email["id"])).stdout.rstrip(b"\r\n") == data.rstrip(b"\r\n")
    else:
        assert gw.count("emails") == 0 and gw.count("deliveries") == 0
