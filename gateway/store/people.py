"""Leads and contacts: one of each per normalised address per organisation (a
constraint), found in a search order or created -- exactly once across processes;
the reads `gateway record show` and `gateway export` list them with; and what the
CRM's API and `gateway import` do with them (a page, one by id, delete, and the
batched create-or-update of gateway/people_import.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Mapping, Sequence

from sqlalchemy import Connection, Row, Select, Table, bindparam, delete, select, text, update
from sqlalchemy.exc import IntegrityError

from gateway.outcome import Kind, PersonWanted
from gateway.store import models as m
from gateway.store.prepared import PerDialect, Prepared, Shapes
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
                                           created_at=bindparam("created_at"), updated_at=bindparam("updated_at"))
                .on_conflict_do_nothing(index_elements=["org_id", "email"]).returning(t.c.id),
                conn.dialect)
        # PostgreSQL: search and create in one statement (one round trip, issue 17),
        # per (search order, kind created): the matches in search order and, when there
        # are none, the new row -- each as (rank, kind, id, created).  A row another
        # writer committed meanwhile makes the INSERT do nothing: no row at all then
        # (the caller looks again).
        self.find_or_create = Shapes(conn.dialect, lambda key: text(_find_or_create_sql(*key)))


def _find_or_create_sql(search: tuple[str, ...], creates: str) -> str:
    table = {kind: t.name for kind, t in TABLES.items()}
    found = " UNION ALL ".join(
        f"SELECT {rank} AS rank, '{kind}' AS kind, id FROM {table[kind]} WHERE org_id = :org_id AND email = :email"
        for rank, kind in enumerate(search))
    return (
        f"WITH found AS ({found}), "
        f"made AS (INSERT INTO {table[creates]} (org_id, email, first_name, last_name, owner_id, source, "
        "created_at, updated_at) "
        "SELECT :org_id, :email, :first_name, :last_name, CAST(:owner_id AS BIGINT), :source, "
        "CAST(:at AS TIMESTAMPTZ), CAST(:at AS TIMESTAMPTZ) WHERE NOT EXISTS (SELECT 1 FROM found) "
        "ON CONFLICT (org_id, email) DO NOTHING RETURNING id) "
        f"SELECT rank, kind, id, false AS created FROM found UNION ALL SELECT {len(search)}, '{creates}', id, true "
        "FROM made ORDER BY 1 LIMIT 1")


_stmts = PerDialect(_Statements)


def find(conn: Connection, org_id: str, kind: Kind, address: str) -> int | None:
    return _stmts(conn).find[kind].scalar(conn, {"b_org": org_id, "b_email": address})


def find_or_create(
    conn: Connection, org_id: str, wanted: PersonWanted, owner_id: int | None, source: str,
    first_name: str = "", last_name: str | None = None, at: datetime | None = None,
) -> tuple[Kind, int, str]:
    """(kind, id, "matched" | "created"): the first match in the search order, or a new
    one of the kind to create."""
    st = _stmts(conn)
    key = {"b_org": org_id, "b_email": wanted.address}
    # SPEC 2.7: without a name, the address is both the email and the last name.
    stamp = at or now()
    if conn.dialect.name == "postgresql":
        rows = st.find_or_create((tuple(wanted.search), wanted.creates)).rows(conn, {
            "org_id": org_id, "email": wanted.address, "first_name": first_name,
            "last_name": last_name or wanted.address, "owner_id": owner_id, "source": source, "at": stamp})
        if rows:
            _, kind, person_id, made = rows[0]
            return kind, person_id, "created" if made else "matched"
        existing = st.find[wanted.creates].scalar(conn, key)  # created and committed meanwhile
        assert existing is not None
        return wanted.creates, existing, "matched"
    for kind in wanted.search:
        found = st.find[kind].scalar(conn, key)
        if found is not None:
            return kind, found, "matched"
    created = st.create[wanted.creates].scalar(conn, {
        "org_id": org_id, "email": wanted.address, "first_name": first_name,
        "last_name": last_name or wanted.address, "owner_id": owner_id, "source": source, "created_at": stamp,
        "updated_at": stamp,  # updated_since= of the API lists new people too
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


# --- the CRM's API and imports ---------------------------------------------------------

_USERS, _RECORDS = m.User.__table__, m.Record.__table__
Upserted = Literal["created", "updated", "unchanged", "conflict"]
# Rows per statement: 500 rows of 10 columns stay far below SQLite's 32,766 bound
# parameters, and a batch holds the write lock for a few milliseconds only.
CHUNK_ROWS = 500
# A create that meets a row another writer committed a moment ago is decided again
# (it is an update now); more rounds than this only under a storm of writers.
_ROUNDS = 3


@dataclass(frozen=True)
class Upsert:
    """One person to create or to update in place: found by ``external_id`` when
    given, else by ``email`` (a row found by email that has no external_id takes
    this one).  ``values`` holds the fields given -- first_name, last_name, owner_id;
    the others keep what is stored (a new person: "" and no owner)."""

    email: str
    external_id: str | None = None
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UpsertResult:
    action: Upserted
    id: int | None
    detail: str = ""  # a conflict's reason, naming the row in the way


_CONCURRENT = UpsertResult("conflict", None, "changed by another writer while this ran: send it again")


def upsert(conn: Connection, org_id: str, kind: Kind, items: Sequence[Upsert], source: str) -> list[UpsertResult]:
    """Create or update ``items`` (one result each, in order) with set-based statements,
    CHUNK_ROWS at a time: a SELECT per unique key of the rows they name (locked on
    PostgreSQL, so "unchanged" is exact), one UPDATE executed for the changed ones,
    one multi-row INSERT ... ON CONFLICT DO NOTHING for the new ones.  The constraints
    keep one row per address and per external_id: a create that loses the race to
    another writer (a filing, another import) is decided again against that row.
    updated_at moves only when a value changes."""
    out: list[UpsertResult] = []
    table = TABLES[kind]
    if conn.dialect.name == "postgresql":
        # psycopg prepares a statement on its 5th run and PostgreSQL may then keep a
        # generic plan made while the table was small: a sequential scan that grew
        # with every batch (100,000 rows took 340 s instead of 20).  Plan each time.
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
    for start in range(0, len(items), CHUNK_ROWS):
        out.extend(_upsert_chunk(conn, table, kind, org_id, items[start:start + CHUNK_ROWS], source))
    return out


def _upsert_chunk(conn: Connection, t: Table, kind: Kind, org_id: str, items: Sequence[Upsert],
                  source: str) -> list[UpsertResult]:
    results: list[UpsertResult] = [_CONCURRENT] * len(items)
    pending = list(range(len(items)))
    claimed: dict[int, int] = {}  # row id -> the item that updates it: one item per row
    for _ in range(_ROUNDS):
        if not pending:
            break
        by_email, by_external = _existing(conn, t, org_id, [items[i] for i in pending])
        stamp = now()
        creates: list[int] = []
        updates: list[tuple[int, int, dict[str, Any]]] = []
        for i in pending:
            row, problem = _match(items[i], by_email, by_external, kind)
            if problem:
                results[i] = UpsertResult("conflict", None, problem)
            elif row is None:
                creates.append(i)
            elif row.id in claimed:
                results[i] = UpsertResult("conflict", None, f"the same {kind} ({row.id}) as another item of this batch")
            else:
                claimed[row.id] = i
                new = _merged(row, items[i])
                if all(new[k] == getattr(row, k) for k in new):
                    results[i] = UpsertResult("unchanged", row.id)
                else:
                    updates.append((i, row.id, new))
        _update(conn, t, kind, updates, stamp, results)
        pending = _insert(conn, t, org_id, items, creates, source, stamp, results)
        claimed.update((results[i].id, i) for i in creates if results[i].action == "created")  # type: ignore[misc]
    return results


def _existing(conn: Connection, t: Table, org_id: str,
              items: Sequence[Upsert]) -> tuple[dict[str, Row[Any]], dict[str, Row[Any]]]:
    emails = sorted({it.email for it in items})
    externals = sorted({it.external_id for it in items if it.external_id is not None})
    found: dict[int, Row[Any]] = {}
    columns = (t.c.id, t.c.email, t.c.first_name, t.c.last_name, t.c.external_id, t.c.owner_id)
    # Two indexed lookups (org_id+email, org_id+external_id), each in id order so
    # concurrent writers lock rows in one order.  FOR NO KEY UPDATE (PostgreSQL;
    # SQLite's BEGIN IMMEDIATE already serialises writers): a filing that gives a
    # record one of these contacts (a foreign key: KEY SHARE) does not wait on us.
    for column, keys in ((t.c.email, emails), (t.c.external_id, externals)):
        if keys:
            query = select(*columns).where(t.c.org_id == org_id, column.in_(keys)).order_by(t.c.id)
            for row in conn.execute(query.with_for_update(key_share=True)):
                found[row.id] = row
    by_email = {r.email: r for r in found.values()}
    by_external = {r.external_id: r for r in found.values() if r.external_id is not None}
    return by_email, by_external


def _match(item: Upsert, by_email: dict[str, Row[Any]], by_external: dict[str, Row[Any]],
           kind: Kind) -> tuple[Row[Any] | None, str]:
    """The row ``item`` updates (None: create it), or why it can do neither."""
    holder = by_email.get(item.email)
    row = by_external.get(item.external_id) if item.external_id is not None else None
    if row is not None:
        if holder is not None and holder.id != row.id:
            return None, (f"{item.email} is already {kind} {holder.id}"
                          + (f" (external_id {holder.external_id!r})" if holder.external_id else ""))
        return row, ""
    if holder is not None and item.external_id is not None and holder.external_id is not None:
        return None, f"{item.email} is {kind} {holder.id} with another external_id ({holder.external_id!r})"
    return holder, ""


def _merged(row: Row[Any], item: Upsert) -> dict[str, Any]:
    return {
        "email": item.email,
        "external_id": item.external_id if item.external_id is not None else row.external_id,
        "first_name": item.values.get("first_name", row.first_name),
        "last_name": item.values.get("last_name", row.last_name),
        "owner_id": item.values.get("owner_id", row.owner_id),
    }


def _update(conn: Connection, t: Table, kind: Kind, updates: list[tuple[int, int, dict[str, Any]]],
            stamp: datetime, results: list[UpsertResult]) -> None:
    if not updates:
        return
    statement = update(t).where(t.c.id == bindparam("b_id")).values(
        email=bindparam("b_email"), external_id=bindparam("b_external_id"), first_name=bindparam("b_first_name"),
        last_name=bindparam("b_last_name"), owner_id=bindparam("b_owner_id"), updated_at=bindparam("b_updated_at"))

    def params(row_id: int, new: dict[str, Any]) -> dict[str, Any]:
        return {"b_id": row_id, "b_updated_at": stamp, **{f"b_{k}": v for k, v in new.items()}}

    try:
        with conn.begin_nested():
            conn.execute(statement, [params(row_id, new) for _, row_id, new in updates])
    except IntegrityError:
        # An address or external_id taken since the SELECT (a new row another writer
        # committed): row by row, so only the ones in the way fail.
        for i, row_id, new in updates:
            try:
                with conn.begin_nested():
                    conn.execute(statement, [params(row_id, new)])
            except IntegrityError:
                results[i] = UpsertResult("conflict", None, f"{new['email']} or its external_id is taken by another "
                                                            f"{kind} (created a moment ago)")
            else:
                results[i] = UpsertResult("updated", row_id)
        return
    for i, row_id, _ in updates:
        results[i] = UpsertResult("updated", row_id)


def _insert(conn: Connection, t: Table, org_id: str, items: Sequence[Upsert], creates: list[int], source: str,
            stamp: datetime, results: list[UpsertResult]) -> list[int]:
    """Insert the new ones; the indexes of those another writer created first (to be
    decided again)."""
    if not creates:
        return []
    creates = sorted(creates, key=lambda i: items[i].email)  # unique keys taken in one order (as filing does)
    rows = [{
        "org_id": org_id, "email": items[i].email, "external_id": items[i].external_id,
        "first_name": items[i].values.get("first_name", ""), "last_name": items[i].values.get("last_name", ""),
        "owner_id": items[i].values.get("owner_id"), "source": source, "created_at": stamp, "updated_at": stamp,
    } for i in creates]
    # No conflict target: a row in the way on either unique key (org+email,
    # org+external_id) is skipped, not an error.
    inserted = conn.execute(insert_for(conn, t).on_conflict_do_nothing().returning(t.c.id, t.c.email), rows).all()
    ids = {r.email: r.id for r in inserted}
    lost = []
    for i in creates:
        row_id = ids.pop(items[i].email, None)
        if row_id is None:
            lost.append(i)
        else:
            results[i] = UpsertResult("created", row_id)
    return lost


def _with_owner(t: Table) -> Select[Any]:
    return select(t, _USERS.c.email.label("owner")).outerjoin(_USERS, _USERS.c.id == t.c.owner_id)


def with_owners(conn: Connection, kind: Kind, org_id: str, ids: Sequence[int]) -> Sequence[Row[Any]]:
    """These of the organisation's leads or contacts, each with its owner's address, by id."""
    t = TABLES[kind]
    return conn.execute(_with_owner(t).where(t.c.org_id == org_id, t.c.id.in_(list(ids))).order_by(t.c.id)).all()


def page(conn: Connection, kind: Kind, org_id: str, after: int, limit: int, email: str | None = None,
         updated_since: datetime | None = None) -> Sequence[Row[Any]]:
    """Up to ``limit`` + 1 of the organisation's leads or contacts with an id over
    ``after``, by id, each with its owner's address (``owner``)."""
    t = TABLES[kind]
    query = _with_owner(t).where(t.c.org_id == org_id, t.c.id > after)
    if email is not None:
        query = query.where(t.c.email == email)
    if updated_since is not None:
        query = query.where(t.c.updated_at >= updated_since)
    return conn.execute(query.order_by(t.c.id).limit(limit + 1)).all()


def one(conn: Connection, kind: Kind, org_id: str, person_id: int) -> Row[Any] | None:
    """One of the organisation's leads or contacts with its owner's address, or None."""
    t = TABLES[kind]
    return conn.execute(_with_owner(t).where(t.c.org_id == org_id, t.c.id == person_id)).one_or_none()


def remove(conn: Connection, kind: Kind, org_id: str, person_id: int) -> bool:
    """Delete one of the organisation's leads or contacts; False if there is none.
    The mail stays and so do its links (history: they keep naming the id); records
    that had the contact keep no contact."""
    t = TABLES[kind]
    # Locked first: a filing that is about to give a record this contact waits, then
    # fails on the foreign key and is retried (it then creates the contact anew).
    found = conn.execute(select(t.c.id).where(t.c.org_id == org_id, t.c.id == person_id)
                         .with_for_update()).scalar_one_or_none()
    if found is None:
        return False
    if kind == "contact":
        conn.execute(update(_RECORDS).where(_RECORDS.c.org_id == org_id, _RECORDS.c.contact_id == person_id)
                     .values(contact_id=None, updated_at=now()))
    conn.execute(delete(t).where(t.c.id == person_id))
    return True
