"""BCC dropbox filing (SPEC section 2): who may file, who the customers are."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from gateway.addresses import looks_like_address, normalise
from gateway.errors import PermanentFailure
from gateway.message import ParsedMessage
from gateway.replies import REPLIES
from gateway.routing import DropboxRoute
from gateway.rules.index import OrgEntry, RuleIndex, UserEntry
from gateway.store import repo

_SEARCH: dict[str, tuple[repo.Kind, ...]] = {
    "contacts": ("contact",),
    "leads": ("lead",),
    "contacts_then_leads": ("contact", "lead"),
}


def sender_of(parsed: ParsedMessage, envelope_sender: str) -> str:
    """The From header's address; the envelope sender when From is missing or unusable."""
    if parsed.from_ and looks_like_address(parsed.from_.address):
        return normalise(parsed.from_.address)
    return normalise(envelope_sender)


def customers(org: OrgEntry, parsed: ParsedMessage, sender: str) -> list[str]:
    """SPEC 2.6: To and Cc minus the sender, the organisation's own people,
    domains and gateway addresses (dropbox and aliases live in the gateway domain)."""
    out: list[str] = []
    for a in parsed.to + parsed.cc:
        address = normalise(a.address)
        if not looks_like_address(address) or address == sender or org.is_own_address(address):
            continue
        if address not in out:
            out.append(address)
    return out


def plan(index: RuleIndex, route: DropboxRoute, parsed: ParsedMessage, envelope_sender: str) -> dict[str, Any]:
    """Decide what filing this message means; raises PermanentFailure (550 5.7.1)
    when the sender is not one of the user's registered addresses (SPEC 2.4)."""
    org = index.orgs[route.org_id]
    user: UserEntry = route.user
    sender = sender_of(parsed, envelope_sender)
    if sender not in user.senders:
        raise PermanentFailure(REPLIES.sender_not_allowed, f"sender {sender} is not registered for {user.email}")
    return {
        "route": "dropbox",
        "user": user.email,
        "sender": sender,
        "sender_check": "registered",
        "search": user.search,
        "creates": user.creates,
        "customers": customers(org, parsed, sender),
    }


def file(engine: Engine, index: RuleIndex, route: DropboxRoute, parsed: ParsedMessage, envelope_sender: str) -> repo.FilingResult:
    decision = plan(index, route, parsed, envelope_sender)
    user = route.user
    people = [repo.PersonWanted(a, _SEARCH[user.search], user.creates) for a in decision["customers"]]
    result = repo.file_message(
        engine,
        org_id=route.org_id,
        route=route.key,
        parsed=parsed,
        source="dropbox",
        filed_by=user.id,
        owner_id=user.id,
        people=people,
        decision=decision,
    )
    result.decision = {**decision, "people": result.people}
    return result
