"""Filing: what one message means for one route, as a plan, then committed.

    plan = PLANNERS[type(route)](conn, rules, route, parsed, envelope_sender)
    filing = store.filing.commit(conn, parsed, plan)

The plans and outcomes, typed and immutable, are in gateway/outcome.py.

- dropbox.py   SPEC 2: the BCC dropbox (sender check, customers); reads nothing
- alias.py     SPEC 3: pipeline aliases (thread, new record, reopen, noise dropped)
- threads.py   thread matching (In-Reply-To, References, record tokens); the token format
- noise.py     auto-replies, bounces, loops
- people.py    the sender, the customers, participants, names for a new contact
- policies.py  what holds a plan for review or refuses it (issue 16)

The caller owns the transaction and passes its connection: a worker's own
transaction, a savepoint in the SQLite loop writer's batch, or one that `gateway
explain` rolls back.  Nothing here knows which.
"""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import Connection

from gateway import events
from gateway.filing import alias, dropbox, policies
from gateway.outcome import Filing, Plan
from gateway.message import ParsedMessage
from gateway.routing import AliasRoute, DropboxRoute, Route
from gateway.rules.index import RuleIndex
from gateway.store import events as store_events, filing as store_filing


def _plan_dropbox(conn: Connection, rules: RuleIndex, route: Any, parsed: ParsedMessage, sender: str) -> Plan:
    return dropbox.plan(rules, route, parsed, sender)


# The planning function of each kind of route: fn(conn, rules, route, parsed, envelope_sender).
PLANNERS: dict[type, Callable[[Connection, RuleIndex, Any, ParsedMessage, str], Plan]] = {
    DropboxRoute: _plan_dropbox,
    AliasRoute: alias.plan,
}


def plan(conn: Connection, rules: RuleIndex, route: Route, parsed: ParsedMessage, envelope_sender: str) -> Plan:
    return PLANNERS[type(route)](conn, rules, route, parsed, envelope_sender)


def file(conn: Connection, rules: RuleIndex, route: Route, parsed: ParsedMessage, envelope_sender: str, *,
         approved: int | None = None, limits: policies.Limits = policies.DEFAULT_LIMITS) -> Filing:
    """Plan, then commit, on ``conn`` (the caller's transaction), with the events that
    tell the CRM about it (gateway/events.py) in the same transaction.  The policies
    (gateway/filing/policies.py) may hold the plan for review or refuse it -- except
    for a held message a reviewer approved: ``approved`` is its delivery's id, whose
    idempotency key the hold took already (gateway/review.py).  ``limits``: gateway.toml's
    part of the policies."""
    planned = plan(conn, rules, route, parsed, envelope_sender)
    if approved is None:
        planned = policies.apply(conn, rules, parsed, planned, envelope_sender, limits)
    filing = store_filing.commit(conn, parsed, planned, delivery_id=approved)
    store_events.append(conn, planned.org_id, events.for_filing(rules, planned, parsed, filing))
    return filing
