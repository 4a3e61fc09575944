"""Auto-replies, bounces and our own mail coming back: never a new record or contact,
never a reopen (RFC 3834 for auto-replies; RFC 3464/6522 for delivery reports)."""

from __future__ import annotations

from gateway.addresses import domain_of, normalise
from gateway.outcome import Noise
from gateway.message import ParsedMessage
from gateway.rules.index import RuleIndex

_BULK_PRECEDENCE = {"bulk", "junk", "list"}
_BOUNCE_LOCALS = {"mailer-daemon", "postmaster"}


def classify(parsed: ParsedMessage, envelope_sender: str, sender: str, rules: RuleIndex) -> Noise | None:
    """Noise('auto_reply' | 'bounce' | 'loop', the evidence), or None for a person's mail."""
    # Bounces first: a DSN may also carry Auto-Submitted.
    if envelope_sender == "":
        return Noise("bounce", "null reverse-path")
    if parsed.content_type == "multipart/report" and parsed.report_type == "delivery-status":
        return Noise("bounce", "multipart/report delivery-status")
    for address in (sender, normalise(envelope_sender)):
        if address.partition("@")[0] in _BOUNCE_LOCALS:
            return Noise("bounce", f"sender {address.partition('@')[0]}")
    auto = (parsed.header("auto-submitted") or "").strip().lower()
    if auto and not auto.startswith("no"):
        return Noise("auto_reply", f"Auto-Submitted: {auto.split(';')[0]}")
    for name in ("x-autoreply", "x-autorespond", "x-auto-response-suppress"):
        if parsed.header(name) is not None:
            return Noise("auto_reply", name)
    precedence = (parsed.header("precedence") or "").strip().lower()
    if precedence in _BULK_PRECEDENCE:
        return Noise("auto_reply", f"Precedence: {precedence}")
    # Mail from our own aliases or dropboxes: a loop.
    if domain_of(sender) in rules.by_gateway_domain:
        return Noise("loop", "sender is a gateway address")
    return None
