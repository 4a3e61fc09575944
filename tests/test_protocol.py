"""Protocol edge: extensions, early replies, size limits, one LMTP reply per recipient."""

from __future__ import annotations

import socket
import threading
import time

import sqlalchemy as sa

from tests.helpers import message

SENDER = "hashimoto@zylker.example"


def test_ehlo_and_lhlo_advertise_extensions(gw):
    for client, greeting in ((gw.smtp_client(), "ehlo"), (gw.lmtp_client(), "lhlo")):
        with client:
            code, _ = client.ehlo()  # smtplib.LMTP.ehlo() sends LHLO
            assert code == 250
            assert client.ehlo_msg == greeting
            for ext in ("size", "8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
                assert client.has_extn(ext), ext
            assert client.esmtp_features["size"] == "10485760"


def test_unknown_recipients_are_refused_at_rcpt(gw):
    tx = gw.lmtp(SENDER, ["nobody@in.zylker.example", "bcc-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@in.zylker.example",
                          "someone@elsewhere.example"], message())
    assert tx.rcpt_codes == [550, 550, 550]
    # Unknown here: 5.1.1; a domain the gateway does not serve: relaying denied, 5.7.1.
    assert [m[:5] for _, m in tx.rcpts] == [b"5.1.1", b"5.1.1", b"5.7.1"]
    assert tx.data == []


def test_too_many_recipients(gw):
    box = gw.dropbox("hashimoto@zylker.example")
    with gw.lmtp_client() as client:
        client.ehlo_or_helo_if_needed()
        assert client.mail(SENDER)[0] == 250
        codes = [client.rcpt(box) for _ in range(101)]
    assert [c for c, _ in codes[:100]] == [250] * 100
    assert codes[100][0] == 452 and codes[100][1].startswith(b"4.5.3")


def test_size_parameter_over_limit_refused_at_mail(gw):
    with gw.smtp_client() as client:
        client.ehlo()
        code, msg = client.mail(SENDER, ["SIZE=10485761"])
        assert (code, msg[:5]) == (552, b"5.3.4")
        assert client.mail(SENDER, ["SIZE=10485760"])[0] == 250


def test_message_over_limit_refused_during_data_one_reply_per_recipient(gw):
    box_h = gw.dropbox("hashimoto@zylker.example")
    box_k = gw.dropbox("kitazawa@zylker.example")
    big = message(body="x" * 100 + "\n" + ("y" * 998 + "\n") * 10600)
    assert len(big) > 10 * 1024 * 1024
    tx = gw.lmtp(SENDER, [box_h, box_k], big)
    assert tx.codes == [552, 552]
    assert all(m.startswith(b"5.3.4") for _, m in tx.data)
    assert tx.noop[0] == 250  # the session is still in step
    tx = gw.smtp(SENDER, [box_h], big)
    assert tx.codes == [552]
    assert gw.count("emails") == 0


def test_message_exactly_at_limit_is_accepted(gw):
    box = gw.dropbox("hashimoto@zylker.example")
    base = message(body="")
    pad = 10 * 1024 * 1024 - len(base) - 2
    data = base + b"z" * pad + b"\r\n"
    assert len(data) == 10 * 1024 * 1024
    tx = gw.lmtp(SENDER, [box], data)
    assert tx.codes == [250]


def test_lmtp_one_reply_per_recipient_on_mixed_outcomes(gw):
    box_h = gw.dropbox("hashimoto@zylker.example")
    box_k = gw.dropbox("kitazawa@zylker.example")  # hashimoto is not kitazawa's sender
    tx = gw.lmtp(SENDER, [box_h, "nobody@in.zylker.example", box_k, box_h], message())
    assert tx.rcpt_codes == [250, 550, 250, 250]
    assert tx.codes == [250, 550, 250]
    assert tx.data[1][1].startswith(b"5.7.1")
    assert tx.noop[0] == 250
    assert gw.count("emails") == 1  # the repeated recipient is the same route: filed once


def test_smtp_single_reply(gw):
    box = gw.dropbox("hashimoto@zylker.example")
    tx = gw.smtp(SENDER, [box], message())
    assert tx.codes == [250]
    assert b"queue id" in tx.data[0][1]


def test_null_sender_accepted_at_mail(gw):
    box = gw.dropbox("hashimoto@zylker.example")
    with gw.lmtp_client() as client:
        client.ehlo_or_helo_if_needed()
        assert client.docmd("MAIL FROM:<>")[0] == 250
        assert client.rcpt(box)[0] == 250


def test_database_failure_answers_451_and_nothing_is_half_filed(gw):
    box = gw.dropbox("hashimoto@zylker.example")
    data = message(message_id="<retry-1@zylker.example>")
    with gw.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE email_raw RENAME TO email_raw_away"))
    try:
        tx = gw.lmtp(SENDER, [box, box], data)
        assert tx.codes == [451, 451]
        assert tx.data[0][1].startswith(b"4.3.0")
        tx = gw.smtp(SENDER, [box], data)
        assert tx.codes == [451]
        assert gw.count("deliveries") == 0 and gw.count("emails") == 0 and gw.count("leads") == 0
    finally:
        with gw.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE email_raw_away RENAME TO email_raw"))
    # The MTA's retry files it, once.
    assert gw.lmtp(SENDER, [box], data).codes == [250]
    assert gw.lmtp(SENDER, [box], data).codes == [250]
    assert gw.count("emails") == 1


def test_unparseable_message_554_per_recipient(gw):
    box_h = gw.dropbox("hashimoto@zylker.example")
    tx = gw.lmtp(SENDER, [box_h, box_h], b"")
    assert tx.codes == [554, 554]
    assert tx.data[0][1].startswith(b"5.6.0")
    assert gw.count("emails") == 0


def test_pipelined_commands_after_data(gw):
    box = gw.dropbox("hashimoto@zylker.example")
    body = message().replace(b"\r\n.", b"\r\n..")
    script = (
        b"LHLO client.example\r\n"
        b"MAIL FROM:<hashimoto@zylker.example>\r\n"
        + f"RCPT TO:<{box}>\r\n".encode()
        + b"DATA\r\n"
    )
    with socket.create_connection(("127.0.0.1", gw.lmtp_port), timeout=30) as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(script)
        lines = []
        while len([line for line in lines if line[3:4] == b" "]) < 4:
            lines.append(f.readline())
        assert lines[-1].startswith(b"354")
        # Message, end of data and the next commands in one write (RFC 2920).
        sock.sendall(body + b".\r\nNOOP\r\nQUIT\r\n")
        rest = [f.readline() for _ in range(3)]
    assert rest[0].startswith(b"250 2.0.0")
    assert rest[1].startswith(b"250")
    assert rest[2].startswith(b"221")


def test_bare_lf_dot_does_not_end_data(gw):
    """Only <CRLF>.<CRLF> ends DATA (SMTP smuggling, aiosmtpd 1.4.5 advisory)."""
    box = gw.dropbox("hashimoto@zylker.example")
    smuggled = message(body="hello") + b"\n.\nMAIL FROM:<evil@example.com>\r\n"
    # raw=True: sent as written, the bare LFs included (not re-quoted by the helper)
    tx = gw.lmtp(SENDER, [box], smuggled + b".\r\n", raw=True)
    assert tx.codes == [250]
    assert tx.noop[0] == 250
    raw = gw.cli("email", "raw", str(gw.export()["emails"][0]["id"])).stdout
    assert b"\n.\nMAIL FROM:<evil@example.com>" in raw


def test_other_sessions_get_replies_while_a_10mb_message_is_processed(gw):
    box = gw.dropbox("hashimoto@zylker.example")
    big = message(body="", attachments=[("big.bin", "application/octet-stream", b"\x01" * (7 * 1024 * 1024))])
    assert len(big) > 9 * 1024 * 1024
    results: dict[str, object] = {}

    def send_big() -> None:
        results["big"] = gw.lmtp(SENDER, [box], big).codes

    thread = threading.Thread(target=send_big)
    thread.start()
    small_latencies = []
    for i in range(5):
        started = time.monotonic()
        tx = gw.lmtp(SENDER, [box], message(subject=f"small {i}"))
        small_latencies.append(time.monotonic() - started)
        assert tx.codes == [250]
    thread.join(120)
    assert results["big"] == [250]
    # Generous bound: a blocked loop would hold the small sessions for the whole big one.
    assert max(small_latencies) < 10, small_latencies
