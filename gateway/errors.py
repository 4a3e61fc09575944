"""The exception tree of the gateway.

    GatewayError
    ├── UserError              something the user asked for cannot be done: the message
    │                          names the thing and the fix; the CLI prints it, exit 1
    │                          (records.StageError, quarantine.ReplayError,
    │                          store.db.SchemaNotCurrent)
    ├── ConfigError            bad gateway.toml or rule file (names file, key path, line)
    └── DeliveryFailure        bound to an SMTP reply from gateway.replies
        ├── TemporaryFailure   4xx: the MTA keeps the mail and retries
        └── PermanentFailure   5xx: the MTA bounces
            └── MalformedMessage   554 5.6.0: the message cannot be parsed at all

Domain code raises these.  Only the SMTP handler turns a DeliveryFailure into a
reply (anything else becomes 451 4.3.0, never a 5xx: a retry may save the mail);
only gateway.cli.main turns UserError and ConfigError into `gateway: ...` lines
(anything else, a KeyError included, stays a bug: a traceback).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.replies import Reply, REPLIES


class GatewayError(Exception):
    pass


class UserError(GatewayError):
    """Something the user asked for cannot be done; the message names the thing and
    the fix ("no record 42", "... run `gateway db upgrade`").  Not a LookupError: a
    KeyError from a bug must not read as the user's mistake."""


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    key: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" [{self.key}]" if self.key else ""
        return f"{where}:{key} {self.message}"


class ConfigError(GatewayError):
    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class DeliveryFailure(GatewayError):
    reply: Reply

    def __init__(self, reply: Reply, detail: str = ""):
        self.reply = reply
        self.detail = detail
        super().__init__(detail or reply.text)


class TemporaryFailure(DeliveryFailure):
    def __init__(self, reply: Reply = REPLIES.internal_error, detail: str = ""):
        super().__init__(reply, detail)


class PermanentFailure(DeliveryFailure):
    pass


class MalformedMessage(PermanentFailure):
    def __init__(self, detail: str = ""):
        super().__init__(REPLIES.malformed, detail)
