"""Hostile input end to end (issue 6 item 6): the corpus of malformed and tricky mail in
tests/data/mail/, big and deep mail generated at run time, and SMTP smuggling and
dot-stuffing over raw sockets to the LMTP and SMTP listeners.

Every delivery must end in 250, 550 5.7.1 or 554 5.6.0 as the case wants -- never a
451 for a parse problem, never a hang -- with the session still in step; what is
filed is decoded right and its raw bytes are kept exactly as sent.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from gateway.store import emails as stored_emails
from tests.helpers import message

CORPUS = Path(__file__).resolve().parent / "data" / "mail"
H = "hashimoto@zylker.example"
ALIAS = "service@in.zylker.example"
CUSTOMER = "charles@zillum.example"
HANG = 30.0  # seconds: any single transaction slower than this counts as a hang


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def stored(gw) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Every stored email (export form) with its text/html body and raw bytes."""
    emails = gw.export()["emails"]
    with gw.engine.connect() as conn:
        for email in emails:
            row = conn.execute(sa.text("SELECT text_body, html_body FROM emails WHERE id = :i"),
                               {"i": email["id"]}).one()
            email["text_body"], email["html_body"] = row
    for email in emails:
        email["raw"] = gw.app.database.reading(stored_emails.raw, email["id"])
    return emails


# ----------------------------------------------------------------------------------
# the corpus


@dataclass
class Case:
    file: str
    to: tuple[str, ...] = ("dropbox",)  # "dropbox" (hashimoto's) and/or "alias" (service@)
    codes: tuple[int, ...] = (250,)
    sender: str = H  # envelope sender ("" is the null reverse-path)
    subject: str | None = None
    body: tuple[str, ...] = ()  # substrings of the stored text body
    html: tuple[str, ...] = ()
    from_name: str | None = None
    message_id: Any = "unset"
    date: Any = "unset"
    attachments: list[dict[str, Any]] | None = None
    customers: tuple[str, ...] = ()  # leads the dropbox filing must link
    noise: bool = False  # a bounce or auto-reply to the alias: accepted, nothing created
    cli_raw: bool = False  # also compare `gateway email raw` (a subprocess: a few only)
    marks: list[Any] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.file.removesuffix(".eml") + ("" if self.sender == H else f"[from {self.sender or '<>'}]")


CASES = [
    # broken MIME
    Case("mime-missing-boundary.eml", to=("dropbox", "alias"), codes=(250, 250), subject="Missing boundary parameter",
         body=("First part: the boundary parameter is missing.",),
         attachments=[{"filename": "quote.pdf", "content_type": "application/pdf", "size": 13}],
         customers=(CUSTOMER,)),
    Case("mime-unterminated.eml", subject="Unterminated multipart", body=("Plain part of an unterminated message.",),
         html=("HTML part, cut off",)),
    Case("mime-wrong-boundary.eml", subject="Declared boundary never used",
         body=("The body uses another boundary than declared.",)),
    Case("mime-bad-base64.eml", to=("dropbox", "alias"), codes=(250, 250), subject="Bad base64",
         body=("Hello from a broken encoder, Grüße",)),
    Case("mime-bad-qp.eml", subject="Bad quoted-printable",
         body=("Grüße aus Köln, invalid escape =ZZ here, soft break and a lone = at the end",)),
    Case("mime-wrong-cte.eml", subject="Wrong transfer encodings",
         body=("Plain text under an unknown transfer encoding.", "QmFzZTY0IGRlY2xhcmVkIGFzIDdiaXQu")),
    # charsets
    Case("charset-sjis-labelled-utf8.eml", subject="Shift_JIS labelled as UTF-8",
         body=("お世話になっております。髙橋です。①の件、～よろしくお願いいたします。株式会社ゾーホー",)),
    Case("charset-undeclared.eml", subject="Undeclared charset",
         body=("Grüße aus München — déjà vu, naïve café, 見積書を添付いたします。",)),
    Case("charset-undeclared-cp932.eml", subject="Undeclared Shift_JIS body",
         body=("株式会社ゾーホーの橋本です。", "今後ともよろしくお願い申し上げます。")),
    Case("charset-unknown-name.eml", to=("dropbox", "alias"), codes=(250, 250),
         subject="Unbekannter Zeichensatz – Grüße", body=("Grüße, 日本語。",)),
    Case("charset-transform-codec.eml", subject="charset=base64 label", body=("Plain text under charset=base64.",)),
    # Japanese
    Case("ja-iso2022jp-split-subject.eml", to=("dropbox", "alias"), codes=(250, 250),
         subject="御見積書送付のご案内（第２版）", from_name="橋本 太郎",
         body=("橋本です。\nお見積書をお送りします。\n以上、よろしくお願いいたします。",), cli_raw=True),
    Case("ja-iso2022jp-nec-ext.eml", subject="①の件（㈱ゾーホー）", body=("①納期 ②価格 ③数量 ㈱ゾーホー №１２",)),
    Case("ja-cp932-body.eml", subject="髙橋様へ①のご連絡",
         body=("髙橋様\n\n①納期 ②価格 ③数量について ～ ご確認ください。㈱ゾーホー ⅰⅱⅲ",)),
    Case("ja-euc-jp.eml", subject="EUC-JPの件名です", body=("EUC-JPで書かれた本文です。表示できますか。",)),
    Case("ja-rfc2231-filenames.eml", subject="添付ファイル名のテスト", body=("三つのファイルを添付します。",),
         attachments=[
             {"filename": "見積書（最終版）.pdf", "content_type": "application/pdf", "size": 100},
             {"filename": "請求書_2026年11月.xlsx",
              "content_type": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "size": 50},
             {"filename": "納品書.txt", "content_type": "text/plain", "size": 6},
         ]),
    # NUL bytes, long lines, 8-bit and duplicate headers
    Case("nul-bytes.eml", to=("dropbox", "alias"), codes=(250, 250), subject="NUL in the subject",
         body=("beforeafter\n", "end of NUL test"), cli_raw=True),
    Case("long-lines.eml", subject="Long subject " + "x" * 1500,
         body=("".join(f"{i:04d}" for i in range(1250)) + "\nshort line after",)),
    Case("headers-8bit.eml", to=("dropbox", "alias"), codes=(250, 250), subject="生の8ビット件名 – Grüße",
         from_name="橋本 太郎", body=("本文はUTF-8です。",),
         customers=("takahashi@zillum.example", "juergen@zillum.example"), cli_raw=True),
    Case("headers-duplicate.eml", subject="First subject", message_id="dup-first@corpus.zylker.example",
         date="2026-11-23T01:00:00Z", body=("Body of a message with every header twice.",)),
    # missing From / Date / Message-ID
    Case("missing-from.eml", to=("dropbox", "alias"), codes=(250, 250), subject="No From header",
         body=("The envelope sender stands in for the missing From.",)),
    Case("missing-from.eml", sender=CUSTOMER, codes=(550,)),  # unregistered envelope sender
    Case("missing-date-and-message-id.eml", to=("dropbox", "alias"), codes=(250, 250),
         subject="No Date, no Message-ID", message_id=None, date=None, body=("Neither Date nor Message-ID.",)),
    Case("no-header-section.eml", to=("dropbox", "alias"), codes=(554, 554)),
    # bounces and auto-replies to the alias: 250, dropped, nothing created
    Case("dsn-bounce.eml", to=("alias",), sender="deliveries@mx.zillum.example", noise=True),
    Case("dsn-bounce.eml", to=("alias",), sender="", noise=True),
    Case("auto-reply-auto-submitted.eml", to=("alias",), sender=CUSTOMER, noise=True),
    Case("auto-reply-x-autoreply.eml", to=("alias",), sender=CUSTOMER, noise=True),
    Case("auto-reply-precedence-bulk.eml", to=("alias",), sender=CUSTOMER, noise=True),
]


def test_corpus_files_are_small_crlf_and_all_used() -> None:
    files = {p.name for p in CORPUS.glob("*.eml")}
    assert files == {c.file for c in CASES}
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    for name in files:
        data = corpus(name)
        assert len(data) <= 12 * 1024, name
        assert data.endswith(b"\r\n"), name
        assert b"\n" not in data.replace(b"\r\n", b""), f"{name}: bare LF"
        assert f"`{name}`" in readme, f"{name} is not described in README.md"


def _status(reply: tuple[int, bytes]) -> bytes:
    return reply[1][:5]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_corpus(gw, case: Case) -> None:  # type: ignore[no-untyped-def]
    data = corpus(case.file)
    rcpts = [gw.dropbox(H) if kind == "dropbox" else ALIAS for kind in case.to]
    started = time.monotonic()
    tx = gw.lmtp(case.sender, rcpts, data)
    assert time.monotonic() - started < HANG
    assert tx.rcpt_codes == [250] * len(rcpts)
    assert tx.codes == list(case.codes), tx.data
    assert tx.noop is not None and tx.noop[0] == 250  # one reply per recipient, no more
    for reply in tx.data:
        assert reply[0] != 451
        if reply[0] == 550:
            assert _status(reply) == b"5.7.1"
        elif reply[0] == 554:
            assert _status(reply) == b"5.6.0"
        else:
            assert reply[0] == 250 and _status(reply) == b"2.0.0"

    emails = stored(gw)
    if case.noise or 250 not in case.codes:
        # Refused, or noise outside a thread (accepted and dropped): nothing at all.
        assert emails == []
        assert gw.count("records") == 0 and gw.count("contacts") == 0 and gw.count("leads") == 0
        return

    assert sorted(e["source"] for e in emails) == sorted(case.to)  # stored once per route
    for email in emails:
        assert email["raw"] == data  # byte for byte
        if case.subject is not None:
            assert email["subject"] == case.subject
        for text in case.body:
            assert text in email["text_body"], (text, email["text_body"])
        for text in case.html:
            assert text in email["html_body"], (text, email["html_body"])
        if case.from_name is not None:
            assert email["from_name"] == case.from_name
        if case.message_id != "unset":
            assert email["message_id"] == case.message_id
        if case.date != "unset":
            assert email["date"] == case.date
        if case.attachments is not None:
            assert email["attachments"] == case.attachments
        assert email["kind"] == "message"
    if "alias" in case.to:
        (record,) = gw.export()["records"]
        assert record["pipeline"] == "Service"
        assert record["title"] == (case.subject or "(no subject)")
    if case.customers:
        leads = {lead["email"] for lead in gw.export()["leads"]}
        assert set(case.customers) <= leads
    if case.cli_raw:
        assert gw.cli("email", "raw", str(emails[0]["id"])).stdout == data


# ----------------------------------------------------------------------------------
# generated: size, depth and count are the point


def _head(subject_line: bytes, extra: bytes = b"", ctype: bytes = b"text/plain; charset=utf-8") -> bytes:
    return (b"From: Taro Hashimoto <hashimoto@zylker.example>\r\nTo: Charles <charles@zillum.example>\r\n"
            + subject_line + b"\r\nDate: Mon, 23 Nov 2026 10:00:00 +0900\r\nMIME-Version: 1.0\r\n"
            + b"Content-Type: " + ctype + b"\r\n" + extra)


def _file_one(gw, data: bytes, rcpts: list[str] | None = None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    rcpts = rcpts or [gw.dropbox(H)]
    started = time.monotonic()
    tx = gw.lmtp(H, rcpts, data)
    assert time.monotonic() - started < HANG
    assert tx.codes == [250] * len(rcpts), tx.data
    assert tx.noop is not None and tx.noop[0] == 250
    emails = stored(gw)
    assert len(emails) == len(rcpts)
    for email in emails:
        assert email["raw"] == data
    return emails[0]


def test_huge_header_many_fields(gw) -> None:  # type: ignore[no-untyped-def]
    filler = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"v" * 40) for i in range(20_000))  # ~1.2 MB
    data = _head(b"Subject: many header fields", filler) + b"\r\nbody after 20000 header fields\r\n"
    email = _file_one(gw, data, [gw.dropbox(H), ALIAS])
    assert email["subject"] == "many header fields"
    assert "body after 20000 header fields" in email["text_body"]


def test_huge_folded_subject(gw) -> None:  # type: ignore[no-untyped-def]
    # One header of ~1 MB: 8,000 UTF-8 encoded words on folded lines.
    piece = "見積書の件について、"
    words = [f"=?UTF-8?B?{base64.b64encode(f'{piece}{i}'.encode()).decode()}?=" for i in range(8_000)]
    data = _head(("Subject: " + "\r\n ".join(words)).encode()) + b"\r\nbody\r\n"
    assert len(data) > 500_000
    email = _file_one(gw, data)
    assert email["subject"] == "".join(f"{piece}{i}" for i in range(8_000))


def test_deep_nesting(gw) -> None:  # type: ignore[no-untyped-def]
    depth = 3000
    body = b"".join(b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (i, i + 1) for i in range(depth))
    body += b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep text\r\n" % depth
    body += b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth + 1)))
    data = _head(b"Subject: deep nesting", ctype=b'multipart/mixed; boundary="b0"') + b"\r\n" + body
    email = _file_one(gw, data, [gw.dropbox(H), ALIAS])
    assert email["subject"] == "deep nesting"


def test_shallow_nesting_text_is_found(gw) -> None:  # type: ignore[no-untyped-def]
    depth = 40  # below the parser's depth cap: the text part is reached
    body = b"".join(b'--b%d\r\nContent-Type: multipart/alternative; boundary="b%d"\r\n\r\n' % (i, i + 1) for i in range(depth))
    body += b"--b%d\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" % depth + "深いテキスト\r\n".encode()
    body += b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth + 1)))
    data = _head(b"Subject: nested 40", ctype=b'multipart/mixed; boundary="b0"') + b"\r\n" + body
    email = _file_one(gw, data)
    assert "深いテキスト" in email["text_body"]


def test_many_parts(gw) -> None:  # type: ignore[no-untyped-def]
    count = 6000  # above the parser's part cap
    body = b"--p\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst part text\r\n"
    body += b"".join(b"--p\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
                     b"filename=\"f%d.bin\"\r\n\r\nxx\r\n" % i for i in range(count))
    body += b"--p--\r\n"
    data = _head(b"Subject: many parts", ctype=b'multipart/mixed; boundary="p"') + b"\r\n" + body
    email = _file_one(gw, data)
    assert email["subject"] == "many parts"
    assert "first part text" in email["text_body"]
    assert 0 < len(email["attachments"]) < count  # the cap stopped the walk: not all 6000 were listed
    assert email["attachments"][0] == {"filename": "f0.bin", "content_type": "application/octet-stream", "size": 2}


def test_long_lines_over_998_in_a_big_body(gw) -> None:  # type: ignore[no-untyped-def]
    line = ("長い行" * 1000).encode()  # 9,000 octets on one line
    data = _head(b"Subject: long lines") + b"\r\n" + (line + b"\r\n") * 50
    email = _file_one(gw, data)
    assert ("長い行" * 1000) in email["text_body"]


# ----------------------------------------------------------------------------------
# SMTP smuggling and dot-stuffing over raw sockets


class RawClient:
    """A line-level SMTP/LMTP client that sends exactly the bytes it is given."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=HANG)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def reply(self) -> tuple[int, list[bytes]]:
        lines = []
        while True:
            line = self.file.readline()
            assert line, "connection closed"
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), lines

    def cmd(self, line: bytes) -> tuple[int, list[bytes]]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()


@contextlib.contextmanager
def raw_session(gw, lmtp: bool) -> Iterator[RawClient]:  # type: ignore[no-untyped-def]
    client = RawClient(gw.lmtp_port if lmtp else gw.smtp_port)
    try:
        assert client.reply()[0] == 220
        assert client.cmd(b"LHLO client.example" if lmtp else b"EHLO client.example")[0] == 250
        yield client
        client.sock.sendall(b"QUIT\r\n")
    finally:
        client.close()


def _send(gw, lmtp: bool, rcpts: list[str], wire: bytes) -> list[tuple[int, list[bytes]]]:  # type: ignore[no-untyped-def]
    """MAIL, RCPT..., DATA, then ``wire`` verbatim; the DATA replies, then proof of step."""
    with raw_session(gw, lmtp) as c:
        assert c.cmd(f"MAIL FROM:<{H}>".encode())[0] == 250
        for rcpt in rcpts:
            assert c.cmd(f"RCPT TO:<{rcpt}>".encode())[0] == 250
        assert c.cmd(b"DATA")[0] == 354
        c.sock.sendall(wire)
        replies = [c.reply() for _ in range(len(rcpts) if lmtp else 1)]
        # The next reply is NOOP's own ("250 OK"): nothing smuggled got answered.
        assert c.cmd(b"NOOP") == (250, [b"250 OK\r\n"])
        return replies


LISTENERS = [pytest.param(True, id="lmtp"), pytest.param(False, id="smtp")]
SMUGGLING = [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\n.", b".\n"]


@pytest.mark.parametrize("lmtp", LISTENERS)
@pytest.mark.parametrize("dot", SMUGGLING, ids=lambda d: repr(d).strip("b'").replace("\\", ""))
def test_smuggling_never_splits_one_message_into_two(gw, lmtp: bool, dot: bytes) -> None:  # type: ignore[no-untyped-def]
    rcpts = [gw.dropbox(H), ALIAS]
    carrier = message(subject="carrier", body="first line").rstrip(b"\r\n")
    smuggled = (b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<" + ALIAS.encode() + b">\r\nDATA\r\n"
                b"From: evil@attacker.example\r\nTo: " + ALIAS.encode() + b"\r\nSubject: smuggled\r\n\r\nsmuggled body")
    content = carrier + dot + smuggled + dot + b"tail"
    assert b"\r\n.\r\n" not in b"\r\n" + content + b"\r\n"  # the only real end is the one below
    replies = _send(gw, lmtp, rcpts, content + b"\r\n.\r\n")
    assert [code for code, _ in replies] == [250] * len(replies)
    emails = stored(gw)
    assert sorted(e["source"] for e in emails) == ["alias", "dropbox"]  # one message, once per route
    for email in emails:
        assert email["subject"] == "carrier"
        assert email["raw"] == content + b"\r\n"
        assert b"Subject: smuggled" in email["raw"]
    assert gw.count("records") == 1
    assert "evil@attacker.example" not in {c["email"] for c in gw.export()["contacts"]}


@pytest.mark.parametrize("lmtp", LISTENERS)
def test_dot_stuffing_round_trips(gw, lmtp: bool) -> None:  # type: ignore[no-untyped-def]
    head = message(subject="dots", body="x").split(b"\r\n\r\n", 1)[0]
    lines = [b"first", b".leading dot", b"..", b".", b"...", b". space", b"last ."]
    original = head + b"\r\n\r\n" + b"".join(line + b"\r\n" for line in lines)
    stuffed = b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in original.split(b"\r\n"))
    assert stuffed.endswith(b"\r\n")
    replies = _send(gw, lmtp, [gw.dropbox(H)], stuffed + b".\r\n")
    assert [code for code, _ in replies] == [250]
    (email,) = stored(gw)
    assert email["raw"] == original
    assert email["text_body"] == "first\n.leading dot\n..\n.\n...\n. space\nlast .\n"


@pytest.mark.parametrize("lmtp", LISTENERS)
def test_pipelined_transaction_after_the_real_end_is_a_second_message(gw, lmtp: bool) -> None:  # type: ignore[no-untyped-def]
    """The counterpart: a second transaction after a real <CRLF>.<CRLF> is one, in step."""
    box = gw.dropbox(H)
    first = message(subject="first", body="one")
    second = message(subject="second", body="two")
    with raw_session(gw, lmtp) as c:
        assert c.cmd(f"MAIL FROM:<{H}>".encode())[0] == 250
        assert c.cmd(f"RCPT TO:<{box}>".encode())[0] == 250
        assert c.cmd(b"DATA")[0] == 354
        c.sock.sendall(first + b".\r\n" + f"MAIL FROM:<{H}>\r\nRCPT TO:<{box}>\r\nDATA\r\n".encode())
        assert c.reply()[0] == 250  # end of the first message
        assert c.reply()[0] == 250  # MAIL
        assert c.reply()[0] == 250  # RCPT
        assert c.reply()[0] == 354  # DATA
        c.sock.sendall(second + b".\r\n")
        assert c.reply()[0] == 250
        assert c.cmd(b"NOOP") == (250, [b"250 OK\r\n"])
    assert sorted(e["subject"] for e in stored(gw)) == ["first", "second"]
