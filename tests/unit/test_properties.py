"""Property-based tests (hypothesis) for hostile input: address normalisation,
recipient routing, MIME parsing and the chunked DATA reader (issue 6 item 6).

Examples are kept modest (100-300 per property) so the file runs in seconds; the
example database is off so nothing is written into the working tree.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from gateway.addresses import normalise
from gateway.errors import MalformedMessage
from gateway.parse import parse_message
from gateway.message import ParsedMessage
from gateway.routing import AliasRoute, DropboxCandidate, classify
from gateway.rules.loader import load_rules
from gateway.smtp.server import MessageTooBig, read_data

REPO = Path(__file__).resolve().parents[2]
RULES = load_rules(REPO / "rules")

COMMON = dict(database=None, suppress_health_check=[HealthCheck.too_slow])
FAST = settings(max_examples=300, deadline=None, **COMMON)
PARSE = settings(max_examples=200, deadline=2000, **COMMON)  # 2 s per example at most

_SURROGATE = re.compile("[\ud800-\udfff]")


# --------------------------------------------------------------------------
# (a) gateway.addresses.normalise

local_chars = st.sampled_from(list("abcxyzABCXYZ0189.-_+=!#$%&'*/?^`{|}~\"\\ ")) | st.characters()
domain_labels = st.lists(
    st.text(st.sampled_from(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")), min_size=1, max_size=12)
    | st.sampled_from(["in", "zylker", "example", "ZYLKER", "Müller", "日本", "ﬁ", "xn--zca", "ß", "İ"]),
    min_size=1, max_size=4,
).map(".".join)
addressish = st.builds(
    lambda pre, local, dom, dot, post: f"{pre}{local}@{dom}{dot}{post}",
    st.sampled_from(["", " ", "<", " <", "\t"]),
    st.text(local_chars, max_size=20),
    domain_labels,
    st.sampled_from(["", ".", ".."]),
    st.sampled_from(["", " ", ">", "> "]),
)
any_address = st.text() | addressish


@FAST
@given(any_address)
@example("A@ß.de")
@example("x@XN--ZCA.de")
@example("<Hashimoto@ZYLKER.example.>")
def test_normalise_never_raises_and_is_idempotent(address: str) -> None:
    once = normalise(address)
    assert isinstance(once, str)
    assert normalise(once) == once


# Case-insensitivity, over the case mappings that keep the length of every
# character (ASCII and most scripts); full Unicode case changes such as
# "ß".upper() == "SS" are not equal spellings of one mailbox anyway.
def _simple_case(text: str) -> bool:
    return all(len(c.upper()) == 1 and len(c.lower()) == 1 and c.upper().lower() == c.lower() for c in text)


@FAST
@given(any_address.filter(_simple_case))
@example("Hashimoto@In.Zylker.Example")
@example("SERVICE@IN.ZYLKER.EXAMPLE")
def test_normalise_is_case_insensitive(address: str) -> None:
    expected = normalise(address)
    assert normalise(address.upper()) == expected
    assert normalise(address.lower()) == expected
    assert normalise(address.swapcase()) == expected


# --------------------------------------------------------------------------
# (b) gateway.routing.classify

gateway_domains = sorted(RULES.by_gateway_domain)
alias_addresses = sorted(RULES.aliases)
random_case = st.builds(
    lambda text, flips: "".join(c.upper() if f else c for c, f in zip(text, flips + [False] * len(text))),
    st.sampled_from(alias_addresses + [f"bcc-{'a' * 32}@{d}" for d in gateway_domains]),
    st.lists(st.booleans(), max_size=80),
)
near_gateway = st.builds(
    lambda local, dom: f"{local}@{dom}",
    st.one_of(
        st.text(max_size=30),
        st.sampled_from(["sales", "service", "help", "bcc-", "bcc-abc", "postmaster"]),
        st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz234567ABC01"), min_size=0, max_size=70).map("bcc-".__add__),
    ),
    st.sampled_from(gateway_domains + ["zylker.example", "in.zylker.example.evil", "evil.in.zylker.example",
                                        "IN.ZYLKER.EXAMPLE.", "in.zylker.example ", "xn--in.zylker.example"]),
)


@FAST
@given(st.one_of(st.text(), addressish, random_case, near_gateway))
@example("service@in.zylker.example")
@example("bcc-" + "a" * 32 + "@in.zylker.example")
@example("service@in.zylker.example@evil.example")
@example("evil.example@service@in.zylker.example")
def test_classify_routes_only_gateway_domains(address: str) -> None:
    found = classify(RULES, address)
    if found is None:
        return
    domain = normalise(address).rpartition("@")[2]
    assert domain in RULES.by_gateway_domain
    assert found.org_id == RULES.by_gateway_domain[domain]
    if isinstance(found, AliasRoute):
        assert normalise(address) in RULES.aliases
        assert found.alias is RULES.aliases[normalise(address)]
    else:
        assert isinstance(found, DropboxCandidate)
        assert re.fullmatch(r"[a-z2-7]{16,64}", found.token)
        assert normalise(address) == f"bcc-{found.token}@{domain}"


@FAST
@given(random_case)
def test_classify_is_case_insensitive_for_gateway_addresses(address: str) -> None:
    found = classify(RULES, address)
    assert found is not None
    assert found == classify(RULES, address.lower())


# --------------------------------------------------------------------------
# (c) gateway.parse.parse_message


def _strings(value: object):
    """Every str inside a ParsedMessage (dataclasses, tuples)."""
    if isinstance(value, str):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _strings(getattr(value, f.name))
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _strings(item)


def _check_parsed(raw: bytes) -> ParsedMessage | None:
    try:
        parsed = parse_message(raw)
    except MalformedMessage:
        return None
    assert isinstance(parsed, ParsedMessage)
    assert parsed.raw == raw
    for text in _strings(parsed):
        assert "\x00" not in text, text
        assert not _SURROGATE.search(text), text
    for a in parsed.attachments:
        assert a.size >= 0
    return parsed


@PARSE
@given(st.binary(max_size=4000))
@example(b"")
@example(b"\r\n\r\n")
@example(b"\x00\x00\x00")
@example(b"From: \xff\xfe\x00\r\nSubject: =?utf-8?b?7aCA?=\r\n\r\n\x00")
def test_parse_arbitrary_bytes(raw: bytes) -> None:
    _check_parsed(raw)


header_line_bytes = st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@PARSE
@given(st.lists(st.tuples(st.sampled_from([b"From", b"To", b"Cc", b"Subject", b"Date", b"Message-ID",
                                           b"Content-Type", b"In-Reply-To", b"References", b"X-Junk"]),
                          header_line_bytes), min_size=1, max_size=12),
       st.binary(max_size=2000))
def test_parse_arbitrary_header_values(fields: list[tuple[bytes, bytes]], body: bytes) -> None:
    raw = b"".join(name + b": " + value + b"\r\n" for name, value in fields) + b"\r\n" + body
    parsed = _check_parsed(raw)
    assert parsed is not None  # there is a header section: never "unparseable"


CHARSETS = ["utf-8", "UTF-8", "us-ascii", "iso-8859-1", "shift_jis", "Shift_JIS", "cp932", "iso-2022-jp",
            "euc-jp", "gb2312", "big5", "koi8-r", "utf-16", "utf-7", "x-unknown", "unknown-8bit",
            "", "utf-8*ja", "\"utf-8\"", "iso-2022-jp-2", "windows-1252", "ks_c_5601-1987", "utf-32"]
# Labels that name Python codecs which are not text encodings (bytes-to-bytes transforms)
# or that refuse errors="replace": see test_parse_charset_label_naming_a_non_text_codec.
NON_TEXT_CODEC_LABELS = ["base64", "rot13", "zlib", "hex", "bz2", "uu", "quopri", "idna", "punycode", "undefined"]
CTES = ["7bit", "8bit", "binary", "base64", "BASE64", "quoted-printable", "x-uuencode", "bogus", ""]
TEXTS = ["hello", "見積書送付のご案内", "髙橋様 ①②③ ～", "Grüße", "🙏", "\x00nul", "a" * 300, "=?utf-8?q?x?=", ""]


@st.composite
def header_value(draw) -> bytes:
    kind = draw(st.integers(0, 3))
    text = draw(st.sampled_from(TEXTS) | st.text(max_size=40))
    if kind == 0:  # raw 8-bit
        return text.encode(draw(st.sampled_from(["utf-8", "cp932", "latin-1"])), "replace")
    charset = draw(st.sampled_from(CHARSETS))
    try:
        data = text.encode(charset or "utf-8")
    except (LookupError, UnicodeError, TypeError, ValueError):
        data = text.encode("utf-8", "surrogatepass")
    if kind == 1:  # encoded word, maybe truncated or split
        enc = base64.b64encode(data).decode()
        word = f"=?{charset}?B?{enc}?="
        cut = draw(st.integers(0, len(word)))
        return (word[:cut] + "\r\n " + word[cut:]).encode() if draw(st.booleans()) else word.encode()
    if kind == 2:
        return f"=?{charset}?Q?{binascii.b2a_qp(data, header=True).decode()}?=".encode()
    return draw(header_line_bytes)


@st.composite
def payload(draw, cte: str, charset: str) -> bytes:
    text = draw(st.sampled_from(TEXTS) | st.text(max_size=200))
    codec = charset.strip('"').split("*")[0] or "utf-8"
    try:
        data = text.encode(codec)
    except (LookupError, UnicodeError, TypeError, ValueError):
        data = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data = draw(st.binary(max_size=200))
    low = cte.lower()
    if low == "base64":
        data = base64.encodebytes(data)
    elif low == "quoted-printable":
        data = binascii.b2a_qp(data)
    if draw(st.integers(0, 4)) == 0:  # corrupt it
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(st.sampled_from([b"!!", b"=", b"=ZZ", b"\x00", b"\xff", b"\r", b"\n.\n", b"--"])) + data[pos:]
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") if draw(st.booleans()) else data


BOUNDARY = st.one_of(
    st.text(st.sampled_from("abcXYZ0189'()+_,-./:=? "), min_size=1, max_size=30),
    st.sampled_from(["b1", "=_Part_0_1", "----=_NextPart", "a b", "--", "b\"q"]),
)


@st.composite
def mime_part(draw, depth: int) -> bytes:
    headers: list[bytes] = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([b"Content-Description", b"X-Junk", b"Content-ID", b"MIME-Version"]))
        headers.append(name + b": " + draw(header_value()))
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(CTES))
    if depth > 0 and draw(st.integers(0, 2)) == 0:
        sub = draw(st.sampled_from(["mixed", "alternative", "related", "digest", "report", "signed"]))
        boundary = draw(BOUNDARY)
        declared = boundary if draw(st.integers(0, 4)) else draw(st.sampled_from(["", "other", boundary + "x"]))
        quoted = draw(st.booleans())
        param = f'; boundary="{declared}"' if quoted else (f"; boundary={declared}" if declared else "")
        extra = "; report-type=delivery-status" if sub == "report" else ""
        headers.append(f"Content-Type: multipart/{sub}{param}{extra}".encode("utf-8"))
        if cte and draw(st.booleans()):
            headers.append(b"Content-Transfer-Encoding: " + cte.encode())
        children = draw(st.lists(mime_part(depth - 1), min_size=0, max_size=4))
        body = draw(st.sampled_from([b"", b"preamble\r\n"]))
        delim = b"--" + boundary.encode("utf-8")
        for child in children:
            body += delim + draw(st.sampled_from([b"\r\n", b"  \r\n", b"\n"])) + child + b"\r\n"
        if draw(st.integers(0, 3)):  # sometimes unterminated
            body += delim + b"--" + draw(st.sampled_from([b"\r\n", b"", b"\r\nepilogue"]))
    else:
        ctype = draw(st.sampled_from(["text/plain", "text/html", "application/pdf", "image/png",
                                      "message/rfc822", "text/x-unknown", "text", "garbage", ""]))
        if ctype:
            params = f"; charset={charset}" if draw(st.booleans()) else ""
            headers.append(f"Content-Type: {ctype}{params}".encode("utf-8"))
        if draw(st.booleans()):
            name = draw(st.sampled_from(TEXTS))
            how = draw(st.integers(0, 2))
            if how == 0:
                value = b'attachment; filename="' + name.encode("utf-8") + b'"'
            elif how == 1:
                enc = "".join(f"%{b:02X}" for b in name.encode("utf-8"))
                value = ("attachment; filename*0*=" + charset + "''" + enc[:9] + ";\r\n filename*1*=" + enc[9:]).encode()
            else:
                value = b"inline; filename=" + draw(header_value())
            headers.append(b"Content-Disposition: " + value)
        if cte:
            headers.append(b"Content-Transfer-Encoding: " + cte.encode())
        body = draw(payload(cte, charset))
    head = b"\r\n".join(headers)
    return head + (b"\r\n\r\n" if headers else b"\r\n") + body


@st.composite
def mime_message(draw) -> bytes:
    top = [
        b"From: " + draw(st.sampled_from([b"Taro <hashimoto@zylker.example>", b"", b"<>", b"\xe6\xa9\x8b\xe6\x9c\xac <h@x>"])),
        b"Subject: " + draw(header_value()),
        b"Message-ID: " + draw(st.sampled_from([b"<a@b>", b"", b"<<>>", b"a@b", b"\x00<x@y>"])),
        b"Date: " + draw(st.sampled_from([b"Mon, 23 Nov 2026 10:00:00 +0900", b"", b"yesterday", b"Mon, 99 Foo 99999 99:99:99 +9999"])),
    ]
    top = draw(st.permutations(top))
    part = draw(mime_part(depth=draw(st.integers(0, 4))))
    return b"\r\n".join(top) + b"\r\n" + part


@PARSE
@given(mime_message())
def test_parse_structured_broken_mime(raw: bytes) -> None:
    parsed = _check_parsed(raw)
    assert parsed is not None  # a header section is always there


@pytest.mark.parametrize("label", NON_TEXT_CODEC_LABELS)
def test_parse_charset_label_naming_a_non_text_codec(label: str) -> None:
    raw = (b"From: a@b.example\r\nSubject: s\r\nContent-Type: text/plain; charset=" + label.encode()
           + b"\r\n\r\n!!hello \xff\r\n")
    parsed = _check_parsed(raw)
    assert parsed is not None
    assert "hello" in parsed.text_body


@settings(max_examples=30, deadline=2000, **COMMON)
@given(st.integers(1, 3000), st.sampled_from(["mixed", "alternative"]), st.booleans())
def test_parse_deep_nesting_is_fast(depth: int, sub: str, close: bool) -> None:
    body = b""
    for i in range(depth):
        body += b"--b%d\r\nContent-Type: multipart/%s; boundary=\"b%d\"\r\n\r\n" % (i, sub.encode(), i + 1)
    body += b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep\r\n" % depth
    if close:
        for i in reversed(range(depth + 1)):
            body += b"--b%d--\r\n" % i
    raw = b'From: a@b.example\r\nContent-Type: multipart/mixed; boundary="b0"\r\n\r\n' + body
    assert _check_parsed(raw) is not None


# --------------------------------------------------------------------------
# (d) gateway.smtp.server.read_data


def stuffed(body: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency: a leading "." on a line is doubled."""
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..")


line = st.one_of(
    st.binary(max_size=60),
    st.sampled_from([b".", b"..", b".x", b"\n.\n", b".\n", b"\r.", b"\r", b"\n", b"\r\n.\r\n", b"...", b""]),
).map(lambda b: b.replace(b"\r\n", b"\n"))  # a line holds no CRLF of its own
bodies = st.lists(line, max_size=30).map(lambda lines: b"".join(x + b"\r\n" for x in lines))


async def _feed_and_read(wire: bytes, cuts: list[int], limit: int | None) -> tuple[bytes | None, bytes]:
    reader = asyncio.StreamReader()
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})

    async def feed() -> None:
        for a, b in zip(points, points[1:]):
            reader.feed_data(wire[a:b])
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    try:
        body: bytes | None = await read_data(reader, limit)
    except MessageTooBig:
        body = None
    await feeder
    rest = await reader.read()
    return body, rest


TRAILERS = st.sampled_from([b"", b"QUIT\r\n", b"NOOP\r\nRSET\r\n", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n"])


@FAST
@given(bodies, st.lists(st.integers(0, 10_000), max_size=8), TRAILERS)
@example(b"", [], b"")
@example(b".\r\n", [1, 2], b"QUIT\r\n")
@example(b"..\r\n.x\r\n", [3], b"")
@example(b"a\n.\nMAIL FROM:<e@x>\r\n", [2, 3, 4], b"QUIT\r\n")
def test_read_data_unstuffs_and_leaves_the_rest(body: bytes, cuts: list[int], trailer: bytes) -> None:
    wire = stuffed(body) + b".\r\n" + trailer
    got, rest = asyncio.run(_feed_and_read(wire, cuts, None))
    assert got == body
    assert rest == trailer


@FAST
@given(bodies, st.lists(st.integers(0, 10_000), max_size=8), st.integers(0, 400), TRAILERS)
def test_read_data_limit_on_stuffed_free_bodies(body: bytes, cuts: list[int], limit: int, trailer: bytes) -> None:
    # Bodies without lines starting with ".": wire size == message size.
    body = body.replace(b"\r\n.", b"\r\n,")
    if body.startswith(b"."):
        body = b"," + body[1:]
    wire = stuffed(body) + b".\r\n" + trailer
    got, rest = asyncio.run(_feed_and_read(wire, cuts, limit))
    assert rest == trailer  # read to the end either way: the session stays in step
    if len(body) > limit:
        assert got is None  # MessageTooBig
    else:
        assert got == body


@settings(max_examples=100, deadline=None, **COMMON)
@given(bodies, st.lists(st.integers(0, 10_000), max_size=8), st.integers(0, 400))
@example(b".\r\n", [], 3)
def test_read_data_limit_counts_the_unstuffed_message(body: bytes, cuts: list[int], limit: int) -> None:
    wire = stuffed(body) + b".\r\n"
    got, rest = asyncio.run(_feed_and_read(wire, cuts, limit))
    assert rest == b""
    if len(body) > limit:
        assert got is None
    else:
        assert got == body


@settings(max_examples=20, deadline=None, **COMMON)
@given(st.integers(1, 64), st.integers(1, 5))
def test_read_data_big_message_refused_after_reading_to_the_end(kib: int, parts: int) -> None:
    body = (b"y" * 1000 + b"\r\n") * kib
    limit = len(body) - 1
    wire = body + b".\r\nQUIT\r\n"
    got, rest = asyncio.run(_feed_and_read(wire, [len(wire) * i // parts for i in range(parts)], limit))
    assert got is None and rest == b"QUIT\r\n"
    got, rest = asyncio.run(_feed_and_read(wire, [len(wire) * i // parts for i in range(parts)], limit + 1))
    assert got == body and rest == b"QUIT\r\n"


# --------------------------------------------------------------------------
# MAIL/RCPT paths: the fast parser agrees with aiosmtpd's wherever it answers

_path_chars = st.sampled_from(list("ab.-_+@<>\"[]: \t\r\n()\\=,;Z9")) | st.characters()


@FAST
@given(st.text(_path_chars, max_size=40))
@example("<a.b+c@x-y.z> SIZE=100 BODY=8BITMIME")
@example("<a@b>\tX")
@example("<a..b@c>")
@example("<a@b.>")
def test_fast_path_parser_agrees_with_aiosmtpd(arg: str) -> None:
    from aiosmtpd.smtp import SMTP

    from gateway.smtp.server import fast_getaddr

    reference = SMTP.__new__(SMTP)
    reference.local_part_limit = 0
    found = fast_getaddr(arg)
    if found is not None:
        assert found == SMTP._getaddr(reference, arg)


def test_fast_path_parser_takes_the_common_paths() -> None:
    from gateway.smtp.server import fast_getaddr

    assert fast_getaddr("<hashimoto@zylker.example> SIZE=1024") == ("hashimoto@zylker.example", "SIZE=1024")
    assert fast_getaddr("<bcc-abc123@crm.zylker.example>") == ("bcc-abc123@crm.zylker.example", "")
    assert fast_getaddr('<"quoted"@b.example>') is None  # left to aiosmtpd


_header_chars = st.sampled_from(list("ab Z9.-_+@<>\",;:()[]\\=?\t")) | st.characters()


@FAST
@given(st.lists(st.text(_header_chars, max_size=40), min_size=1, max_size=3))
@example(["Taro Hashimoto <h@z.example>, b@c.example"])
@example(["  Taro   Hashimoto   <h@z>  "])
@example([",a@b"])
@example(["a@b,"])
def test_plain_address_fast_path_agrees_with_getaddresses(values: list[str]) -> None:
    import email.utils

    from gateway.parse import plain_addresses

    found = plain_addresses(values)
    if found is not None:
        assert found == email.utils.getaddresses(values)


# An attachment's size is counted without decoding it (gateway/parse/mime.py
# payload_size): it must be what decoding gives, for good and broken base64 alike.
base64ish = st.one_of(
    st.binary(max_size=300).map(lambda b: base64.encodebytes(b)),
    st.binary(max_size=300).map(lambda b: base64.b64encode(b).rstrip(b"=")),
    st.text("ABCDEFabcdef0123+/=\r\n \t-_.*", max_size=200).map(str.encode),
    st.binary(max_size=200),
)


@FAST
@given(base64ish)
def test_base64_size_without_decoding_is_the_decoded_size(body: bytes) -> None:
    from gateway.parse.mime import _b64decode, _b64size

    assert _b64size(body) == len(_b64decode(body))
