"""The header section: where it ends, its fields, and their values decoded.

:func:`split_header_section` is the one scanner of header blocks: the parser reads
the top-level header section and every MIME part's header block with it, the
content digest hashes what it found, and :func:`split_fields` gives the relay the
same fields as byte strings.  Its rules mirror the stdlib feed parser: a block ends
at the first empty line (consumed) or at the first line that is neither a header
field nor a continuation line (not consumed: the first body line); LF and CR LF
line ends are both accepted.

Header values are kept internally as latin-1 ``str`` (one char per raw byte), so
that ``email.header.decode_header`` hands unencoded runs back as the exact original
bytes (it converts them with raw-unicode-escape).  :func:`decode_header_value`
turns them into text: RFC 2047 encoded words and raw 8-bit bytes.
"""

from __future__ import annotations

import email.header
import re
from dataclasses import dataclass
from email.message import Message

from gateway.parse.limits import MAX_HEADER_LINES, MAX_JUNK_LINES
from gateway.parse.text import clean
from gateway.parse.undeclared import decode_header_bytes, decode_raw_header

_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")


@dataclass(frozen=True, slots=True)
class HeaderSection:
    """The header fields of one header block, and where its body starts."""

    lines: list[list[bytes]]  # each field's physical lines as received, line ends included
    fields: list[tuple[str, str]]  # each field's (name, value) in latin-1; the value unfolded and stripped
    body_start: int  # offset of the body in the bytes scanned


def split_header_section(raw: bytes, *, salvage: bool = True) -> HeaderSection:
    """The header fields of ``raw`` and where its body starts.

    With ``salvage`` (a whole message), stray leading line breaks and a mangled
    first line or two are skipped when real header fields follow; no fields then
    means there is no header section.  Without it (a MIME part's header block) the
    block starts at the first byte and may be empty.
    """
    if not salvage:
        lines, body_start = _scan(raw, 0)
        return HeaderSection(lines, _fields(lines), body_start)
    # salvage stray leading line breaks and a mangled first line or two
    # ("F\trom: ...") when real header fields follow; an empty line after
    # that means there is no header section
    offset = len(raw) - len(raw.lstrip(b"\r\n"))
    for _attempt in range(MAX_JUNK_LINES + 1):
        lines, body_start = _scan(raw, offset)
        if lines:
            break
        eol = raw.find(b"\n", offset)
        if eol < 0 or raw[offset:eol].strip(b"\r") == b"":
            break
        offset = eol + 1
    return HeaderSection(lines, _fields(lines), body_start)


def _scan(data: bytes, start: int) -> tuple[list[list[bytes]], int]:
    """The header block of ``data`` from ``start``: each field's lines, and the
    offset where the body starts."""
    fields: list[list[bytes]] = []
    pos = start
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
        if lines > MAX_HEADER_LINES:
            break
        if first in (b" ", b"\t"):
            if fields:
                fields[-1].append(data[pos:end])
            # else: a continuation with nothing to continue; ignored like stdlib
        elif pos == start and data.startswith(b"From ", pos):
            pass  # mbox "From " line
        elif _HEADER_LINE.match(data, pos):
            fields.append([data[pos:end]])
        else:
            break
        pos = end
    return fields, pos


def _fields(lines: list[list[bytes]]) -> list[tuple[str, str]]:
    out = []
    for pieces in lines:
        line = b"".join(pieces).decode("latin-1")
        name, _, value = line.partition(":")
        out.append((name.strip(), unfold(value).strip(" \t\r\n")))
    return out


def header_message(section: HeaderSection, default_type: str = "text/plain") -> Message:
    """The fields in a compat32 Message (headers only): fast (``policy.default`` is
    ~3x slower), and it lends us the stdlib's Content-Type / RFC 2231 parameter
    handling."""
    msg = Message()
    if default_type != "text/plain":
        msg.set_default_type(default_type)
    for name, value in section.fields:
        msg[name] = value  # compat32: stored as given
    return msg


def split_fields(raw: bytes) -> tuple[list[bytes], bytes]:
    """The header fields of a whole message as byte strings (a folded field's lines
    joined with CR LF, no line end at the end) and the body after the header section
    (after its empty line, LF or CR LF), as the parser reads them.  A message without
    header fields gives no fields and the body as the parser sees it."""
    section = split_header_section(raw)
    fields = [b"\r\n".join(_chomp(line) for line in pieces) for pieces in section.lines]
    return fields, raw[section.body_start:]


def _chomp(line: bytes) -> bytes:
    """``line`` without its line end (LF or CR LF)."""
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


# --------------------------------------------------------------------------
# header values

def unfold(value: str) -> str:
    """RFC 5322 unfolding: drop the line breaks, keep the folding whitespace."""
    if "\r" in value or "\n" in value:
        value = value.replace("\r", "").replace("\n", "")
    return value


def decode_header_value(value: str, hints: tuple[str, ...] = ()) -> str:
    """Decode a latin-1 raw header value: RFC 2047 words and raw 8-bit."""
    value = unfold(value)
    if "=?" not in value:
        return clean(decode_raw_header(value.encode("latin-1", "replace"), hints))
    try:
        chunks = email.header.decode_header(value)
    except Exception:
        return clean(decode_raw_header(value.encode("latin-1", "replace"), hints))
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            chunk = chunk.encode("latin-1", "replace")
        out.append(decode_header_bytes(chunk, charset, hints))
    return clean("".join(out))


# The charset label of an RFC 2047 encoded word (RFC 2231 language suffix dropped).
ENCODED_WORD_CHARSET = re.compile(r"=\?([^?*\s]{1,40})(?:\*[^?]*)?\?[bBqQ]\?")


def raw_bytes(value: str) -> bytes:
    """The raw bytes of a latin-1 header value (or of a part of one)."""
    return value.encode("latin-1", "replace")
