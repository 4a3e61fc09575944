"""Hand-off to the smarthost with aiosmtplib, and what its answer means for the submitter.

The submitter gets 250 only after the smarthost accepted.  A smarthost that is
unreachable, times out or answers 4xx gives 451 4.4.1 (the submitter retries);
a 5xx is passed on as a 5xx.  Either way the quota tokens go back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from gateway.replies import REPLIES, Reply


@dataclass(frozen=True)
class Smarthost:
    host: str
    port: int
    implicit_tls: bool
    starttls: str  # required | opportunistic | off
    username: str | None
    password: str | None
    timeout: float

    @classmethod
    def from_url(cls, url: str, timeout: float) -> "Smarthost":
        parts = urlsplit(url)
        implicit = parts.scheme == "smtps"
        query = parse_qs(parts.query)
        starttls = (query.get("starttls") or ["opportunistic"])[0]
        if starttls not in ("required", "opportunistic", "off"):
            starttls = "opportunistic"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (465 if implicit else 25),
            implicit_tls=implicit,
            starttls="off" if implicit else starttls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            timeout=timeout,
        )

    def describe(self) -> str:
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{self.host}:{self.port}"


@dataclass
class RelayOutcome:
    reply: Reply
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reply.ok


def _passed_on(code: int, message: str) -> Reply:
    """A smarthost's 5xx, passed on with its enhanced code when it gave one."""
    text = " ".join(message.split())
    first, _, rest = text.partition(" ")
    if first.count(".") == 2 and first[:1] in "45" and first.replace(".", "").isdigit():
        return Reply(code, first, f"Smarthost: {rest}")
    return Reply(code, "5.0.0", f"Smarthost: {text}")


async def relay(smarthost: Smarthost, sender: str, recipients: list[str], message: bytes) -> RelayOutcome:
    try:
        errors, response = await aiosmtplib.send(
            message,
            sender=sender,
            recipients=recipients,
            hostname=smarthost.host,
            port=smarthost.port,
            use_tls=smarthost.implicit_tls,
            start_tls=None if smarthost.starttls == "opportunistic" else smarthost.starttls == "required",
            username=smarthost.username,
            password=smarthost.password,
            timeout=smarthost.timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = {r.recipient: f"{r.code} {r.message}" for r in exc.recipients}
        codes = [r.code for r in exc.recipients]
        if all(code >= 500 for code in codes):
            first = exc.recipients[0]
            return RelayOutcome(_passed_on(first.code, first.message), refused=refused, detail="all recipients refused")
        return RelayOutcome(REPLIES.relay_unavailable, refused=refused, detail="recipients deferred")
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code >= 500:
            return RelayOutcome(_passed_on(exc.code, exc.message), detail=f"{exc.code} {exc.message}")
        return RelayOutcome(REPLIES.relay_unavailable, detail=f"{exc.code} {exc.message}")
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return RelayOutcome(REPLIES.relay_unavailable, detail=f"{type(exc).__name__}: {exc}")
    refused = {r: f"{resp.code} {resp.message}" for r, resp in errors.items()}
    accepted = [r for r in recipients if r not in refused]
    return RelayOutcome(REPLIES.relayed, accepted=accepted, refused=refused, detail=response)
