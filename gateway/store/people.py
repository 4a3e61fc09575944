"""Leads and contacts: one of each per normalised address per organisation (a
constraint), found in a search order or created -- exactly once across processes;
and the reads `gateway record show` and `gateway export` list them with."""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import Connection, Row, Table, bindparam, select

from gateway.outcome import Kind, PersonWanted
from gateway.store import models as m
from gateway.store.prepared import PerDialect, Prepared
from gateway.store.sql import insert_for, now, tenant_rows

TABLES: dict[str, Table] = {"lead": m.Lead.__table__, "contact": m.Contact.__table__}  # type: ignore[dict-item]


class _Statements:
    def __init__(self, conn: Connection):
        # Compiled once, run on the driver's cursor (gateway/store/prepared.py).
        self.find: dict[str, Prepared] = {}
        self.create: dict[str, Prepared] = {}
        for kind, t in TABLES.items():
            self.find[kind] = Prepared(
                select(t.c.id).where(t.c.org_id == bindparam("b_org"), t.c.email == bindparam("b_email")),
                conn.dialect)
            self.create[kind] = Prepared(
                insert_for(conn, t).values(org_id=bindparam("org_id"), email=bindparam("email"),
                                           first_name=bindparam("first_name"), last_name=bindparam("last_name"),
                                           owner_id=bindparam("owner_id"), source=bindparam("source"),
                                           created_at=bindparam("created_at"))
                .on_conflict_do_nothing(index_elements=["org_id", "email"]).returning(t.c.id),
                conn.dialect)


_stmts = PerDialect(_Statements)


def find(conn: Connection, org_id: str, kind: Kind, address: str) -> int | None:
    return _stmts(conn).find[kind].scalar(conn, {"b_org": org_id, "b_email": address})


def find_or_create(
    conn: Connection, org_id: str, wanted: PersonWanted, owner_id: int | None, source: str,
    first_name: str = "", last_name: str | None = None,
) -> tuple[Kind, int, str]:
    """(kind, id, "matched" | "created"): the first match in the search order, or a new
    one of the kind to create."""
    st = _stmts(conn)
    key = {"b_org": org_id, "b_email": wanted.address}
    for kind in wanted.search:
        found = st.find[kind].scalar(conn, key)
        if found is not None:
            return kind, found, "matched"
    # SPEC 2.7: without a name, the address is both the email and the last name.
    created = st.create[wanted.creates].scalar(conn, {
        "org_id": org_id, "email": wanted.address, "first_name": first_name,
        "last_name": last_name or wanted.address, "owner_id": owner_id, "source": source, "created_at": now(),
    })
    if created is not None:
        return wanted.creates, created, "created"
    # Another delivery created it a moment ago (and has committed: we waited on it).
    existing = st.find[wanted.creates].scalar(conn, key)
    assert existing is not None
    return wanted.creates, existing, "matched"


def get(conn: Connection, kind: Kind, person_id: int) -> Row[Any]:
    """A lead's or contact's row (every column); it must exist."""
    t = TABLES[kind]
    return conn.execute(select(t).where(t.c.id == person_id)).one()


def listing(conn: Connection, kind: Kind, org_id: str | None = None) -> Sequence[Row[Any]]:
    """Every lead or contact (of ``org_id`` when given), by id."""
    return tenant_rows(conn, select(TABLES[kind]), TABLES[kind], org_id)
