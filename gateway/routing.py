"""Recipient address → route.  Pure: consults the compiled rules only.

A dropbox address is ``bcc-<token>@<gateway domain>``; the token is checked
against the database by the caller (it can be regenerated at any moment).  An
alias address is looked up in the rules.  Anything else is unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.addresses import normalise
from gateway.rules.index import AliasEntry, RuleIndex, UserEntry

DROPBOX_PREFIX = "bcc-"
_TOKEN = re.compile(r"^[a-z2-7]{16,64}$")


@dataclass(frozen=True)
class DropboxCandidate:
    org_id: str
    token: str


@dataclass(frozen=True)
class DropboxRoute:
    org_id: str
    user: UserEntry

    kind = "dropbox"

    @property
    def key(self) -> str:
        # Dedup is per route; keyed by the user, so it survives a regenerate.
        return f"dropbox:{self.user.id}"


@dataclass(frozen=True)
class AliasRoute:
    org_id: str
    alias: AliasEntry

    kind = "alias"

    @property
    def key(self) -> str:
        return f"alias:{self.alias.pipeline}"


Route = DropboxRoute | AliasRoute


def classify(index: RuleIndex, address: str) -> DropboxCandidate | AliasRoute | None:
    address = normalise(address)
    local, _, domain = address.rpartition("@")
    org_id = index.by_gateway_domain.get(domain)
    if org_id is None:
        return None
    alias = index.aliases.get(address)
    if alias is not None:
        return AliasRoute(org_id, alias)
    if local.startswith(DROPBOX_PREFIX):
        token = local[len(DROPBOX_PREFIX):]
        if _TOKEN.match(token):
            return DropboxCandidate(org_id, token)
    return None


def serves_domain(index: RuleIndex, domain: str) -> bool:
    """SMTP and LMTP accept mail only for the organisations' gateway domains
    (``in.zylker.example``); any other domain is relaying, which we never do there."""
    return domain in index.by_gateway_domain


def dropbox_route(index: RuleIndex, org_id: str, user_id: int | None) -> DropboxRoute | None:
    """The route for a token's owner, if that user may use a dropbox now (SPEC 2.1)."""
    if user_id is None:
        return None
    org = index.orgs.get(org_id)
    user = org.users_by_id.get(user_id) if org else None
    if user is None or not user.may_use_dropbox:
        return None
    return DropboxRoute(org_id, user)


def route_ref(route: Route) -> str:
    """What finds a route again later (a kept message's): the dropbox user's address or
    the alias address."""
    return route.user.email if isinstance(route, DropboxRoute) else route.alias.address


def route_again(index: RuleIndex, org_id: str, route_key: str, ref: str) -> Route | None:
    """The route of a message kept for later (quarantine, review queue), in today's
    rules: None when its user may no longer use a dropbox or its alias is gone."""
    if route_key.startswith("dropbox:"):
        user = index.user(org_id, ref)
        return DropboxRoute(org_id, user) if user and user.may_use_dropbox else None
    alias = index.aliases.get(ref)
    return AliasRoute(org_id, alias) if alias and alias.org_id == org_id else None


def dropbox_address(token: str, gateway_domain: str) -> str:
    return f"{DROPBOX_PREFIX}{token}@{gateway_domain}"
