"""Parts that used to vanish (issue 11 item 3), through the real daemon: a calendar
invitation is listed and its bytes come back from `gateway email attachment`; a
message whose only text is an inline named part gets that text; a message the walker
cannot read into is counted."""

from __future__ import annotations

import re

import sqlalchemy as sa

from tests.helpers import message

HASHIMOTO = "hashimoto@zylker.example"
ICS = (b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:42@zylker.example\r\n"
       b"SUMMARY:Quotation review\r\nDTSTART:20261202T090000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")


def _invitation() -> bytes:
    head = message(to="Charles <charless@zillum.com>", subject="Invitation: Quotation review")
    headers = head.split(b"\r\n\r\n", 1)[0]
    headers = re.sub(rb"Content-Type:[^\r]*\r\n(Content-Transfer-Encoding:[^\r]*\r\n)?", b"", headers)
    return (headers + b"\r\nContent-Type: multipart/alternative; boundary=ALT\r\n\r\n"
            b"--ALT\r\nContent-Type: text/plain\r\n\r\nQuotation review, Wednesday 9:00.\r\n"
            b"--ALT\r\nContent-Type: text/calendar; method=REQUEST; charset=UTF-8\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + __import__("base64").encodebytes(ICS).replace(b"\n", b"\r\n") + b"--ALT--\r\n")


def test_calendar_invitation_is_listed_and_its_bytes_come_back(gw, tmp_path):
    assert gw.lmtp(HASHIMOTO, [gw.dropbox(HASHIMOTO)], _invitation()).codes == [250]
    (email,) = gw.export()["emails"]
    assert email["attachments"] == [{"filename": "invite.ics", "content_type": "text/calendar", "size": len(ICS)}]
    assert gw.cli("email", "attachment", str(email["id"]), "0").stdout == ICS
    out = tmp_path / "invite.ics"
    gw.cli("email", "attachment", str(email["id"]), "0", "-o", str(out))
    assert out.read_bytes() == ICS
    missing = gw.cli("email", "attachment", str(email["id"]), "1", check=False)
    assert missing.returncode == 1 and b"has no attachment 1" in missing.stderr
    other_org = gw.cli("email", "attachment", str(email["id"]), "0", "--org", "lumen", check=False)
    assert other_org.returncode == 1 and other_org.stdout == b""


def test_inline_named_text_is_the_stored_text_body(gw):
    data = message(to="Charles <charless@zillum.com>", body="The quotation is 1,200 EUR.")
    assert b"Content-Type: text/plain" in data
    data = data.replace(b"Content-Type: text/plain", b"Content-Disposition: inline; filename=quote.txt\r\n"
                                                      b"Content-Type: text/plain", 1)
    assert gw.lmtp(HASHIMOTO, [gw.dropbox(HASHIMOTO)], data).codes == [250]
    (email,) = gw.export()["emails"]
    assert [a["filename"] for a in email["attachments"]] == ["quote.txt"]
    with gw.engine.connect() as conn:
        text = conn.execute(sa.text("SELECT text_body FROM emails WHERE id = :id"), {"id": email["id"]}).scalar_one()
    assert text.strip() == "The quotation is 1,200 EUR."


def test_parts_the_walker_cannot_reach_are_counted_and_the_raw_message_kept(gw):
    from gateway import metrics
    from gateway.parse.limits import MAX_DEPTH

    skipped = metrics.parse_anomalies.labels(kind="parts_skipped")
    empty = metrics.parse_anomalies.labels(kind="empty_body")
    before = (skipped._value.get(), empty._value.get())
    body = b"Content-Type: text/plain\r\n\r\nThe text, too deep to reach.\r\n"
    for level in range(MAX_DEPTH + 2):
        b = f"b{level}".encode()
        body = (b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n--" + b + b"\r\n" + body
                + b"\r\n--" + b + b"--\r\n")
    data = (b"From: Taro Hashimoto <hashimoto@zylker.example>\r\nTo: charless@zillum.com\r\n"
            b"Subject: deep\r\nMessage-ID: <deep@zylker.example>\r\n" + body)
    assert gw.lmtp(HASHIMOTO, [gw.dropbox(HASHIMOTO)], data).codes == [250]
    assert (skipped._value.get(), empty._value.get()) == (before[0] + 1, before[1] + 1)
    (email,) = gw.export()["emails"]
    assert gw.cli("email", "raw", str(email["id"])).stdout == data
    # an ordinary message counts nothing
    assert gw.lmtp(HASHIMOTO, [gw.dropbox(HASHIMOTO)], message()).codes == [250]
    assert (skipped._value.get(), empty._value.get()) == (before[0] + 1, before[1] + 1)
