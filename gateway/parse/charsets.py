"""Charset labels to Python codecs, and the decoding of text bodies.

A label is mapped to the codecs to try, strictly and in order: mail's labels are
routinely narrower than what the sender's client really wrote (Shift_JIS for
CP932, ISO-2022-JP for Microsoft's CP50220, Latin-1 for windows-1252, ASCII for
UTF-8).  A body that fits none of them is left to charset-normalizer's detection,
unless the declared codec fails only on a stray byte or two.  Header text without
a declared charset is :mod:`gateway.parse.undeclared`'s job.
"""

from __future__ import annotations

import codecs

from charset_normalizer import from_bytes as _detect_charsets

from gateway.parse import jis
from gateway.parse.limits import DETECT_MAX, DETECT_MIN

_SJIS = ("cp932", "shift_jis_2004", "shift_jisx0213")
# After strict ISO-2022-JP: the Windows/Outlook flavour with NEC and IBM extensions
# (gateway.parse.jis), then the JIS X 0213 variants.
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


def codecs_for(label: str | None) -> tuple[str, ...]:
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


def try_decode(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeError, LookupError):
        return None


def _detect(data: bytes) -> str | None:
    """charset-normalizer's best guess, or None."""
    if not (DETECT_MIN <= len(data) <= DETECT_MAX):
        return None
    try:
        best = _detect_charsets(data).best()
        return str(best) if best is not None else None
    except Exception:
        return None


def decode_text(data: bytes, label: str | None) -> str:
    """Decode a text body: declared codec(s) strictly, then detection, then replace."""
    candidates = codecs_for(label)
    for codec in candidates:
        text = try_decode(data, codec)
        if text is not None:
            return text
    fallback = candidates[0] if candidates else "utf-8"
    if not candidates:
        # missing or unknown label: UTF-8 is the common case and cheap
        text = try_decode(data, "utf-8")
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
