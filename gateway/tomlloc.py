"""Find the line of a key path in a TOML file, for error messages.

tomllib gives values but no positions, and pydantic gives key paths such as
``("users", 1, "dropbox", "search")``.  This small scanner maps every table header
and ``key = value`` line to its path so an error can say ``rules/zylker.toml:23``.
It understands what administrators write in rule files: tables, arrays of tables,
dotted and quoted keys, and multi-line arrays (whose inner lines it skips).  For a
path it does not know it falls back to the longest known prefix.
"""

from __future__ import annotations

import re
from typing import Sequence

_HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")

Path = tuple[str | int, ...]


def _split_key(text: str) -> list[str]:
    return [p.strip("\"'") for p in _PART.findall(text)]


class LineIndex:
    def __init__(self, text: str):
        self._lines: dict[Path, int] = {}
        array_counts: dict[tuple[str, ...], int] = {}
        table: Path = ()
        depth = 0  # bracket depth of a multi-line value
        for number, line in enumerate(text.splitlines(), start=1):
            if depth > 0:
                depth += _bracket_delta(line)
                continue
            header = _HEADER.match(line)
            if header and not _KEY.match(line):
                names = _split_key(header.group(2))
                if header.group(1) == "[[":
                    key = tuple(names)
                    index = array_counts.get(key, -1) + 1
                    array_counts[key] = index
                    table = self._resolve(names, array_counts) + (index,)
                    self._lines.setdefault(table[:-1], number)
                else:
                    table = self._resolve(names, array_counts)
                self._lines.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if key:
                path = table + tuple(_split_key(key.group(1)))
                for i in range(len(table) + 1, len(path) + 1):
                    self._lines.setdefault(path[:i], number)
                depth = _bracket_delta(line[key.end():])

    @staticmethod
    def _resolve(names: list[str], array_counts: dict[tuple[str, ...], int]) -> Path:
        # [users.dropbox] after [[users]] means the last users element.
        path: list[str | int] = []
        for i, name in enumerate(names):
            path.append(name)
            prefix = tuple(names[: i + 1])
            if prefix in array_counts and i < len(names) - 1:
                path.append(array_counts[prefix])
        return tuple(path)

    def line_of(self, path: Sequence[str | int]) -> int | None:
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None


def _bracket_delta(text: str) -> int:
    # Count [ and { outside strings and comments; good enough for rule files.
    depth = 0
    quote = ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return max(depth, 0)


def dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
