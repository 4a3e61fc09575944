"""Pipeline records as administrators, scripts and the API see them: show, export,
move, edit (stage, owner, tags), a page of summaries, and the text `gateway record`
prints (render_show, render_move).  The rows come from the store
(gateway/store/records.py and the modules of the other aggregates); here they become
the documents and text."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from sqlalchemy import Connection, Engine

from gateway import sharing
from gateway.errors import UserError
from gateway.outcome import decision_from_json, decision_json
from gateway.rules.index import RuleIndex, record_token
from gateway.store import deliveries
from gateway.store import emails as store_emails
from gateway.store import people as store_people
from gateway.store import records as store_records
from gateway.store import users as store_users
from gateway.views import ts


def conversation_order(conn: Connection, record_ids: list[int] | None = None) -> dict[int, list[int]]:
    """record id → email ids in conversation order (Date, or arrival; then id)."""
    return store_records.conversation_order(conn, record_ids)


def stage_history(conn: Connection, record_ids: list[int] | None = None) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in store_records.stage_changes(conn, record_ids):
        entry = {"from": r.from_stage, "to": r.to_stage, "at": ts(r.at), "cause": r.cause, "email_id": r.email_id}
        if r.actor is not None:  # a person's move (API): who; the entries before it keep their shape
            entry["actor"] = r.actor
        out.setdefault(r.record_id, []).append(entry)
    return out


def export_records(conn: Connection, org_id: str | None, owners: dict[int, str]) -> list[dict[str, Any]]:
    rows = store_records.listing(conn, org_id)
    taking_part = store_records.all_participants(conn, org_id)
    order = conversation_order(conn)
    history = stage_history(conn)
    return [
        {
            "id": r.id, "org": r.org_id, "pipeline": r.pipeline, "stage": r.stage, "title": r.title,
            "owner": owners.get(r.owner_id), "tags": r.tags, "contact_id": r.contact_id,
            "participants": taking_part.get(r.id, []),
            "email_ids": order.get(r.id, []), "stage_history": history.get(r.id, []),
            "created_at": ts(r.created_at), "updated_at": ts(r.updated_at),
        }
        for r in rows
    ]


def show(engine: Engine, rules: RuleIndex, record_id: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        return show_on(conn, rules, record_id)


def show_on(conn: Connection, rules: RuleIndex, record_id: int, org_id: str | None = None,
            viewer: int | None = None) -> dict[str, Any] | None:
    """What `gateway record show --json` prints (None: no such record, of ``org_id`` when
    given).  ``viewer``: a user's id (an API token bound to a user) -- the conversation
    then leaves out the emails that user may not see (SPEC 2.12: a colleague's private
    dropbox mail that started the record)."""
    row = store_records.with_pipeline(conn, record_id)
    if row is None or (org_id is not None and row.org_id != org_id):
        return None
    owner = store_users.email(conn, row.owner_id)
    contact = None
    if row.contact_id is not None:
        c = store_people.get(conn, "contact", row.contact_id)
        contact = {"id": c.id, "email": c.email, "first_name": c.first_name, "last_name": c.last_name}
    ids = conversation_order(conn, [record_id]).get(record_id, [])
    by_id = store_emails.by_ids(conn, ids) if ids else {}
    if viewer is not None:
        ids = _seen_by(conn, rules, row.org_id, viewer, ids, by_id)
    conversation = [
        {
            "id": i, "date": ts(by_id[i].date), "sort_at": ts(by_id[i].sort_at), "from": by_id[i].from_address,
            "subject": by_id[i].subject, "direction": by_id[i].direction, "kind": by_id[i].kind,
            "message_id": by_id[i].message_id, "source": by_id[i].source, "new_text": by_id[i].new_text,
            "forwarded_by": by_id[i].forwarded_by, "invitation": by_id[i].invitation,
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
        "participants": store_records.participants(conn, record_id),
        "created_at": ts(row.created_at), "updated_at": ts(row.updated_at),
        "conversation": conversation,
        "stage_history": stage_history(conn, [record_id]).get(record_id, []),
        "decisions": decisions,
    }


def _seen_by(conn: Connection, rules: RuleIndex, org_id: str, viewer: int, ids: list[int],
             by_id: Mapping[int, Any]) -> list[int]:
    """The emails of ``ids`` the user ``viewer`` may see (gateway/sharing.py)."""
    unsure = [i for i in ids if by_id[i].visibility != "public"]
    customers: dict[int, list[str]] = {}
    for link in store_emails.api_links(conn, org_id, unsure):
        if link.address is not None:
            customers.setdefault(link.email_id, []).append(link.address)
    org = rules.orgs[org_id]
    return [i for i in ids if i not in unsure or sharing.visible(org, viewer, by_id[i].filed_by_user_id,
                                                                   by_id[i].visibility, customers.get(i, ()))]


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
    lines.append(f"  participants: {', '.join(shown['participants']) or '-'}")
    lines.append("  conversation:")
    for e in shown["conversation"]:
        mark = "" if e["kind"] == "message" else f" [{e['kind']}]"
        if e["source"] == "dropbox":
            mark += " [dropbox]"
        arrow = "<-" if e["direction"] == "inbound" else "->"
        lines.append(f"    {e['sort_at']}  {arrow} {e['from']}  {e['subject']}{mark}  (email {e['id']})")
        if e["forwarded_by"]:
            lines.append(f"        forwarded by {e['forwarded_by']}")
        invitation = e["invitation"]
        if invitation:
            lines.append(f"        invitation {invitation['method'] or '-'}: {invitation['summary']}  "
                         f"{invitation['start'] or '?'} .. {invitation['end'] or '?'}  "
                         f"organiser {invitation['organizer'] or '-'}, "
                         f"{len(invitation['attendees'])} attendee(s)")
        lines.extend(f"        | {line}" for line in _excerpt(e["new_text"]))
    lines.append("  stage history:")
    for h in shown["stage_history"]:
        who = f" by {h['actor']}" if h.get("actor") else ""
        lines.append(f"    {h['at']}  {h['from'] or '-'} -> {h['to']}  ({h['cause']}{who})")
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
        if d.get("spam"):
            parts.append(f"SPAM per the MTA ({d['spam']})")
        if change:
            parts.append(f"stage {change['from'] or '-'} -> {change['to']}")
        if d.get("token_added"):
            parts.append("token added to subject")
        lines.append("    " + ", ".join(parts))
    return "\n".join(lines)


def _excerpt(text: str, lines: int = 4, width: int = 100) -> list[str]:
    """The first lines of a new text, for the conversation listing."""
    shown = [line.rstrip()[:width] for line in text.strip().splitlines() if line.strip()]
    return shown[:lines] + (["..."] if len(shown) > lines else [])


class RecordChangeError(UserError):
    """A change of a record the rules do not allow: ``field`` names what, ``allowed``
    the values that would do (also named in the message)."""

    def __init__(self, field: str, message: str, allowed: Iterable[str] = ()):
        super().__init__(message)
        self.field, self.allowed = field, tuple(allowed)


class StageError(RecordChangeError):
    def __init__(self, message: str, allowed: Iterable[str] = ()):
        super().__init__("stage", message, allowed)


def _check_stage(rules: RuleIndex, org_id: str, pipeline: str, record_id: int, stage: str) -> None:
    org = rules.orgs.get(org_id)
    pipe = org.pipelines.get(pipeline) if org else None
    if pipe is None:
        raise StageError(f"pipeline {pipeline!r} of record {record_id} is no longer in the rules")
    if stage not in pipe.stages:
        raise StageError(f"{stage!r} is not a stage of {pipe.name} (stages: {', '.join(pipe.stages)})", pipe.stages)


def move(conn: Connection, rules: RuleIndex, record_id: int, stage: str, cause: str = "manual", *,
         actor: str | None = None) -> dict[str, Any]:
    """Move a record to a stage of its pipeline, keeping the history (``actor``: who
    moved it, when a person did).  The record row stays locked from the read to the
    change, so the history records the stage it really left."""
    row = store_records.get(conn, record_id, lock=True)
    if row is None:
        raise StageError(f"no record {record_id}")
    _check_stage(rules, row.org_id, row.pipeline, record_id, stage)
    if row.stage == stage:
        return {"id": record_id, "from": stage, "to": stage, "changed": False}
    store_records.set_stage(conn, record_id, stage)
    store_records.add_stage_change(conn, row.org_id, record_id, row.stage, stage, cause, actor=actor)
    _tell_stage_change(conn, rules, row.org_id, record_id, row.pipeline, row.stage, stage, "manual", actor)
    return {"id": record_id, "from": row.stage, "to": stage, "changed": True}


def _tell_stage_change(conn: Connection, rules: RuleIndex, org_id: str, record_id: int, pipeline: str,
                       from_stage: str, to_stage: str, reason: str, actor: str | None) -> None:
    """record.stage_changed, in the transaction of the move (under the record's lock)."""
    from gateway import events
    from gateway.store import events as store_events

    store_events.append(conn, org_id, [events.stage_changed(rules.orgs[org_id], record_id, pipeline, from_stage,
                                                             to_stage, reason, actor=actor)])


def edit(conn: Connection, rules: RuleIndex, org_id: str, record_id: int, changes: Mapping[str, Any],
         actor: str) -> list[str] | None:
    """Change ``org_id``'s record: ``changes`` holds any of ``stage`` (of its pipeline),
    ``owner`` (an active user's address; None: no owner) and ``tags`` (a list; a tag
    given twice is kept once).  Everything is checked before anything is written, and
    only what differs is written (a stage change joins the history with ``actor``;
    updated_at moves).  Returns the fields that changed; None: no such record."""
    row = store_records.with_pipeline(conn, record_id, org_id, lock=True)
    if row is None:
        return None
    stage, owner_id, tags = row.stage, row.owner_id, list(row.tags or [])
    if "stage" in changes:
        stage = changes["stage"]
        _check_stage(rules, org_id, row.pipeline, record_id, stage)
    if "owner" in changes:
        owner_id = None if changes["owner"] is None else _owner_id(rules, org_id, changes["owner"])
    if "tags" in changes:
        tags = list(dict.fromkeys(changes["tags"]))
    changed = []
    if stage != row.stage:
        store_records.set_stage(conn, record_id, stage)
        store_records.add_stage_change(conn, org_id, record_id, row.stage, stage, "manual", actor=actor)
        _tell_stage_change(conn, rules, org_id, record_id, row.pipeline, row.stage, stage, "api", actor)
        changed.append("stage")
    if owner_id != row.owner_id:
        store_records.set_owner(conn, record_id, owner_id)
        changed.append("owner")
    if tags != list(row.tags or []):
        store_records.set_tags(conn, record_id, tags)
        changed.append("tags")
    return changed


def _owner_id(rules: RuleIndex, org_id: str, address: str) -> int:
    from gateway.addresses import normalise

    org = rules.orgs[org_id]
    user = org.users.get(normalise(address))
    if user is None or not user.active or user.id is None:
        allowed = sorted(u.email for u in org.users.values() if u.active and u.id is not None)
        raise RecordChangeError("owner", f"{address!r} is not an active user of {org_id} (users: {', '.join(allowed)})",
                                allowed)
    return user.id


def summaries(conn: Connection, rules: RuleIndex, org_id: str, *, after: int, limit: int,
              pipeline: str | None = None, stage: str | None = None,
              updated_since: datetime | None = None) -> list[dict[str, Any]]:
    """Up to ``limit`` of ``org_id``'s records after the id ``after``, by id: each as
    show() has it without conversation, history and decisions (``contact_id`` for the
    contact).  ``updated_since`` (inclusive) without a time zone is taken as UTC."""
    if updated_since is not None:
        updated_since = (updated_since.replace(tzinfo=timezone.utc) if updated_since.tzinfo is None
                         else updated_since.astimezone(timezone.utc))
    org = rules.orgs.get(org_id)
    rows = store_records.page(conn, org_id, after=after, limit=limit, pipeline=pipeline, stage=stage,
                              updated_since=updated_since)
    return [
        {
            "id": r.id, "org": r.org_id, "pipeline": r.pipeline, "stage": r.stage, "title": r.title,
            "token": record_token(org, r.pipeline, r.id) if org and r.pipeline in org.pipelines else None,
            "owner": r.owner, "tags": r.tags, "contact_id": r.contact_id,
            "created_at": ts(r.created_at), "updated_at": ts(r.updated_at),
        }
        for r in rows
    ]


def render_move(moved: dict[str, Any]) -> str:
    """`gateway record stage` as text: what move() returns."""
    if moved["changed"]:
        return f"record {moved['id']}: {moved['from']} -> {moved['to']}"
    return f"record {moved['id']} is already in {moved['to']}"
