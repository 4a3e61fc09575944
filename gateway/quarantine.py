"""Mail that keeps failing with our own error: kept whole, answered 250, replayed later.

A message whose filing raises an unexpected error (a bug, not an unavailable
database) is answered 451 so the MTA retries -- but the same bug fails it again, and
after days the MTA would bounce it.  So failures are counted per (organisation,
route, message) in the database; after `limits.quarantine_after_attempts` the raw
message goes into the quarantine table, the MTA gets 250, the event is logged and
counted.  `gateway quarantine replay ID` files it once the cause is fixed, through
the same filing code.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine

from gateway import events, trust
from gateway.errors import UserError
from gateway.filing import file
from gateway.filing.policies import DEFAULT_LIMITS, Limits
from gateway.parse import parse_message
from gateway.message import ParsedMessage
from gateway.routing import Route, route_again, route_ref
from gateway.rules.index import RuleIndex
from gateway.settings import Trust
from gateway.store import events as store_events, quarantine as store_quarantine
from gateway.store.db import Database
from gateway.store.deliveries import message_key


def count_failure(conn: Connection, org_id: str, route: str, parsed: ParsedMessage, error: str) -> int:
    """One more internal failure of this message on this route; returns the count."""
    return store_quarantine.count_failure(conn, org_id, route, message_key(parsed), error)


def keep(conn: Connection, org_id: str, route: Route, parsed: ParsedMessage, envelope_sender: str,
         attempts: int, error: str) -> int | None:
    """Put the message in the quarantine; its id (None if it is there already).  The
    first time, message.quarantined tells the CRM, in the same transaction."""
    kept = store_quarantine.keep(conn, org_id, route.key, route_ref(route), message_key(parsed), envelope_sender,
                                 parsed.raw, attempts, error)
    if kept is not None:
        store_events.append(conn, org_id, [events.message_quarantined(
            kept, route.kind, route_ref(route), envelope_sender, parsed.message_id, attempts, error)])
    return kept


def listing(engine: Engine, org_id: str | None = None) -> list[dict[str, Any]]:
    from gateway.views import ts

    with engine.connect() as conn:
        return [
            {"id": r.id, "org": r.org_id, "route": r.route, "recipient": r.route_ref, "message_key": r.message_key,
             "envelope_sender": r.envelope_sender, "attempts": r.attempts, "error": r.error,
             "created_at": ts(r.created_at), "replayed_at": ts(r.replayed_at), "email_id": r.replay_email_id}
            for r in store_quarantine.listing(conn, org_id)
        ]


def render_listing(rows: list[dict[str, Any]]) -> str:
    """`gateway quarantine list` as text: listing(), two lines per message."""
    if not rows:
        return "quarantine is empty"
    out = []
    for r in rows:
        state = f"replayed {r['replayed_at']} as email {r['email_id']}" if r["replayed_at"] else "waiting"
        out.append(f"{r['id']:>5}  {r['created_at']}  {r['org']}  {r['recipient']}  {r['message_key'][:60]}  "
                   f"attempts {r['attempts']}  {state}\n       error: {r['error'][:200]}")
    return "\n".join(out)


class ReplayError(UserError):
    pass


def replay(database: Database, rules: RuleIndex, quarantine_id: int,
           trust_settings: Trust | None = None, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """File a quarantined message through the normal filing code, with today's rules
    (and gateway.toml's [trust], as a delivery would)."""
    row = database.reading(store_quarantine.get, quarantine_id)
    if row is None:
        raise ReplayError(f"no quarantined message {quarantine_id}")
    if row.replayed_at is not None:
        raise ReplayError(f"quarantined message {quarantine_id} was already replayed (email {row.replay_email_id})")
    route = route_again(rules, row.org_id, row.route, row.route_ref)
    if route is None:
        raise ReplayError(f"{row.route_ref} is no longer a route of {row.org_id}")
    settings = trust_settings or Trust()
    parsed = trust.authenticate(parse_message(row.content), settings.authserv_ids, settings.verify_dkim)
    with database.write() as conn:
        result = file(conn, rules, route, parsed, row.envelope_sender, limits=limits)
        email_id = result.email_id
        store_quarantine.mark_replayed(conn, quarantine_id, email_id)
    return {"id": quarantine_id, "email_id": email_id, "duplicate": result.duplicate, "dropped": result.dropped}


def render_replay(replayed: dict[str, Any]) -> str:
    """`gateway quarantine replay` as text: what replay() returns."""
    what = "already filed before" if replayed["duplicate"] else (
        "dropped (noise)" if replayed["dropped"] else f"filed as email {replayed['email_id']}")
    return f"quarantined message {replayed['id']}: {what}"
