"""Who may see a filed email (SPEC 2.12): one pure rule, consulted by every read of
the API that shows an email (lists, the email, its raw bytes, its attachments).

An organisation token sees everything of its organisation.  A token bound to a user
sees, in this order of precedence:

1. mail the user filed (whatever it says);
2. nothing else with a customer at one of the organisation's
   ``sharing_excluded_domains`` -- mail no user filed (alias mail) included;
3. mail whose visibility is ``public`` (alias and outbound mail always are);
4. ``custom`` mail with at least one customer on its filer's ``share`` list (an
   address, or a domain that every address at it matches): the mail *of* a chosen
   customer is shared, as the CRM shows it on that customer's record;
5. nothing else (``private`` mail, ``custom`` mail of customers not chosen, or
   whose filer is gone from the rules).

The customers of an email are the addresses of the leads and contacts it is linked
to.  The share list is the filer's list *now* (the rules can change it); the
visibility is the one stored when the mail was filed.

The lists filter in SQL first with ``prefilter`` (a superset of what may be
visible, so a page is not emptied by filtering in Python) and then apply ``decide``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from gateway.addresses import domain_of
from gateway.rules.index import OrgEntry


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a viewer sees an email, and which part of the rule said so."""

    visible: bool
    # organisation | filer | excluded:DOMAIN | public | shared:ENTRY | private | not-shared | custom-no-filer
    reason: str


@dataclass(frozen=True, slots=True)
class Prefilter:
    """What SQL keeps for a user's token: the user's own mail, public mail, and custom
    mail of the users who share with someone (ids of users with a share list)."""

    user_id: int
    sharers: frozenset[int]


def _entry_for(entries: frozenset[str], address: str) -> str | None:
    """The share entry (the address itself, or its domain) that matches ``address``."""
    if address in entries:
        return address
    domain = domain_of(address)
    return domain if domain in entries else None


def decide(org: OrgEntry, viewer_id: int | None, filed_by: int | None, visibility: str,
           customers: Iterable[str]) -> Decision:
    """Whether the token of ``viewer_id`` (None: an organisation token) sees an email of
    ``org`` filed by ``filed_by`` with ``visibility`` and these customer addresses
    (normalised, as stored on leads and contacts)."""
    if viewer_id is None:
        return Decision(True, "organisation")
    if filed_by is not None and filed_by == viewer_id:
        return Decision(True, "filer")
    customers = tuple(customers)
    for address in customers:
        domain = domain_of(address)
        if domain in org.sharing_excluded_domains:
            return Decision(False, f"excluded:{domain}")
    if visibility == "public":
        return Decision(True, "public")
    if visibility != "custom":
        return Decision(False, "private")
    filer = org.users_by_id.get(filed_by) if filed_by is not None else None
    if filer is None:
        return Decision(False, "custom-no-filer")
    for address in customers:
        entry = _entry_for(filer.share, address)
        if entry is not None:
            return Decision(True, f"shared:{entry}")
    return Decision(False, "not-shared")


def visible(org: OrgEntry, viewer_id: int | None, filed_by: int | None, visibility: str,
            customers: Iterable[str]) -> bool:
    return decide(org, viewer_id, filed_by, visibility, customers).visible


def prefilter(org: OrgEntry, viewer_id: int | None) -> Prefilter | None:
    """The SQL side of the rule for ``viewer_id``'s lists; None: no filtering (an
    organisation token)."""
    if viewer_id is None:
        return None
    sharers = frozenset(u.id for u in org.users_by_id.values() if u.id is not None and u.share)
    return Prefilter(viewer_id, sharers)
