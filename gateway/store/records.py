"""Pipeline records: creation, participants, stage changes and the reads filing and
the relay need (a record's contact, its stage under a row lock, its pipeline); and
the reads behind `gateway record show` and `gateway export` (records with their
pipeline, conversation order, stage history, the decisions of a conversation)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple, Sequence

from sqlalchemy import Connection, Row, bindparam, select, update

from gateway.store import models as m
from gateway.store.prepared import PerDialect, Prepared
from gateway.store.sql import insert_for, now, tenant_rows

_RECORDS, _PIPES, _CONTACTS = m.Record.__table__, m.Pipeline.__table__, m.Contact.__table__
_CHANGES, _PARTS = m.StageChange.__table__, m.Participant.__table__


class _Statements:
    """The filing's statements, compiled once and run on the driver's cursor
    (gateway/store/prepared.py)."""

    def __init__(self, conn: Connection):
        r, d = _RECORDS, conn.dialect
        self.create = Prepared(r.insert().values(
            org_id=bindparam("org_id"), pipeline_id=bindparam("pipeline_id"), stage=bindparam("stage"),
            title=bindparam("title"), owner_id=bindparam("owner_id"), tags=bindparam("tags", type_=r.c.tags.type),
            contact_id=bindparam("contact_id"), created_at=bindparam("at", type_=r.c.created_at.type),
            updated_at=bindparam("at", type_=r.c.updated_at.type)).returning(r.c.id), d)
        self.change = Prepared(_CHANGES.insert().values(
            org_id=bindparam("org_id"), record_id=bindparam("record_id"), from_stage=bindparam("from_stage"),
            to_stage=bindparam("to_stage"), at=bindparam("at", type_=_CHANGES.c.at.type), cause=bindparam("cause"),
            email_id=bindparam("email_id"), actor=bindparam("actor")), d)
        self.stage = Prepared(update(r).where(r.c.id == bindparam("b_id")).values(
            stage=bindparam("b_stage"), updated_at=bindparam("b_at", type_=r.c.updated_at.type)), d)
        self.participate = Prepared(insert_for(conn, _PARTS).values(
            org_id=bindparam("org_id"), record_id=bindparam("record_id"), address=bindparam("address"))
            .on_conflict_do_nothing(), d)
        joined = (select(r.c.stage, _CONTACTS.c.id, _CONTACTS.c.email)
                  .select_from(r.outerjoin(_CONTACTS, _CONTACTS.c.id == r.c.contact_id))
                  .where(r.c.id == bindparam("b_id")))
        self.join_state = Prepared(joined, d)
        self.join_state_locked = Prepared(joined.with_for_update(of=r), d)


_stmts = PerDialect(_Statements)


class RecordRow(NamedTuple):
    id: int
    org_id: str
    pipeline: str
    stage: str
    contact_id: int | None


def create(conn: Connection, org_id: str, *, pipeline_id: int, stage: str, title: str, owner_id: int | None,
           tags: list[str], contact_id: int | None, at: datetime | None = None) -> int:
    record_id = _stmts(conn).create.scalar(conn, {
        "org_id": org_id, "pipeline_id": pipeline_id, "stage": stage, "title": title, "owner_id": owner_id,
        "tags": tags, "contact_id": contact_id, "at": at or now()})
    assert record_id is not None
    return record_id  # type: ignore[no-any-return]


def get(conn: Connection, record_id: int, org_id: str | None = None, *, lock: bool = False) -> RecordRow | None:
    """A record with its pipeline's name (``lock``: FOR UPDATE of the record row, so a
    read-and-move of its stage is exact)."""
    row = with_pipeline(conn, record_id, org_id, lock=lock)
    return RecordRow(row.id, row.org_id, row.pipeline, row.stage, row.contact_id) if row is not None else None


class JoinState(NamedTuple):
    stage: str
    contact: tuple[int, str] | None  # the record's contact (id, address), if it has one


def join_state(conn: Connection, record_id: int, *, lock: bool) -> JoinState:
    """What a reply joining the record needs, in one read: its stage and its contact.
    ``lock``: the record row stays locked until the transaction ends (of two
    simultaneous replies, one reopens)."""
    st = _stmts(conn)
    rows = (st.join_state_locked if lock else st.join_state).rows(conn, {"b_id": record_id})
    stage, contact_id, address = rows[0]
    return JoinState(stage, (contact_id, address) if contact_id is not None else None)


def set_stage(conn: Connection, record_id: int, stage: str) -> None:
    _stmts(conn).stage.run(conn, {"b_id": record_id, "b_stage": stage, "b_at": now()})


def add_stage_change(conn: Connection, org_id: str, record_id: int, from_stage: str | None, to_stage: str,
                     cause: str, email_id: int | None = None, actor: str | None = None) -> None:
    """One entry of the stage history (``actor``: who moved it, when a person did)."""
    _stmts(conn).change.run(conn, {"org_id": org_id, "record_id": record_id, "from_stage": from_stage,
                                   "to_stage": to_stage, "at": now(), "cause": cause, "email_id": email_id,
                                   "actor": actor})


def participate(conn: Connection, org_id: str, record_id: int, addresses: Sequence[str]) -> None:
    """The addresses take part in the record (each once): its token in a subject then counts."""
    if not addresses:
        return
    _stmts(conn).participate.run_many(conn, [{"org_id": org_id, "record_id": record_id, "address": a}
                                             for a in addresses])


def participants(conn: Connection, record_id: int) -> list[str]:
    """Who takes part in the record, in the order they joined."""
    parts = m.Participant.__table__
    return list(conn.execute(select(parts.c.address).where(parts.c.record_id == record_id)
                             .order_by(parts.c.id)).scalars())


def all_participants(conn: Connection, org_id: str | None = None) -> dict[int, list[str]]:
    """record id → who takes part (of ``org_id`` when given), in the order they joined."""
    parts = m.Participant.__table__
    out: dict[int, list[str]] = {}
    for row in tenant_rows(conn, select(parts), parts, org_id):
        out.setdefault(row.record_id, []).append(row.address)
    return out


def with_pipeline(conn: Connection, record_id: int, org_id: str | None = None, *,
                  lock: bool = False) -> Row[Any] | None:
    """A record's row (every column) with its pipeline's name as ``pipeline`` (only
    ``org_id``'s when given; ``lock``: FOR UPDATE of the record row until the
    transaction ends, so an edit compares with what it replaces)."""
    query = (select(_RECORDS, _PIPES.c.name.label("pipeline")).join(_PIPES, _PIPES.c.id == _RECORDS.c.pipeline_id)
             .where(_RECORDS.c.id == record_id))
    if org_id is not None:
        query = query.where(_RECORDS.c.org_id == org_id)
    if lock:
        query = query.with_for_update(of=_RECORDS)
    return conn.execute(query).one_or_none()


def listing(conn: Connection, org_id: str | None = None) -> Sequence[Row[Any]]:
    """Every record (of ``org_id`` when given) with its pipeline's name as ``pipeline``, by id."""
    query = select(_RECORDS, _PIPES.c.name.label("pipeline")).join(_PIPES, _PIPES.c.id == _RECORDS.c.pipeline_id)
    return tenant_rows(conn, query, _RECORDS, org_id)


def conversation_order(conn: Connection, record_ids: list[int] | None = None) -> dict[int, list[int]]:
    """record id → email ids in conversation order (Date, or arrival; then id)."""
    emails, links = m.Email.__table__, m.Link.__table__
    query = (
        select(links.c.target_id, emails.c.id)
        .join(emails, emails.c.id == links.c.email_id)
        .where(links.c.kind == "record")
        .order_by(links.c.target_id, emails.c.sort_at, emails.c.received_at, emails.c.id)
    )
    if record_ids is not None:
        query = query.where(links.c.target_id.in_(record_ids))
    out: dict[int, list[int]] = {}
    for record_id, email_id in conn.execute(query):
        out.setdefault(record_id, []).append(email_id)
    return out


def stage_changes(conn: Connection, record_ids: list[int] | None = None) -> Sequence[Row[Any]]:
    """The stage changes (of ``record_ids`` when given), by record, then in order."""
    table = m.StageChange.__table__
    query = select(table).order_by(table.c.record_id, table.c.id)
    if record_ids is not None:
        query = query.where(table.c.record_id.in_(record_ids))
    return conn.execute(query).all()


def set_owner(conn: Connection, record_id: int, owner_id: int | None) -> None:
    conn.execute(update(_RECORDS).where(_RECORDS.c.id == record_id).values(owner_id=owner_id, updated_at=now()))


def set_tags(conn: Connection, record_id: int, tags: list[str]) -> None:
    conn.execute(update(_RECORDS).where(_RECORDS.c.id == record_id).values(tags=tags, updated_at=now()))


def page(conn: Connection, org_id: str, *, after: int, limit: int, pipeline: str | None = None,
         stage: str | None = None, updated_since: datetime | None = None) -> Sequence[Row[Any]]:
    """Up to ``limit`` of ``org_id``'s records with an id above ``after``, by id, with
    their pipeline's name as ``pipeline`` and their owner's address as ``owner``.
    ``updated_since`` is inclusive and must be in UTC (SQLite compares the stored
    UTC wall-clock text)."""
    users = m.User.__table__
    query = (select(_RECORDS, _PIPES.c.name.label("pipeline"), users.c.email.label("owner"))
             .join(_PIPES, _PIPES.c.id == _RECORDS.c.pipeline_id)
             .outerjoin(users, users.c.id == _RECORDS.c.owner_id)
             .where(_RECORDS.c.org_id == org_id, _RECORDS.c.id > after))
    if pipeline is not None:
        query = query.where(_PIPES.c.name == pipeline)
    if stage is not None:
        query = query.where(_RECORDS.c.stage == stage)
    if updated_since is not None:
        query = query.where(_RECORDS.c.updated_at >= updated_since)
    return conn.execute(query.order_by(_RECORDS.c.id).limit(limit)).all()
