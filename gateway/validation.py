"""Read an administrator-edited TOML file into a pydantic model.

Every problem comes back as a ConfigProblem naming the file, the key path and the
line, all at once (pydantic reports every error, not just the first).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Sequence, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.errors import ConfigError, ConfigProblem
from gateway.tomlloc import LineIndex, dotted

M = TypeVar("M", bound=BaseModel)


class TomlFile:
    """A TOML file's text, data and line index, for validation and later checks."""

    def __init__(self, path: Path, shown_as: str):
        self.path = path
        self.shown_as = shown_as
        try:
            self.text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([ConfigProblem(shown_as, "", None, f"cannot read: {exc}")]) from exc
        try:
            self.data: dict[str, Any] = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            line = _decode_error_line(str(exc))
            raise ConfigError([ConfigProblem(shown_as, "", line, f"invalid TOML: {exc}")]) from exc
        self._lines = LineIndex(self.text)

    def problem(self, path: Sequence[str | int], message: str) -> ConfigProblem:
        return ConfigProblem(self.shown_as, dotted(path), self._lines.line_of(path), message)

    def validate(self, model: type[M], context: dict[str, Any] | None = None) -> M:
        try:
            return model.model_validate(self.data, context=context)
        except ValidationError as exc:
            problems = []
            for err in exc.errors(include_url=False):
                loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
                problems.append(self.problem(loc, _message(err)))
            raise ConfigError(problems) from None


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg


def _decode_error_line(text: str) -> int | None:
    # tomllib: "Expected '=' after a key in a key/value pair (at line 3, column 5)"
    import re

    m = re.search(r"at line (\d+)", text)
    return int(m.group(1)) if m else None
