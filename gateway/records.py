"""Pipeline records as administrators and scripts see them: show, export, move."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from gateway.conversations import format_token
from gateway.ingest.email_in import add_stage_change
from gateway.rules.index import RuleIndex
from gateway.store import models as m
from gateway.store import repo
from gateway.store.db import write_transaction


def ts(value: datetime | None) -> str | None:
    """UTC ISO 8601 with Z (SQLite hands back naive datetimes; we only store UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.isoformat() + "Z"
    return value.isoformat().replace("+00:00", "Z")


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


def stage_history(conn: Connection, record_ids: list[int] | None = None) -> dict[int, list[dict[str, Any]]]:
    table = m.StageChange.__table__
    query = select(table).order_by(table.c.record_id, table.c.id)
    if record_ids is not None:
        query = query.where(table.c.record_id.in_(record_ids))
    out: dict[int, list[dict[str, Any]]] = {}
    for r in conn.execute(query):
        out.setdefault(r.record_id, []).append(
            {"from": r.from_stage, "to": r.to_stage, "at": ts(r.at), "cause": r.cause, "email_id": r.email_id})
    return out


def export_records(conn: Connection, org_id: str | None, owners: dict[int, str]) -> list[dict[str, Any]]:
    records, pipes = m.Record.__table__, m.Pipeline.__table__
    query = select(records, pipes.c.name.label("pipeline")).join(pipes, pipes.c.id == records.c.pipeline_id)
    if org_id:
        query = query.where(records.c.org_id == org_id)
    rows = conn.execute(query.order_by(records.c.id)).all()
    order = conversation_order(conn)
    history = stage_history(conn)
    return [
        {
            "id": r.id, "org": r.org_id, "pipeline": r.pipeline, "stage": r.stage, "title": r.title,
            "owner": owners.get(r.owner_id), "tags": r.tags, "contact_id": r.contact_id,
            "email_ids": order.get(r.id, []), "stage_history": history.get(r.id, []),
            "created_at": ts(r.created_at), "updated_at": ts(r.updated_at),
        }
        for r in rows
    ]


def show(engine: Engine, rules: RuleIndex, record_id: int) -> dict[str, Any] | None:
    records, pipes, users = m.Record.__table__, m.Pipeline.__table__, m.User.__table__
    emails, contacts, deliveries = m.Email.__table__, m.Contact.__table__, m.Delivery.__table__
    with engine.connect() as conn:
        row = conn.execute(
            select(records, pipes.c.name.label("pipeline")).join(pipes, pipes.c.id == records.c.pipeline_id)
            .where(records.c.id == record_id)
        ).one_or_none()
        if row is None:
            return None
        owner = conn.execute(select(users.c.email).where(users.c.id == row.owner_id)).scalar_one_or_none()
        contact = None
        if row.contact_id is not None:
            c = conn.execute(select(contacts).where(contacts.c.id == row.contact_id)).one()
            contact = {"id": c.id, "email": c.email, "first_name": c.first_name, "last_name": c.last_name}
        ids = conversation_order(conn, [record_id]).get(record_id, [])
        by_id = {e.id: e for e in conn.execute(select(emails).where(emails.c.id.in_(ids)))} if ids else {}
        conversation = [
            {
                "id": i, "date": ts(by_id[i].date), "sort_at": ts(by_id[i].sort_at), "from": by_id[i].from_address,
                "subject": by_id[i].subject, "direction": by_id[i].direction, "kind": by_id[i].kind,
                "message_id": by_id[i].message_id,
            }
            for i in ids
        ]
        decisions = [
            {"email_id": d.email_id, "at": ts(d.created_at), **d.decision}
            for d in conn.execute(select(deliveries).where(deliveries.c.email_id.in_(ids)).order_by(deliveries.c.id))
        ] if ids else []
        org = rules.orgs.get(row.org_id)
        pipe = org.pipelines.get(row.pipeline) if org else None
        token = format_token(org.record_token, pipe.token_prefix, row.id) if org and pipe else None
        return {
            "id": row.id, "org": row.org_id, "pipeline": row.pipeline, "stage": row.stage, "title": row.title,
            "token": token, "owner": owner, "tags": row.tags, "contact": contact,
            "created_at": ts(row.created_at), "updated_at": ts(row.updated_at),
            "conversation": conversation,
            "stage_history": stage_history(conn, [record_id]).get(record_id, []),
            "decisions": decisions,
        }


class StageError(LookupError):
    pass


def move(engine: Engine, rules: RuleIndex, record_id: int, stage: str, cause: str = "manual") -> dict[str, Any]:
    """Move a record to a stage of its pipeline, keeping the history."""
    records, pipes = m.Record.__table__, m.Pipeline.__table__
    with write_transaction(engine) as conn:
        row = conn.execute(
            select(records.c.id, records.c.org_id, records.c.stage, pipes.c.name)
            .join(pipes, pipes.c.id == records.c.pipeline_id)
            .where(records.c.id == record_id).with_for_update(of=records)
        ).one_or_none()
        if row is None:
            raise StageError(f"no record {record_id}")
        org = rules.orgs.get(row.org_id)
        pipe = org.pipelines.get(row.name) if org else None
        if pipe is None:
            raise StageError(f"pipeline {row.name!r} of record {record_id} is no longer in the rules")
        if stage not in pipe.stages:
            raise StageError(f"{stage!r} is not a stage of {pipe.name} (stages: {', '.join(pipe.stages)})")
        if row.stage == stage:
            return {"id": record_id, "from": stage, "to": stage, "changed": False}
        conn.execute(update(records).where(records.c.id == record_id).values(stage=stage, updated_at=repo.now()))
        add_stage_change(conn, row.org_id, record_id, row.stage, stage, cause)
        return {"id": record_id, "from": row.stage, "to": stage, "changed": True}
