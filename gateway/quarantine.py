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

from sqlalchemy import Engine, select, update

from gateway.ingest.parse import parse_message
from gateway.message import ParsedMessage
from gateway.routing import AliasRoute, DropboxRoute, Route
from gateway.rules.index import RuleIndex
from gateway.store import models as m
from gateway.store import repo
from gateway.store.db import write_transaction


def route_ref(route: Route) -> str:
    return route.user.email if isinstance(route, DropboxRoute) else route.alias.address


def count_failure(engine: Engine, org_id: str, route: str, parsed: ParsedMessage, error: str) -> int:
    """One more internal failure of this message on this route; returns the count."""
    table = m.DeliveryFailure.__table__
    with write_transaction(engine) as conn:
        stmt = repo.insert_for(conn, table).values(
            org_id=org_id, route=route, message_key=repo.message_key(parsed), attempts=1,
            last_error=error[:2000], updated_at=repo.now())
        stmt = stmt.on_conflict_do_update(
            index_elements=["org_id", "route", "message_key"],
            set_={"attempts": table.c.attempts + 1, "last_error": error[:2000], "updated_at": repo.now()},
        ).returning(table.c.attempts)
        return conn.execute(stmt).scalar_one()


def keep(engine: Engine, org_id: str, route: Route, parsed: ParsedMessage, envelope_sender: str,
         attempts: int, error: str) -> int | None:
    """Put the message in the quarantine; its id (None if it is there already)."""
    table = m.Quarantined.__table__
    with write_transaction(engine) as conn:
        return conn.execute(
            repo.insert_for(conn, table).values(
                org_id=org_id, route=route.key, route_ref=route_ref(route), message_key=repo.message_key(parsed),
                envelope_sender=envelope_sender, content=parsed.raw, attempts=attempts, error=error[:2000],
                created_at=repo.now())
            .on_conflict_do_nothing(index_elements=["org_id", "route", "message_key"])
            .returning(table.c.id)
        ).scalar_one_or_none()


def listing(engine: Engine, org_id: str | None = None) -> list[dict[str, Any]]:
    from gateway.records import ts

    table = m.Quarantined.__table__
    query = select(table.c.id, table.c.org_id, table.c.route, table.c.route_ref, table.c.message_key,
                   table.c.envelope_sender, table.c.attempts, table.c.error, table.c.created_at,
                   table.c.replayed_at, table.c.replay_email_id).order_by(table.c.id)
    if org_id:
        query = query.where(table.c.org_id == org_id)
    with engine.connect() as conn:
        return [
            {"id": r.id, "org": r.org_id, "route": r.route, "recipient": r.route_ref, "message_key": r.message_key,
             "envelope_sender": r.envelope_sender, "attempts": r.attempts, "error": r.error,
             "created_at": ts(r.created_at), "replayed_at": ts(r.replayed_at), "email_id": r.replay_email_id}
            for r in conn.execute(query)
        ]


class ReplayError(LookupError):
    pass


def replay(engine: Engine, rules: RuleIndex, gateway: Any, quarantine_id: int) -> dict[str, Any]:
    """File a quarantined message through the normal filing code, with today's rules."""
    table = m.Quarantined.__table__
    with engine.connect() as conn:
        row = conn.execute(select(table).where(table.c.id == quarantine_id)).one_or_none()
    if row is None:
        raise ReplayError(f"no quarantined message {quarantine_id}")
    if row.replayed_at is not None:
        raise ReplayError(f"quarantined message {quarantine_id} was already replayed (email {row.replay_email_id})")
    route: Route | None
    if row.route.startswith("dropbox:"):
        user = rules.user(row.org_id, row.route_ref)
        route = DropboxRoute(row.org_id, user) if user and user.may_use_dropbox else None
    else:
        alias = rules.aliases.get(row.route_ref)
        route = AliasRoute(row.org_id, alias) if alias and alias.org_id == row.org_id else None
    if route is None:
        raise ReplayError(f"{row.route_ref} is no longer a route of {row.org_id}")
    parsed = parse_message(row.content)
    result = gateway.filers[type(route)](rules, route, parsed, row.envelope_sender)
    email_id = result.email_id
    with write_transaction(engine) as conn:
        conn.execute(update(table).where(table.c.id == quarantine_id)
                     .values(replayed_at=repo.now(), replay_email_id=email_id))
    return {"id": quarantine_id, "email_id": email_id, "duplicate": result.duplicate, "dropped": result.dropped}
