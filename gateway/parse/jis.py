"""ISO-2022-JP as Windows and Outlook write it (Microsoft's CP50220/CP50221).

Japanese mail labelled ISO-2022-JP routinely carries the NEC special characters
(row 13: ①, ㈱, №) and NEC-selected IBM extensions in its JIS X 0208 runs.  No
Python codec accepts them (iso2022_jp* refuse row 13; iso2022_jp_2004 reads it only
under its own escape, ESC $ ( Q).  CP932 has all of them, and the JIS row/cell to
Shift_JIS mapping is arithmetic, so this decoder turns each JIS run into CP932
bytes and decodes those.  Registered as the codec ``x-iso-2022-jp-ms`` (decode only).
"""

from __future__ import annotations

import codecs

NAME = "x-iso-2022-jp-ms"

_ESC_ASCII = (b"\x1b(B", b"\x1b(J")  # ASCII, JIS X 0201 Roman
_ESC_KANA = b"\x1b(I"  # JIS X 0201 katakana
_ESC_JIS = (b"\x1b$B", b"\x1b$@", b"\x1b$(B", b"\x1b$(Q", b"\x1b$(O")


def _sjis(j1: int, j2: int) -> bytes:
    s1 = ((j1 - 0x21) >> 1) + 0x81
    if s1 > 0x9F:
        s1 += 0x40
    if j1 & 1:
        s2 = j2 + (0x1F if j2 < 0x60 else 0x20)
    else:
        s2 = j2 + 0x7E
    return bytes((s1, s2))


def decode(data: bytes, errors: str = "strict") -> tuple[str, int]:
    data = bytes(data)  # the codec machinery hands us a memoryview
    out = bytearray()
    mode = "ascii"
    i, n = 0, len(data)
    while i < n:
        if data[i] == 0x1B:
            for seqs, new in ((_ESC_ASCII, "ascii"), ((_ESC_KANA,), "kana"), (_ESC_JIS, "jis")):
                seq = next((s for s in seqs if data.startswith(s, i)), None)
                if seq is not None:
                    mode = new
                    i += len(seq)
                    break
            else:
                raise UnicodeDecodeError(NAME, data, i, i + 1, "unknown escape sequence")
            continue
        byte = data[i]
        if byte in (0x0A, 0x0D):  # line ends return to ASCII (RFC 1468)
            out.append(byte)
            mode = "ascii" if mode == "jis" else mode
            i += 1
        elif mode == "jis":
            if i + 1 >= n or not (0x21 <= byte <= 0x7E and 0x21 <= data[i + 1] <= 0x7E):
                raise UnicodeDecodeError(NAME, data, i, min(i + 2, n), "bad JIS X 0208 pair")
            out += _sjis(byte, data[i + 1])
            i += 2
        elif mode == "kana":
            if not 0x21 <= byte <= 0x5F:
                raise UnicodeDecodeError(NAME, data, i, i + 1, "bad half-width katakana")
            out.append(byte + 0x80)
            i += 1
        else:
            if byte > 0x7F:
                raise UnicodeDecodeError(NAME, data, i, i + 1, "8-bit byte in ISO-2022-JP")
            out.append(byte)
            i += 1
    return bytes(out).decode("cp932", errors), n


def _encode(text: str, errors: str = "strict") -> tuple[bytes, int]:
    raise UnicodeError(f"{NAME} is decode-only")


def _search(name: str) -> codecs.CodecInfo | None:
    if name.replace("_", "-") != NAME:
        return None
    return codecs.CodecInfo(name=NAME, encode=_encode, decode=decode)


codecs.register(_search)
