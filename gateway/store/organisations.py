"""Organisations, users and pipelines: the rules written to the database (ids for
the rest of the store; users and pipelines that left the rules marked inactive)."""

from __future__ import annotations

from sqlalchemy import Connection, select, update

from gateway.rules.index import RuleIndex
from gateway.store import dropboxes
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
    user_ids: dict[tuple[str, str], int] = {}
    pipe_ids: dict[tuple[str, str], int] = {}
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
    for row in conn.execute(select(users.c.id, users.c.org_id, users.c.email, users.c.active)):
        org = index.orgs.get(row.org_id)
        if org and row.email in org.users:
            user_ids[(row.org_id, row.email)] = row.id
        elif row.active:
            conn.execute(update(users).where(users.c.id == row.id).values(active=False))
    for row in conn.execute(select(pipes.c.id, pipes.c.org_id, pipes.c.name, pipes.c.active)):
        org = index.orgs.get(row.org_id)
        if org and row.name in org.pipelines:
            pipe_ids[(row.org_id, row.name)] = row.id
        elif row.active:
            conn.execute(update(pipes).where(pipes.c.id == row.id).values(active=False))
    conn.execute(update(orgs).where(orgs.c.id.not_in(known)).values(active=False))
    bound = index.with_ids(user_ids, pipe_ids)
    for org in bound.orgs.values():
        for u in org.users.values():
            if u.dropbox_allowed and u.id is not None:
                dropboxes.ensure(conn, org.id, u.id)
    return bound
