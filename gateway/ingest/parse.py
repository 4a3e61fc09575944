"""Turn the raw bytes of one received e-mail into an immutable :class:`ParsedMessage`.

Contract: :func:`parse_message` never raises anything but
:class:`gateway.errors.MalformedMessage`, and raises that only when there is
nothing to salvage (no bytes, or no header section at all).  Everything else
(broken MIME, bad base64, unknown charsets, NUL bytes, very long lines,
absurd nesting, missing or bad Message-ID/Date) is parsed as well as possible.

Why the MIME structure is not taken from ``mailparser.parse_from_bytes``:

* mail-parser wraps the stdlib ``email`` feed parser, which recurses once per
  ``multipart/*`` nesting level (nested generators) and ``Message.walk()``
  recurses again: a 1000-level nested message raises ``RecursionError``
  (mail-parser turns it into ``MailParserRecursionError``) after ~0.6 s of
  work, i.e. we would lose the whole message and burn CPU.  The stdlib
  fallback (``email.message_from_bytes``) has exactly the same problem, so a
  fallback does not help.
* mail-parser decodes text bodies itself and turns Shift_JIS-labelled CP932
  bodies (①, 髙, ～ ...) into U+FFFD; its ``parse()`` also re-encodes every
  attachment to base64 and invents random file names, work we do not need.

So the structure is walked here, iteratively, on bytes: each part's header
block is split off by a small line scanner, stored in a compat32
``email.message.Message`` (fast; ``policy.default`` is ~3x slower) so the
stdlib's Content-Type / RFC 2231 parameter handling is reused, and a
multipart body is cut at its boundary lines with ``bytes.find`` (linear).
Depth is capped at ``_MAX_DEPTH`` (deeper multiparts are opaque and skipped)
and the number of parts at ``_MAX_PARTS``.  Charset decoding of bodies and
headers is our own (:func:`_decode_text`, :func:`_decode_header_value`).
mail-parser is still used where it does the job well: its RFC 5322 date
interpreter (``mailparser.dates.parse_mail_date``), with the stdlib
``email.utils.parsedate_to_datetime`` as fallback.

Every ``str`` field is safe for PostgreSQL ``text``: NUL characters are
removed and lone surrogates are replaced by U+FFFD.
"""

from __future__ import annotations

import binascii
import codecs
import email.header
import email.utils
import hashlib
import html as html_module
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import Message
from typing import Iterator

from charset_normalizer import from_bytes as _detect_charsets
from inscriptis import get_text as _inscriptis_text

from gateway import logs
from gateway.errors import MalformedMessage
from gateway.ingest import jis
from gateway.message import Address, AttachmentInfo, ParsedMessage

log = logs.get("gateway.parse")

try:  # mail-parser's tolerant RFC 5322 date interpreter (returns UTC values)
    from mailparser.dates import parse_mail_date as _mp_parse_date
except Exception:  # pragma: no cover - mail-parser missing or reorganised
    _mp_parse_date = None

__all__ = ["Address", "AttachmentInfo", "ParsedMessage", "attachment", "parse_message"]  # the types: gateway.message


# --------------------------------------------------------------------------
# limits

_MAX_DEPTH = 64  # multipart nesting below this is treated as opaque
_MAX_PARTS = 5000  # parts visited per message
_MAX_HEADER_LINES = 10000  # per header block; the rest is treated as body
_DETECT_MIN = 16  # charset detection is pointless on tinier inputs
_DETECT_MAX = 4 * 1024 * 1024  # charset-normalizer samples, but stay bounded
_HTML2TEXT_MAX = 512 * 1024  # larger HTML gets the linear tag stripper (inscriptis ~0.6 s/MB)
_MAX_JUNK_LINES = 3  # non-header lines skipped before the top-level header fields
_DATE_MAX = 512  # characters of a Date value looked at


# --------------------------------------------------------------------------
# text hygiene

_SURROGATES = re.compile("[\ud800-\udfff]")


def _clean(text: str) -> str:
    """Make ``text`` storable in PostgreSQL: no NUL, no lone surrogates."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if _SURROGATES.search(text):
        text = _SURROGATES.sub("\ufffd", text)
    return text


def _normalize_newlines(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


# --------------------------------------------------------------------------
# charsets

_SJIS = ("cp932", "shift_jis_2004", "shift_jisx0213")
# After strict ISO-2022-JP: the Windows/Outlook flavour with NEC and IBM extensions
# (gateway.ingest.jis), then the JIS X 0213 variants.
_ISO2022JP = ("iso2022_jp", jis.NAME, "iso2022_jp_2004", "iso2022_jp_3", "iso2022_jp_ext", "iso2022_jp_2")
_EUCJP = ("euc_jp", "euc_jis_2004", "euc_jisx0213")

_CHARSET_MAP: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("shift_jis", "shift-jis", "sjis", "x-sjis", "s-jis", "shift_jis-2004", "windows-31j",
         "ms_kanji", "ms-kanji", "csshiftjis", "cswindows31j", "cp932", "ibm-943", "x-ms-cp932"),
        _SJIS,
    ),
    **dict.fromkeys(("iso-2022-jp", "iso2022-jp", "iso2022_jp", "csiso2022jp", "iso-2022-jp-ms",
                     "iso-2022-jp-1", "iso-2022-jp-3", "iso-2022-jp-2004", "cp50220",
                     "cp50221", "cp50222"), _ISO2022JP),
    "iso-2022-jp-2": ("iso2022_jp_2",) + _ISO2022JP,
    **dict.fromkeys(("euc-jp", "euc_jp", "eucjp", "x-euc-jp", "cseucpkdfmtjapanese", "cp51932",
                     "euc-jis-2004", "euc-jisx0213"), _EUCJP),
    **dict.fromkeys(("gb2312", "gb_2312-80", "csgb2312", "euc-cn", "x-euc-cn", "gbk", "x-gbk",
                     "cp936", "windows-936", "gb18030"), ("gb18030",)),
    **dict.fromkeys(("ks_c_5601-1987", "ks_c_5601", "ksc5601", "ks_c_5601-1989", "euc-kr",
                     "x-euc-kr", "cseuckr", "korean", "cp949", "windows-949", "uhc"), ("cp949",)),
    **dict.fromkeys(("big5", "x-big5", "csbig5", "cp950", "big5-hkscs"), ("cp950", "big5hkscs")),
    # ASCII labels routinely carry undeclared UTF-8; UTF-8 is a superset.
    **dict.fromkeys(("us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us", "us", "7bit", "8bit"),
                    ("utf-8",)),
    **dict.fromkeys(("utf-8", "utf8", "unicode-1-1-utf-8", "x-unicode20utf8"), ("utf-8",)),
    # As browsers do (WHATWG): Latin-1 labels mean windows-1252.
    **dict.fromkeys(("iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "iso_8859-1",
                     "windows-1252", "cp1252", "x-cp1252"), ("cp1252", "latin-1")),
    **dict.fromkeys(("iso-8859-8-i", "iso-8859-8-e"), ("iso8859_8",)),
    **dict.fromkeys(("iso-8859-6-i", "iso-8859-6-e"), ("iso8859_6",)),
    "tis-620": ("cp874", "tis_620"),
    "iso-8859-11": ("cp874", "iso8859_11"),
}

_codec_cache: dict[str, tuple[str, ...]] = {}


def _codecs_for(label: str | None) -> tuple[str, ...]:
    """Codec names to try, strictly and in order, for a charset label."""
    if not label:
        return ()
    key = label.strip().strip("\"'").strip().lower()
    key = key.split("*", 1)[0]  # RFC 2231 language suffix: "iso-2022-jp*ja"
    cached = _codec_cache.get(key)
    if cached is not None:
        return cached
    result = _CHARSET_MAP.get(key)
    if result is None:
        try:
            result = (codecs.lookup(key).name,)
        except (LookupError, ValueError, TypeError):
            result = ()
        else:
            # a label that merely names a transform codec (base64, rot13, zlib...)
            # or a special one (idna, punycode, undefined) must not be used for text
            if not getattr(codecs.lookup(key), "_is_text_encoding", True) or result[0] in _NOT_FOR_TEXT:
                result = ()
    if len(_codec_cache) < 512:
        _codec_cache[key] = result
    return result


_NOT_FOR_TEXT = frozenset({"idna", "punycode", "undefined", "raw_unicode_escape", "unicode_escape"})


def _try_decode(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeError, LookupError):
        return None


def _detect(data: bytes) -> str | None:
    """charset-normalizer's best guess, or None."""
    if not (_DETECT_MIN <= len(data) <= _DETECT_MAX):
        return None
    try:
        best = _detect_charsets(data).best()
        return str(best) if best is not None else None
    except Exception:
        return None


def _decode_text(data: bytes, label: str | None) -> str:
    """Decode a text body: declared codec(s) strictly, then detection, then replace."""
    candidates = _codecs_for(label)
    for codec in candidates:
        text = _try_decode(data, codec)
        if text is not None:
            return text
    fallback = candidates[0] if candidates else "utf-8"
    if not candidates:
        # missing or unknown label: UTF-8 is the common case and cheap
        text = _try_decode(data, "utf-8")
        if text is not None:
            return text
    else:
        # the declared codec almost fits (a truncated character, one stray
        # byte): a detector would garble the whole body, keep the declared one
        lossy = data.decode(fallback, "replace")
        bad = lossy.count("\ufffd") - data.count(b"\xef\xbf\xbd")
        if bad <= max(2, len(data) // 200):
            return lossy
    detected = _detect(data)
    if detected is not None:
        return detected
    return data.decode(fallback, "replace")


# Undeclared 8-bit header text, after UTF-8 and the charsets the message declares:
# the two encodings such mail is really written in here (Japanese and Western).
_GUESSES = ("cp932", "cp1252")
# Detection only picks among these (unrestricted, it names cp1006 for "Formação").
_DETECT_HEADER = ["cp932", "euc_jp", "cp1252", "iso8859_2", "cp1251", "iso8859_7", "gb18030", "cp949", "big5"]
# Non-letters that Japanese text uses (CJK punctuation, fullwidth forms, ①, Ⅰ, №).
_JA_MARKS = re.compile("[\u3000-\u303f\uff00-\uffef\u2460-\u24ff\u2100-\u218f\u2500-\u257f\u3200-\u33ff]")


def _script(ch: str) -> str:
    """A coarse script of a letter: latin, cyrillic, greek, cjk (kana and han), other."""
    o = ord(ch)
    if o < 0x250 or 0x1E00 <= o < 0x1F00:
        return "latin"
    if 0x400 <= o < 0x530:
        return "cyrillic"
    if 0x370 <= o < 0x400:
        return "greek"
    if 0x3040 <= o < 0xA000 or 0xF900 <= o < 0xFB00 or 0xFF00 <= o < 0xFFF0 or 0x20000 <= o:
        return "cjk"
    return "other"


def _oddness(text: str) -> float:
    """How unlike real text a decoding looks: non-ASCII symbols outside the marks
    Japanese uses, and letters whose script changes inside a word ("Forma輦o",
    "Formaзгo" are what "Formação" becomes in the wrong codec).  0 is plausible."""
    score = 0.0
    previous = ""
    for ch in text:
        if ch.isalpha():
            script = _script(ch)
            if previous and previous != script:
                score += 1
            previous = script
            if "\uff61" <= ch <= "\uff9f":  # half-width katakana: rare, and EUC-JP read as CP932
                score += 0.5
            continue
        previous = ""
        if ord(ch) < 0x80 or ch.isdigit() or ch.isspace() or _JA_MARKS.match(ch):
            continue
        score += 1  # a symbol or control character where text was expected
    return score


def _decode_undeclared(data: bytes, hints: tuple[str, ...] = ()) -> str:
    """8-bit bytes whose charset is not declared (or was declared wrongly): UTF-8,
    then the charsets the message declares elsewhere (``hints``, in order), then
    the most plausible of CP932 / Windows-1252 and, for longer text, of what
    charset-normalizer detects among a few common charsets."""
    text = _try_decode(data, "utf-8")
    if text is not None:
        return text
    # (oddness, preference, text): ties go to the declared charsets, in their order.
    scored: list[tuple[float, int, str]] = []
    for order, codec in enumerate(dict.fromkeys((*hints, *_GUESSES))):
        text = _try_decode(data, codec)
        if text is not None:
            scored.append((_oddness(text), order, text))
    if (not scored or min(scored)[0] > 0) and len(data) >= _DETECT_MIN:
        try:
            best = _detect_charsets(data, cp_isolation=_DETECT_HEADER).best()
        except Exception:
            best = None
        if best is not None:
            scored.append((_oddness(str(best)), len(scored) + 1, str(best)))
    if scored:
        return min(scored)[2]
    return data.decode("utf-8", "replace")


def _decode_raw_header(data: bytes, hints: tuple[str, ...] = ()) -> str:
    """Undeclared 8-bit header bytes (see _decode_undeclared)."""
    if data.isascii():
        return data.decode("ascii")
    return _decode_undeclared(data, hints)


def _decode_header_bytes(data: bytes, label: str | None, hints: tuple[str, ...] = ()) -> str:
    """Bytes of an RFC 2047 / RFC 2231 value in charset ``label``; when they are
    not in that charset, as undeclared bytes."""
    if label is not None:
        for codec in _codecs_for(label):
            text = _try_decode(data, codec)
            if text is not None:
                return text
    return _decode_raw_header(data, hints)


# --------------------------------------------------------------------------
# header values
#
# Header values are kept internally as latin-1 ``str`` (one char per raw
# byte), so that ``email.header.decode_header`` hands unencoded runs back as
# the exact original bytes (it converts them with raw-unicode-escape).

def _unfold(value: str) -> str:
    """RFC 5322 unfolding: drop the line breaks, keep the folding whitespace."""
    if "\r" in value or "\n" in value:
        value = value.replace("\r", "").replace("\n", "")
    return value


def _decode_header_value(value: str, hints: tuple[str, ...] = ()) -> str:
    """Decode a latin-1 raw header value: RFC 2047 words and raw 8-bit."""
    value = _unfold(value)
    if "=?" not in value:
        return _clean(_decode_raw_header(value.encode("latin-1", "replace"), hints))
    try:
        chunks = email.header.decode_header(value)
    except Exception:
        return _clean(_decode_raw_header(value.encode("latin-1", "replace"), hints))
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            chunk = chunk.encode("latin-1", "replace")
        out.append(_decode_header_bytes(chunk, charset, hints))
    return _clean("".join(out))


_ENCODED_WORD_CHARSET = re.compile(r"=\?([^?*\s]{1,40})(?:\*[^?]*)?\?[bBqQ]\?")


def _declared_charsets(labels: list[str]) -> tuple[str, ...]:
    """Codecs for the charset labels a message declares, in order, without the
    ASCII/UTF-8 family (always tried first anyway)."""
    out: list[str] = []
    for label in labels:
        for codec in _codecs_for(label)[:1]:
            if codec not in ("utf-8", "utf_8", "ascii") and codec not in out:
                out.append(codec)
    return tuple(out)


def _raw_bytes(value: str) -> bytes:
    return value.encode("latin-1", "replace")


# --------------------------------------------------------------------------
# header blocks

_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")


def _parse_head(data: bytes, default_type: str = "text/plain") -> tuple[Message, int, int]:
    """Split ``data`` into a compat32 Message (headers only) and the body offset.

    Returns ``(message, body_start, header_field_count)``.  Mirrors the stdlib
    feed parser: the header block ends at the first empty line (consumed) or
    at the first line that is neither a header field nor a continuation line
    (not consumed; it is the first body line).
    """
    fields: list[list[bytes]] = []
    pos = 0
    size = len(data)
    lines = 0
    while pos < size:
        eol = data.find(b"\n", pos)
        end = size if eol < 0 else eol + 1
        first = data[pos : pos + 1]
        if first == b"\n" or data[pos:end] == b"\r\n" or (first == b"\r" and end == pos + 1):
            pos = end
            break
        lines += 1
        if lines > _MAX_HEADER_LINES:
            break
        if first in (b" ", b"\t"):
            if fields:
                fields[-1].append(data[pos:end])
            # else: a continuation with nothing to continue; ignored like stdlib
        elif pos == 0 and data.startswith(b"From "):
            pass  # mbox "From " line
        elif _HEADER_LINE.match(data, pos):
            fields.append([data[pos:end]])
        else:
            break
        pos = end

    msg = Message()
    if default_type != "text/plain":
        msg.set_default_type(default_type)
    for pieces in fields:
        line = b"".join(pieces).decode("latin-1")
        name, _, value = line.partition(":")
        value = _unfold(value).strip(" \t\r\n")
        msg[name.strip()] = value  # compat32: stored as given
    return msg, pos, len(fields)


# --------------------------------------------------------------------------
# payloads

_B64_JUNK = bytes(c for c in range(256) if not (chr(c).isascii() and (chr(c).isalnum() or chr(c) in "+/")))


def _b64decode(data: bytes) -> bytes:
    try:
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        pass
    cleaned = data.translate(None, _B64_JUNK)
    rest = len(cleaned) % 4
    if rest == 1:
        cleaned = cleaned[:-1]
    elif rest:
        cleaned += b"=" * (4 - rest)
    try:
        return binascii.a2b_base64(cleaned)
    except (binascii.Error, ValueError):
        return b""


def _decode_payload(msg: Message, body: bytes) -> bytes:
    cte = str(msg.get("content-transfer-encoding", "")).strip().lower()
    if cte == "base64":
        return _b64decode(body)
    if cte == "quoted-printable":
        try:
            return binascii.a2b_qp(body)
        except (binascii.Error, ValueError):
            return body
    return body


# --------------------------------------------------------------------------
# multipart splitting

_DELIM_TAIL = re.compile(rb"(--)?[ \t]*\r?(?:\n|\Z)")
_GUESS_BOUNDARY = re.compile(rb"^--([0-9A-Za-z'()+_,./:=?-][0-9A-Za-z'()+_,./:=? -]{0,99}?)[ \t]*\r?$",
                             re.MULTILINE)


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes] | None:
    """Cut ``body`` at the delimiter lines of ``boundary``; None if there are none."""
    delim = b"--" + boundary
    dlen = len(delim)
    size = len(body)
    marks: list[tuple[int, int]] = []  # (line start, content start)
    closed = False
    pos = 0
    while len(marks) <= _MAX_PARTS:
        i = body.find(delim, pos)
        if i < 0:
            break
        if i == 0 or body[i - 1] == 0x0A:
            tail = _DELIM_TAIL.match(body, i + dlen)
            if tail is not None:
                if tail.group(1):
                    marks.append((i, size))
                    closed = True
                    break
                marks.append((i, tail.end()))
                pos = tail.end()
                continue
        pos = i + 1
    if not marks or (closed and len(marks) == 1):
        return None
    parts = []
    for k in range(len(marks) - 1 if closed else len(marks)):
        start = marks[k][1]
        if k + 1 < len(marks):
            stop = marks[k + 1][0]
            # the line break before a delimiter belongs to the delimiter
            if stop > start and body[stop - 1] == 0x0A:
                stop -= 1
                if stop > start and body[stop - 1] == 0x0D:
                    stop -= 1
        else:
            stop = size  # missing close delimiter: the part runs to the end
        parts.append(body[start:stop])
    return parts


def _children(msg: Message, body: bytes) -> list[bytes] | None:
    boundary = None
    try:
        boundary = msg.get_boundary()
    except Exception:
        pass
    if boundary:
        parts = _split_multipart(body, _raw_bytes(boundary))
        if parts is not None:
            return parts
    # no, or a wrong, boundary parameter: try the first "--xyz" line
    guess = _GUESS_BOUNDARY.search(body)
    if guess is not None:
        candidate = guess.group(1)
        if candidate.endswith(b"--"):
            candidate = candidate[:-2]
        if candidate:
            return _split_multipart(body, candidate)
    return None


# --------------------------------------------------------------------------
# parameters, addresses, ids, dates

def _param(msg: Message, name: str, header: str) -> str | tuple | None:
    try:
        return msg.get_param(name, None, header)
    except Exception:
        return None


def _filename(msg: Message, hints: tuple[str, ...] = ()) -> str:
    value = _param(msg, "filename", "content-disposition")
    if value is None:
        value = _param(msg, "name", "content-type")
    if value is None:
        return ""
    try:
        if isinstance(value, tuple):  # RFC 2231: (charset, language, text)
            charset, _language, text = value
            raw = text.encode("latin-1", "replace")
            return _clean(_decode_header_bytes(raw, charset or None, hints)).strip()
        return _decode_header_value(value, hints).strip()
    except Exception:
        return ""


def _param_text(msg: Message, name: str, header: str = "content-type") -> str | None:
    """A parameter's value as text (the value part of an RFC 2231 triple), or None."""
    value = _param(msg, name, header)
    if isinstance(value, tuple):
        value = value[2]
    return value if isinstance(value, str) else None


def _rfc2231_charset(msg: Message) -> str | None:
    for name, header in (("filename", "content-disposition"), ("name", "content-type")):
        value = _param(msg, name, header)
        if isinstance(value, tuple) and value[0]:
            return value[0]
    return None


def _content_type(msg: Message) -> str:
    try:
        return _clean(msg.get_content_type()).lower()
    except Exception:
        return "text/plain"


_PLAIN_ADDR = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_MAILBOX = re.compile(rf"[ \t]*(?:([A-Za-z0-9_ \t-]*?)[ \t]*<({_PLAIN_ADDR})>|({_PLAIN_ADDR}))[ \t]*")


def plain_addresses(values: list[str]) -> list[tuple[str, str]] | None:
    """getaddresses() for the common header: ``Name <a@b>`` or ``a@b``, comma
    separated, ASCII, no quotes, comments or encoded words -- a regular expression
    instead of the RFC 5322 parser (a third of a 1 KB message's parse).  None when
    any value is not that plain; then getaddresses() is used."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        for part in value.split(","):
            found = _PLAIN_MAILBOX.fullmatch(part)
            if found is None:
                return None
            if found.group(3):
                pairs.append(("", found.group(3)))
            else:
                pairs.append((" ".join(found.group(1).split()), found.group(2)))
    return pairs


def _split_list(value: str) -> list[str]:
    """Split an address list at the commas outside quoted strings, comments and
    angle brackets."""
    pieces: list[str] = []
    start = depth = 0
    quoted = angle = False
    i, size = 0, len(value)
    while i < size:
        ch = value[i]
        if ch == "\\" and (quoted or depth):
            i += 2
            continue
        if quoted:
            quoted = ch != '"'
        elif ch == '"':
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth:
            pass
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == "," and not angle:
            pieces.append(value[start:i])
            start = i + 1
        i += 1
    pieces.append(value[start:])
    return [p for p in pieces if p.strip()]


_ANGLE_ADDR = re.compile(r"^(.*?)<([^<>]*)>\s*(?:\([^()]*\)\s*)*;?\s*$", re.DOTALL)


def _mailboxes(values: list[str]) -> list[tuple[str, str]]:
    """(display name, address) pairs of address-list headers.  A mailbox written
    ``name <addr>`` takes its address from the angle brackets whatever the name
    holds: ``Mikel@Lindsaar <raasdnil@b.example>`` is one mailbox (the stdlib makes
    two of it).  Anything else goes to email.utils.getaddresses (groups, comments,
    bare addresses)."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        for piece in _split_list(value):
            found = _ANGLE_ADDR.match(piece)
            if found is None:
                pairs.extend(email.utils.getaddresses([piece]))
                continue
            name = found.group(1).strip()
            if ":" in name and not name.startswith('"'):  # "group: name <addr>"
                name = name.split(":", 1)[1].strip()
            if len(name) >= 2 and name[0] == name[-1] == '"':
                name = email.utils.unquote(name)
            address = found.group(2).strip()
            if address.startswith("@") and ":" in address:  # obsolete source route
                address = address.split(":", 1)[1]
            pairs.append((name, address))
    return pairs


def _addresses(msg: Message, name: str, hints: tuple[str, ...] = ()) -> tuple[Address, ...]:
    values = msg.get_all(name) or []
    if not values:
        return ()
    unfolded = [_unfold(v) for v in values]
    try:
        pairs = plain_addresses(unfolded)
        if pairs is None:
            pairs = _mailboxes(unfolded)
    except Exception:
        return ()
    out = []
    for display, addr in pairs:
        addr = _clean(_decode_raw_header(_raw_bytes(addr), hints)).strip()
        if not addr:
            continue
        out.append(Address(name=_decode_header_value(display, hints).strip(), address=addr))
    return tuple(out)


_MSGID = re.compile(r"<([^<>]*)>")


def _ids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    value = _clean(_decode_raw_header(_raw_bytes(_unfold(value))))
    found = ["".join(m.split()) for m in _MSGID.findall(value)]
    found = [m for m in found if m]
    if not found:  # bare ids from broken clients
        found = [tok.strip("<>,;") for tok in value.split() if "@" in tok]
        found = [m for m in found if m]
    return tuple(found)


def _message_id(value: str | None) -> str | None:
    ids = _ids(value)
    if ids:
        return ids[0]
    if value is None:
        return None
    rest = "".join(_clean(_decode_raw_header(_raw_bytes(value))).split()).strip("<>")
    return rest or None


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    value = _clean(_unfold(value))[:_DATE_MAX].strip()
    if not value:
        return None
    if _mp_parse_date is not None:
        try:
            result = _mp_parse_date(value).value
            if result is not None:
                return result.astimezone(timezone.utc)
        except Exception:
            pass
    try:
        result = email.utils.parsedate_to_datetime(value)
    except Exception:
        return None
    if result is None:
        return None
    try:
        if result.tzinfo is None:  # "-0000" or no zone: unknown, take as UTC
            result = result.replace(tzinfo=timezone.utc)
        return result.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return None


# --------------------------------------------------------------------------
# digest

# What identifies a message's content across re-deliveries: the originator fields
# and the body.  Not trace fields (Received, Return-Path, Delivered-To,
# X-Original-To) nor what MTAs and filters add on the way (Authentication-Results,
# ARC-*, X-Spam-*, DKIM-Signature...): a delivery repeated through another hop must
# give the same digest.  Changing this changes every idempotency key (repo.message_key):
# it needs a migration that recomputes them (see migration 0006).
DIGEST_FIELDS = ("from", "date", "subject")


def _digest(top: Message, raw: bytes, body_start: int) -> str:
    """sha256 of the From, Date and Subject fields (unfolded, runs of white space
    as one space) and of the body without its trailing white space (hashed in
    place: a big message is not copied).  Line ends are hashed as received: every
    hop speaks SMTP/LMTP with CR LF (normalising them cost more than the hash)."""
    sha = hashlib.sha256()
    for name in DIGEST_FIELDS:
        for value in top.get_all(name) or []:
            sha.update(name.encode() + b":" + " ".join(value.split()).encode("latin-1", "replace") + b"\n")
    sha.update(b"\n")
    end = len(raw)
    while end > body_start and raw[end - 1] in b" \t\r\n":
        end -= 1
    sha.update(memoryview(raw)[body_start:end])
    return sha.hexdigest()


# --------------------------------------------------------------------------
# html

# linear-time fallback: every pattern stops at the next "<"
_HTML_DROP = re.compile(r"<(?:script|style|title)\b[^<>]*>[^<]*|<!--[^<>]*-->", re.IGNORECASE)
_HTML_BREAK = re.compile(r"<(?:br|/?p|/?div|/?tr|/?li|/?h[1-6]|/?table|/?blockquote)\b[^<>]*>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^<>]*>")
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")


def _strip_html(html: str) -> str:
    text = _HTML_DROP.sub("", html)
    text = _HTML_BREAK.sub("\n", text)
    text = _HTML_TAG.sub("", text)
    text = html_module.unescape(text)
    return _BLANK_LINES.sub("\n\n", text).strip() + "\n"


def _html_to_text(html: str) -> str:
    """Text of an HTML body: inscriptis, or a cheap tag stripper for huge input."""
    if not html.strip():
        return ""
    if len(html) <= _HTML2TEXT_MAX:
        try:
            text = _inscriptis_text(html)
            if text.strip():
                return text
        except Exception:
            pass  # fall through: lxml / inscriptis refused the document
    return _strip_html(html)


# --------------------------------------------------------------------------
# entry point

def parse_message(raw: bytes) -> ParsedMessage:
    """Parse one received message; see the module docstring for the contract."""
    try:
        return _parse(raw)
    except MalformedMessage:
        raise
    except MemoryError:
        raise  # a resource problem, not a bad message: let the caller tempfail
    except Exception as exc:  # a bug here must not turn into a crash loop
        raise MalformedMessage(f"unparseable message ({type(exc).__name__})") from exc


def _top(raw: bytes) -> tuple[Message, int]:
    """The top-level header fields and where the body starts; MalformedMessage when
    there is no header section."""
    # salvage stray leading line breaks and a mangled first line or two
    # ("F\trom: ...") when real header fields follow; an empty line after
    # that means there is no header section
    offset = len(raw) - len(raw.lstrip(b"\r\n"))
    for _attempt in range(_MAX_JUNK_LINES + 1):
        top, start, field_count = _parse_head(raw[offset:] if offset else raw)
        if field_count:
            break
        eol = raw.find(b"\n", offset)
        if eol < 0 or raw[offset:eol].strip(b"\r") == b"":
            break
        offset = eol + 1
    if field_count == 0:
        raise MalformedMessage("no header section")
    return top, offset + start


_NOT_BLANK = re.compile(rb"\S")


def _parse(raw: bytes) -> ParsedMessage:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise MalformedMessage("message is not bytes")
    raw = bytes(raw)
    if not raw.strip():
        raise MalformedMessage("empty message")

    top, body_start = _top(raw)

    content_type = _content_type(top)
    report_type = ""
    if content_type == "multipart/report":
        report_type = _clean(_param_text(top, "report-type") or "").strip().lower()

    texts: list[str] = []
    named_texts: list[str] = []  # inline text/plain parts with a file name
    html: str | None = None
    found: list[tuple[Message, str, int]] = []  # attachments: headers, type, size
    # The charsets the message declares: for 8-bit header bytes that declare none.
    eight_bit = not raw.isascii()
    labels = [m.group(1) for v in top.values() if "=?" in v for m in _ENCODED_WORD_CHARSET.finditer(v)]
    walk = _Walk()
    for msg, body, kind, ctype in _leaves(top, raw[body_start:], walk):
        charset = _param_text(msg, "charset")
        if eight_bit:
            labels += [label for label in (charset, _rfc2231_charset(msg)) if label]
        if kind == "html" and html is not None:
            continue  # a second HTML alternative
        payload = _decode_payload(msg, body)
        if kind in ("attachment", "named-text"):
            found.append((msg, ctype, len(payload)))
            if kind == "attachment":
                continue
        text = _clean(_normalize_newlines(_decode_text(payload, charset)))
        if kind == "text":
            texts.append(text)
        elif kind == "named-text":
            named_texts.append(text)
        else:
            html = text

    hints = _declared_charsets(labels) if eight_bit else ()
    attachments = [AttachmentInfo(filename=_attachment_name(msg, ctype, hints), content_type=ctype, size=size)
                   for msg, ctype, size in found]
    html_body = html or ""
    if not texts:
        texts = named_texts  # the only text is an inline part with a file name
    text_body = "\n".join(texts)
    if not texts and html_body:
        text_body = _clean(_html_to_text(html_body))
    if walk.skipped:
        log.warning("message_parts_skipped", parts=walk.skipped, max_depth=_MAX_DEPTH, max_parts=_MAX_PARTS,
                    size=len(raw))
    empty_body = not text_body.strip() and not attachments and _NOT_BLANK.search(raw, body_start) is not None

    def first(name: str) -> str | None:
        value = top.get(name)
        return value if isinstance(value, str) else None

    headers = tuple(
        (_clean(_decode_raw_header(_raw_bytes(name))).strip().lower(), _decode_header_value(value, hints).strip())
        for name, value in top.items()
    )
    from_ = _addresses(top, "from", hints)
    sender = _addresses(top, "sender", hints)
    subject = first("subject")
    return ParsedMessage(
        raw=raw,
        digest=_digest(top, raw, body_start),
        message_id=_message_id(first("message-id")),
        date=_date(first("date")),
        from_=from_[0] if from_ else None,
        sender=sender[0] if sender else None,
        reply_to=_addresses(top, "reply-to", hints),
        to=_addresses(top, "to", hints),
        cc=_addresses(top, "cc", hints),
        subject=_decode_header_value(subject, hints).strip() if subject is not None else "",
        text_body=text_body,
        html_body=html_body,
        attachments=tuple(attachments),
        in_reply_to=_ids(first("in-reply-to")),
        references=_ids(first("references")),
        content_type=content_type,
        report_type=report_type,
        headers=headers,
        skipped_parts=walk.skipped,
        empty_body=empty_body,
    )


# --------------------------------------------------------------------------
# the MIME walk

@dataclass
class _Walk:
    skipped: int = 0  # parts not looked at: nested below _MAX_DEPTH or past _MAX_PARTS


# Default file names for parts that usually have none.
_DEFAULT_NAMES = {"text/calendar": "invite.ics", "application/ics": "invite.ics"}


def _attachment_name(msg: Message, ctype: str, hints: tuple[str, ...]) -> str:
    return _filename(msg, hints) or _DEFAULT_NAMES.get(ctype, "")


def _leaves(top: Message, body: bytes, walk: _Walk) -> Iterator[tuple[Message, bytes, str, str]]:
    """The message's leaf parts in document order, iteratively (no recursion):
    (headers, body bytes, kind, content type); kind is "text", "html", "attachment"
    or "named-text" (an inline text/plain part with a file name: an attachment that
    is also the text when there is no other).  Used by parse and by attachment()
    so both count attachments alike."""
    # (headers, body bytes, depth, inside an attached container)
    stack: list[tuple[Message, bytes, int, bool]] = [(top, body, 0, False)]
    visited = 0
    while stack:
        if visited >= _MAX_PARTS:
            walk.skipped += len(stack)
            return
        msg, body, depth, in_attachment = stack.pop()
        visited += 1
        ctype = _content_type(msg)
        maintype, _, subtype = ctype.partition("/")
        try:
            disposition = msg.get_content_disposition()
        except Exception:
            disposition = None

        if maintype == "multipart":
            if depth >= _MAX_DEPTH:
                walk.skipped += 1  # opaque: its parts are not looked at (the raw message keeps them)
                continue
            parts = _children(msg, body)
            if parts is not None:
                child_default = "message/rfc822" if subtype == "digest" else "text/plain"
                attached = in_attachment or disposition == "attachment"
                room = max(_MAX_PARTS - visited, 0)
                walk.skipped += max(len(parts) - room, 0)
                children = []
                for part in parts[:room]:
                    child, start, _ = _parse_head(part, child_default)
                    children.append((child, part[start:], depth + 1, attached))
                stack.extend(reversed(children))
                continue
            # no usable boundary: salvage the body as plain text
            yield msg, body, "text", "text/plain"
            continue

        named = _param(msg, "filename", "content-disposition") is not None or _param(msg, "name", "content-type") is not None
        if in_attachment or disposition == "attachment" or maintype != "text" or subtype not in ("plain", "html"):
            yield msg, body, "attachment", ctype
        elif named:
            yield msg, body, ("named-text" if subtype == "plain" else "attachment"), ctype
        else:
            yield msg, body, subtype if subtype == "html" else "text", ctype


def attachment(raw: bytes, index: int) -> tuple[AttachmentInfo, bytes] | None:
    """The ``index``-th attachment of a message (as ParsedMessage.attachments lists
    them) and its decoded bytes; None when there is no such attachment."""
    if index < 0:
        return None
    parsed = parse_message(raw)
    if index >= len(parsed.attachments):
        return None
    top, start = _top(parsed.raw)
    seen = 0
    for msg, body, kind, _ctype in _leaves(top, parsed.raw[start:], _Walk()):
        if kind in ("attachment", "named-text"):
            if seen == index:
                return parsed.attachments[index], _decode_payload(msg, body)
            seen += 1
    return None
