"""8-bit header bytes whose charset is not declared, or was declared wrongly.

Raw 8-bit bytes in header fields (RFC 6532 allows UTF-8 there; older clients write
their local charset) and RFC 2047 / RFC 2231 values whose bytes do not fit their
label are decoded by plausibility: UTF-8 first, then the charsets the message
declares elsewhere, then CP932 and Windows-1252, scored by :func:`_oddness` (how
unlike real text a decoding looks).  charset-normalizer is asked only when no
candidate reads cleanly, and only among a few common charsets.
"""

from __future__ import annotations

import re

from charset_normalizer import from_bytes as _detect_charsets

from gateway.parse.charsets import codecs_for, try_decode
from gateway.parse.limits import DETECT_MIN

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
    text = try_decode(data, "utf-8")
    if text is not None:
        return text
    # (oddness, preference, text): ties go to the declared charsets, in their order.
    scored: list[tuple[float, int, str]] = []
    for order, codec in enumerate(dict.fromkeys((*hints, *_GUESSES))):
        text = try_decode(data, codec)
        if text is not None:
            scored.append((_oddness(text), order, text))
    if (not scored or min(scored)[0] > 0) and len(data) >= DETECT_MIN:
        try:
            best = _detect_charsets(data, cp_isolation=_DETECT_HEADER).best()
        except Exception:
            best = None
        if best is not None:
            scored.append((_oddness(str(best)), len(scored) + 1, str(best)))
    if scored:
        return min(scored)[2]
    return data.decode("utf-8", "replace")


def decode_raw_header(data: bytes, hints: tuple[str, ...] = ()) -> str:
    """Undeclared 8-bit header bytes (see _decode_undeclared)."""
    if data.isascii():
        return data.decode("ascii")
    return _decode_undeclared(data, hints)


def decode_header_bytes(data: bytes, label: str | None, hints: tuple[str, ...] = ()) -> str:
    """Bytes of an RFC 2047 / RFC 2231 value in charset ``label``; when they are
    not in that charset, as undeclared bytes."""
    if label is not None:
        for codec in codecs_for(label):
            text = try_decode(data, codec)
            if text is not None:
                return text
    return decode_raw_header(data, hints)


def declared_charsets(labels: list[str]) -> tuple[str, ...]:
    """Codecs for the charset labels a message declares, in order, without the
    ASCII/UTF-8 family (always tried first anyway)."""
    out: list[str] = []
    for label in labels:
        for codec in codecs_for(label)[:1]:
            if codec not in ("utf-8", "utf_8", "ascii") and codec not in out:
                out.append(codec)
    return tuple(out)
