"""BCC dropbox filing (SPEC section 2): who may file, who the customers are.

Planning reads nothing: the sender check and the customers come from the message
and the rules; which leads/contacts are matched or created is settled when the
store commits the plan (gateway/store/filing.py).

A forward (issue 15; the original found by gateway/parse/forwards.py) from an
allowed sender is filed as its original: a mail the user *received* is filed under
its sender and its other external recipients, with its Date, Subject, Message-ID and
text, and the forwarder kept as ``forwarded_by`` with their note; a mail the user (or
a colleague) *sent* is filed like a BCC of it (its external recipients).  An original
without a readable sender is not guessed at: the forward is filed as it came, and
the decision says why."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from gateway.addresses import looks_like_address, normalise
from gateway.errors import PermanentFailure
from gateway.message import Forwarded, ParsedMessage
from gateway.outcome import DropboxPlan, ForwardSeen, Kind, PersonWanted
from gateway.filing.people import customers, sender_of
from gateway.replies import REPLIES
from gateway.routing import DropboxRoute
from gateway.rules.index import OrgEntry, RuleIndex
from gateway.views import ts

_SEARCH: dict[str, tuple[Kind, ...]] = {
    "contacts": ("contact",),
    "leads": ("lead",),
    "contacts_then_leads": ("contact", "lead"),
}


def plan(rules: RuleIndex, route: DropboxRoute, parsed: ParsedMessage, envelope_sender: str) -> DropboxPlan:
    """What filing this message means; raises PermanentFailure (550 5.7.1) when the
    sender is not one of the user's registered addresses (SPEC 2.4)."""
    org = rules.orgs[route.org_id]
    user = route.user
    sender = sender_of(parsed, envelope_sender)
    if sender not in user.senders:
        raise PermanentFailure(REPLIES.sender_not_allowed, f"sender {sender} is not registered for {user.email}")
    seen, filed = _forward(org, parsed)
    if filed is not None:
        assert seen is not None
        original = seen.original_from
        # Mail a customer sent: they are a customer, with the other external recipients.
        found = customers(org, filed, original if seen.reason == "sent" else sender)
        if seen.reason == "received" and original not in found:
            found.insert(0, original)
    else:
        found = customers(org, parsed, sender)
    return DropboxPlan(
        org_id=route.org_id, route_key=route.key, user=user.email, user_id=user.id, sender=sender,
        search=user.search, creates=user.creates, customers=tuple(found),
        # Sorted, so concurrent filings take row locks in one order (no deadlock).
        wanted=tuple(PersonWanted(a, _SEARCH[user.search], user.creates) for a in sorted(found)),
        visibility=user.sharing, forward=seen, filed=filed,
    )


def _forward(org: OrgEntry, parsed: ParsedMessage) -> tuple[ForwardSeen | None, ParsedMessage | None]:
    """What the forward in ``parsed`` (if any) means, and the message to file in its place."""
    fw = parsed.forward
    if fw is None:
        return None, None
    original = normalise(fw.from_.address) if fw.from_ is not None else ""
    if fw.problem or not looks_like_address(original):
        return ForwardSeen(fw.method, "forward", fw.problem or "original sender not readable"), None
    date = _utc(fw.date, org.timezone)
    how = "sent" if org.is_own_address(original) else "received"
    seen = ForwardSeen(fw.method, "original", how, original, ts(date))
    return seen, as_original(parsed, fw, date)


def _utc(value: datetime | None, zone: str) -> datetime | None:
    """A forward block's date in UTC: one without a zone is the organisation's local time
    (the forwarder's client wrote it so)."""
    if value is None:
        return None
    if value.tzinfo is None:
        try:
            value = value.replace(tzinfo=ZoneInfo(zone))
        except (KeyError, ValueError):
            value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def as_original(parsed: ParsedMessage, fw: Forwarded, date: datetime | None) -> ParsedMessage:
    """The delivered message with the original's fields: what is stored.  The raw bytes,
    content digest and attachment list stay the delivered message's (the raw keeps it
    all; the idempotency key is the delivery's)."""
    return replace(parsed, message_id=fw.message_id, date=date, from_=fw.from_, sender=None, reply_to=(),
                   to=fw.to, cc=fw.cc, subject=fw.subject, text_body=fw.text_body, html_body="",
                   in_reply_to=(), references=(), split=fw.split)
