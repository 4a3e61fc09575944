"""Text hygiene: every ``str`` the parser returns is safe for PostgreSQL ``text``.

PostgreSQL refuses NUL characters and lone surrogates (a declared UTF-7 decodes to
them) in ``text`` columns: :func:`clean` removes the first and replaces the second
by U+FFFD.
"""

from __future__ import annotations

import re

_SURROGATES = re.compile("[\ud800-\udfff]")


def clean(text: str) -> str:
    """Make ``text`` storable in PostgreSQL: no NUL, no lone surrogates."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if _SURROGATES.search(text):
        text = _SURROGATES.sub("\ufffd", text)
    return text


def normalize_newlines(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text
