"""Per-transaction state of the listeners: one typed object per mail transaction,
created by the handler at MAIL and kept on the protocol object (GatewayProtocol.
transaction, gateway/smtp/server.py), which ends it wherever aiosmtpd starts a fresh
Envelope (after DATA, at RSET, HELO, EHLO, STARTTLS) and when the connection goes.

aiosmtpd's Envelope keeps what it knows (the addresses, the content); what the
gateway adds (the rules of MAIL time, the queue id, routes, login, quota tokens)
lives in InboundTransaction (here) or SubmissionTransaction (gateway/submit.py),
never as attributes on the Envelope.  Plain data, nothing of aiosmtpd.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from gateway.routing import Route
from gateway.rules.index import RuleIndex

if TYPE_CHECKING:
    # Not at run time: the outbound pipeline loads only with the submission listener.
    from gateway.submit import SubmissionTransaction

__all__ = ["InboundTransaction", "Transaction", "new_queue_id"]


def new_queue_id() -> str:
    """The id a transaction is logged under and its 250 reply names (12 hex digits)."""
    return secrets.token_hex(6).upper()


@dataclass
class InboundTransaction:
    """SMTP and LMTP: the routes of the recipients accepted so far, in RCPT order."""

    rules: RuleIndex  # the index of MAIL time: a reload does not change a transaction under way
    queue_id: str
    routes: list[Route] = field(default_factory=list)


# SubmissionTransaction is defined with the pipeline that works on it (gateway/submit.py,
# which must not depend on the protocol package).
Transaction: TypeAlias = "InboundTransaction | SubmissionTransaction"
