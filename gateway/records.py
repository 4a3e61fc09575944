"""Pipeline records as administrators and scripts see them: show, export, move,
and the text `gateway record` prints (render_show, render_move).  The rows come
from the store (gateway/store/records.py and the modules of the other aggregates);
here they become the documents and text."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine

from gateway.errors import UserError
from gateway.filing.threads import record_token
from gateway.outcome import decision_from_json, decision_json
from gateway.rules.index import RuleIndex
from gateway.store import deliveries
from gateway.store import emails as store_emails
from gateway.store import people as store_people
from gateway.store import records as store_records
from gateway.store import users as store_users


def ts(value: datetime | None) -> str | None:
    """UTC ISO 8601 with Z (SQLite hands back naive datetimes; we only store UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.isoformat() + "Z"
    return value.isoformat().replace("+00:00", "Z")


def conversation_order(conn: Connection, record_ids: list[int] | None = None) -> dict[int, list[int]]:
    """record id → email ids in conversation order (Date, or arrival; then id)."""
    return store_records.conversation_order(conn, record_ids)


def stage_history(conn: Connection, record_ids: list[int] | None = None) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in store_records.stage_changes(conn, record_ids):
        out.setdefault(r.record_id, []).append(
            {"from": r.from_stage, "to": r.to_stage, "at": ts(r.at), "cause": r.cause, "email_id": r.email_id})
    return out


def export_records(conn: Connection, org_id: str | None, owners: dict[int, str]) -> list[dict[str, Any]]:
    rows = store_records.listing(conn, org_id)
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
    with engine.connect() as conn:
        row = store_records.with_pipeline(conn, record_id)
        if row is None:
            return None
        owner = store_users.email(conn, row.owner_id)
        contact = None
        if row.contact_id is not None:
            c = store_people.get(conn, "contact", row.contact_id)
            contact = {"id": c.id, "email": c.email, "first_name": c.first_name, "last_name": c.last_name}
        ids = conversation_order(conn, [record_id]).get(record_id, [])
        by_id = store_emails.by_ids(conn, ids) if ids else {}
        conversation = [
            {
                "id": i, "date": ts(by_id[i].date), "sort_at": ts(by_id[i].sort_at), "from": by_id[i].from_address,
                "subject": by_id[i].subject, "direction": by_id[i].direction, "kind": by_id[i].kind,
                "message_id": by_id[i].message_id,
            }
            for i in ids
        ]
        decisions = [
            # Read back as the typed outcome and shown as it serialises (gateway/outcome.py).
            {"email_id": d.email_id, "at": ts(d.created_at), **decision_json(decision_from_json(d.decision))}
            for d in deliveries.decisions(conn, ids)
        ] if ids else []
        org = rules.orgs.get(row.org_id)
        pipe = org.pipelines.get(row.pipeline) if org else None
        token = record_token(org, row.pipeline, row.id) if org and pipe else None
        return {
            "id": row.id, "org": row.org_id, "pipeline": row.pipeline, "stage": row.stage, "title": row.title,
            "token": token, "owner": owner, "tags": row.tags, "contact": contact,
            "created_at": ts(row.created_at), "updated_at": ts(row.updated_at),
            "conversation": conversation,
            "stage_history": stage_history(conn, [record_id]).get(record_id, []),
            "decisions": decisions,
        }


def render_show(shown: dict[str, Any]) -> str:
    """`gateway record show` as text: what show() returns, one fact per line."""
    contact = shown["contact"]
    lines = [
        f"Record {shown['id']} {shown['token'] or ''}  [{shown['org']}]  {shown['title']}",
        f"  pipeline: {shown['pipeline']}   stage: {shown['stage']}   owner: {shown['owner']}",
        f"  tags: {', '.join(shown['tags']) or '-'}",
    ]
    if contact:
        name = " ".join(x for x in (contact["first_name"], contact["last_name"]) if x)
        lines.append(f"  contact: {contact['id']} {name} <{contact['email']}>")
    lines.append("  conversation:")
    for e in shown["conversation"]:
        mark = "" if e["kind"] == "message" else f" [{e['kind']}]"
        arrow = "<-" if e["direction"] == "inbound" else "->"
        lines.append(f"    {e['sort_at']}  {arrow} {e['from']}  {e['subject']}{mark}  (email {e['id']})")
    lines.append("  stage history:")
    for h in shown["stage_history"]:
        lines.append(f"    {h['at']}  {h['from'] or '-'} -> {h['to']}  ({h['cause']})")
    lines.append("  decisions:")
    for d in shown["decisions"]:
        thread = d.get("thread") or {}
        change = d.get("stage_change")
        parts = [f"email {d['email_id']}", "sent" if d.get("route") == "relay" else "received",
                 f"thread={thread.get('method', '-')}"]
        if thread.get("evidence"):
            parts.append(f"by {thread['evidence']}")
        if d.get("contact"):
            parts.append(f"contact {d['contact']['action']}")
        if d.get("noise"):
            parts.append(f"noise={d['noise']}")
        if change:
            parts.append(f"stage {change['from'] or '-'} -> {change['to']}")
        if d.get("token_added"):
            parts.append("token added to subject")
        lines.append("    " + ", ".join(parts))
    return "\n".join(lines)


class StageError(UserError):
    pass


def move(conn: Connection, rules: RuleIndex, record_id: int, stage: str, cause: str = "manual") -> dict[str, Any]:
    """Move a record to a stage of its pipeline, keeping the history.  The record row
    stays locked from the read to the change, so the history records the stage it
    really left."""
    row = store_records.get(conn, record_id, lock=True)
    if row is None:
        raise StageError(f"no record {record_id}")
    org = rules.orgs.get(row.org_id)
    pipe = org.pipelines.get(row.pipeline) if org else None
    if pipe is None:
        raise StageError(f"pipeline {row.pipeline!r} of record {record_id} is no longer in the rules")
    if stage not in pipe.stages:
        raise StageError(f"{stage!r} is not a stage of {pipe.name} (stages: {', '.join(pipe.stages)})")
    if row.stage == stage:
        return {"id": record_id, "from": stage, "to": stage, "changed": False}
    store_records.set_stage(conn, record_id, stage)
    store_records.add_stage_change(conn, row.org_id, record_id, row.stage, stage, cause)
    return {"id": record_id, "from": row.stage, "to": stage, "changed": True}


def render_move(moved: dict[str, Any]) -> str:
    """`gateway record stage` as text: what move() returns."""
    if moved["changed"]:
        return f"record {moved['id']}: {moved['from']} -> {moved['to']}"
    return f"record {moved['id']} is already in {moved['to']}"
