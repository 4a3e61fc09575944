"""BCC dropbox filing (SPEC section 2): who may file, who the customers are.

Planning reads nothing: the sender check and the customers come from the message
and the rules; which leads/contacts are matched or created is settled when the
store commits the plan (gateway/store/filing.py)."""

from __future__ import annotations

from gateway.errors import PermanentFailure
from gateway.outcome import DropboxPlan, Kind, PersonWanted
from gateway.filing.people import customers, sender_of
from gateway.message import ParsedMessage
from gateway.replies import REPLIES
from gateway.routing import DropboxRoute
from gateway.rules.index import RuleIndex

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
    found = customers(org, parsed, sender)
    return DropboxPlan(
        org_id=route.org_id, route_key=route.key, user=user.email, user_id=user.id, sender=sender,
        search=user.search, creates=user.creates, customers=tuple(found),
        # Sorted, so concurrent filings take row locks in one order (no deadlock).
        wanted=tuple(PersonWanted(a, _SEARCH[user.search], user.creates) for a in sorted(found)),
        visibility=user.sharing,
    )
