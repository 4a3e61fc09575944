"""The rules bound to database ids without writing, for the commands that only look.

`sync_rules` (store/organisations.py) is for `serve` and reload: it upserts organisations,
users and pipelines and marks those missing from the rules inactive.  A command
that only looks must never do that -- `gateway export -c other.toml` pointed at
production would deactivate production's organisations (issue 11).  bind_rules
reads the same ids sync_rules would hand back, and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select

from gateway.rules.index import RuleIndex
from gateway.store import models as m


@dataclass(frozen=True)
class Bound:
    """The index with ids, and what the rules name that the database does not have
    yet (the gateway adds those when it next loads these rules)."""

    index: RuleIndex
    unknown: tuple[str, ...]


def bind_rules(engine: Engine, index: RuleIndex) -> Bound:
    """The ids of the rules' users and pipelines as stored, read in one snapshot.

    Matched as sync_rules matches them: (organisation, user email) and
    (organisation, pipeline name).  Entries the database lacks keep id None.
    """
    orgs, users, pipes = m.Organisation.__table__, m.User.__table__, m.Pipeline.__table__
    wanted = list(index.orgs)
    with engine.connect() as conn:
        known_orgs = set(conn.execute(select(orgs.c.id).where(orgs.c.id.in_(wanted))).scalars())
        user_ids = {(r.org_id, r.email): r.id for r in conn.execute(
            select(users.c.id, users.c.org_id, users.c.email).where(users.c.org_id.in_(wanted)))
            if r.email in index.orgs[r.org_id].users}
        pipe_ids = {(r.org_id, r.name): r.id for r in conn.execute(
            select(pipes.c.id, pipes.c.org_id, pipes.c.name).where(pipes.c.org_id.in_(wanted)))
            if r.name in index.orgs[r.org_id].pipelines}
    unknown: list[str] = []
    for org in index.orgs.values():
        if org.id not in known_orgs:
            unknown.append(f"organisation {org.id}")
            continue
        unknown += [f"user {e} ({org.id})" for e in org.users if (org.id, e) not in user_ids]
        unknown += [f"pipeline {n} ({org.id})" for n in org.pipelines if (org.id, n) not in pipe_ids]
    return Bound(index.with_ids(user_ids, pipe_ids), tuple(unknown))
