"""Organisations, users and pipelines: the rules written to the database (ids for
the rest of the store; users and pipelines that left the rules marked inactive)."""

from __future__ import annotations

from sqlalchemy import Column, Connection, Table, select, update

from gateway.rules.index import RuleIndex
from gateway.store import dropboxes, webhooks
from gateway.store import models as m
from gateway.store.sql import insert_for


def sync_rules(conn: Connection, index: RuleIndex) -> RuleIndex:
    """Upsert organisations, users and pipelines from the rules; return the index with ids.

    Users and pipelines that left the rules stay (their mail and records keep
    pointing at them) but are marked inactive.  Every user allowed a dropbox gets
    an address if they have none yet.
    """
    orgs = m.Organisation.__table__
    users = m.User.__table__
    pipes = m.Pipeline.__table__
    for org in index.orgs.values():
        stmt = insert_for(conn, orgs).values(id=org.id, name=org.name, timezone=org.timezone, active=True)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["id"], set_={"name": org.name, "timezone": org.timezone, "active": True}))
        for u in org.users.values():
            values = dict(first_name=u.first_name, last_name=u.last_name, role=u.role, active=u.active)
            stmt = insert_for(conn, users).values(org_id=org.id, email=u.email, **values)
            conn.execute(stmt.on_conflict_do_update(index_elements=["org_id", "email"], set_=values))
        for p in org.pipelines.values():
            stmt = insert_for(conn, pipes).values(org_id=org.id, name=p.name, active=True)
            conn.execute(stmt.on_conflict_do_update(index_elements=["org_id", "name"], set_={"active": True}))
    known = set(index.orgs)
    user_ids = _ids_or_inactive(conn, users, users.c.email,
                                {(org.id, email) for org in index.orgs.values() for email in org.users})
    pipe_ids = _ids_or_inactive(conn, pipes, pipes.c.name,
                                {(org.id, name) for org in index.orgs.values() for name in org.pipelines})
    conn.execute(update(orgs).where(orgs.c.id.not_in(known)).values(active=False))
    bound = index.with_ids(user_ids, pipe_ids)
    for org in bound.orgs.values():
        for u in org.users.values():
            if u.dropbox_allowed and u.id is not None:
                dropboxes.ensure(conn, org.id, u.id)
    webhooks.sync_endpoints(conn, index)
    return bound


def _ids_or_inactive(conn: Connection, table: Table, name: Column[str],
                     named: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The ids of the rows the rules name ((organisation, name) -> id); the other rows
    of ``table`` are marked inactive (their mail and records keep pointing at them)."""
    ids: dict[tuple[str, str], int] = {}
    for row_id, org_id, row_name, active in conn.execute(select(table.c.id, table.c.org_id, name, table.c.active)):
        if (org_id, row_name) in named:
            ids[(org_id, row_name)] = row_id
        elif active:
            conn.execute(update(table).where(table.c.id == row_id).values(active=False))
    return ids
