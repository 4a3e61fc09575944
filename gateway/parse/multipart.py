"""Cutting a multipart body into its parts, on bytes, in linear time.

The delimiter lines of the boundary are found with ``bytes.find`` (RFC 2046 5.1.1:
a delimiter is "--boundary" at the start of a line, optionally followed by white
space; "--boundary--" closes).  A missing or wrong boundary parameter is replaced
by the first "--xyz" line of the body; a missing close delimiter lets the last part
run to the end.
"""

from __future__ import annotations

import re
from email.message import Message

from gateway.parse.headers import raw_bytes
from gateway.parse.limits import MAX_PARTS

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
    while len(marks) <= MAX_PARTS:
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


def children(msg: Message, body: bytes) -> list[bytes] | None:
    """The raw parts (header block and body) of the multipart ``msg`` whose body is
    ``body``; None when no boundary cuts it."""
    boundary = None
    try:
        boundary = msg.get_boundary()
    except Exception:
        pass
    if boundary:
        parts = _split_multipart(body, raw_bytes(boundary))
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
