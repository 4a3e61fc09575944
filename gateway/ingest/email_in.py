"""Email-in pipeline aliases (SPEC section 3): records, threaded conversations, reopen.

A mail to an alias joins the record whose thread it continues (see
gateway.conversations), or becomes a new record in the pipeline's first stage,
linked to the sender's contact (created from the sender when there is none).
A reply to a record in one of the alias's closed stages reopens it.  Auto-replies,
bounces and our own mail never create records or contacts and never reopen;
outside any thread they are accepted and dropped (no backscatter).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from gateway.addresses import looks_like_address, normalise
from gateway.conversations import ThreadMatch, find_thread
from gateway.ingest import noise
from gateway.ingest.dropbox import sender_of
from gateway.message import ParsedMessage
from gateway.routing import AliasRoute
from gateway.rules.index import RuleIndex
from gateway.store import models as m
from gateway.store import repo
from gateway.store.db import write_transaction

NO_SUBJECT = "(no subject)"
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def split_name(display_name: str, address: str) -> tuple[str, str]:
    """(first, last) from a display name; the address as last name when there is none.
    CJK names are written family name first ("山田 太郎")."""
    name = " ".join(display_name.replace('"', " ").split())
    if not name or normalise(name) == address:
        return "", address
    parts = name.split(" ")
    if len(parts) == 1:
        return "", parts[0]
    if _CJK.search(name):
        return " ".join(parts[1:]), parts[0]
    return " ".join(parts[:-1]), parts[-1]


def file(engine: Engine, rules: RuleIndex, route: AliasRoute, parsed: ParsedMessage, envelope_sender: str) -> repo.FilingResult:
    alias = route.alias
    org = rules.orgs[route.org_id]
    pipeline = org.pipelines[alias.pipeline]
    owner = org.users.get(alias.owner)
    sender = sender_of(parsed, envelope_sender)
    kind = noise.classify(parsed, envelope_sender, sender, rules)
    decision: dict[str, Any] = {
        "route": "alias",
        "alias": alias.address,
        "pipeline": pipeline.name,
        "sender": sender,
        "noise": f"{kind[0]}: {kind[1]}" if kind else None,
    }
    result = repo.FilingResult()
    with write_transaction(engine) as conn:
        delivery_id = repo.claim_delivery(conn, route.org_id, route.key, parsed, decision)
        if delivery_id is None:
            result.duplicate = True
            return result
        assert pipeline.id is not None
        match = find_thread(conn, org_id=org.id, pipeline_id=pipeline.id, parsed=parsed, sender=sender,
                            record_token=org.record_token, prefix=pipeline.token_prefix)
        decision["thread"] = {"method": match.method, "evidence": match.evidence, "record_id": match.record_id}
        if match.token_ignored:
            decision["thread"]["token_ignored"] = match.token_ignored
        if match.record_id is not None:
            email_id = _join(conn, org.id, match, parsed, sender, kind, alias, decision)
        elif kind:
            decision["outcome"] = "dropped"
            repo.finish_delivery(conn, delivery_id, None, decision)
            result.dropped = True
            result.decision = decision
            return result
        else:
            email_id = _new_record(conn, org.id, pipeline, owner.id if owner else None, alias, parsed, sender, decision)
        result.email_id = email_id
        result.decision = decision
        repo.finish_delivery(conn, delivery_id, email_id, decision)
    return result


def _join(conn: Connection, org_id: str, match: ThreadMatch, parsed: ParsedMessage, sender: str,
          kind: tuple[str, str] | None, alias: Any, decision: dict[str, Any]) -> int:
    records = m.Record.__table__
    record_id = match.record_id
    assert record_id is not None
    email_id = repo.store_email(conn, org_id, parsed, source="alias", direction="inbound", filed_by=None,
                                kind=kind[0] if kind else "message")
    repo.link(conn, org_id, email_id, "record", record_id)
    decision["record"] = {"id": record_id, "action": "joined"}
    decision["outcome"] = "filed"
    contact_id = conn.execute(select(records.c.contact_id).where(records.c.id == record_id)).scalar_one()
    if kind:
        decision["stage_change"] = None
        return email_id
    if contact_id is not None:
        contact_email = conn.execute(select(m.Contact.__table__.c.email)
                                     .where(m.Contact.__table__.c.id == contact_id)).scalar_one()
        if contact_email == sender:
            repo.link(conn, org_id, email_id, "contact", contact_id)
    _participate(conn, org_id, record_id, sender)
    decision["stage_change"] = None
    if alias.reopen and alias.reopen_from:
        # The row lock makes read-and-move exact: of two simultaneous replies, one reopens.
        stage = conn.execute(select(records.c.stage).where(records.c.id == record_id).with_for_update()).scalar_one()
        if stage in alias.reopen_from:
            conn.execute(update(records).where(records.c.id == record_id)
                         .values(stage=alias.reopen_to, updated_at=repo.now()))
            add_stage_change(conn, org_id, record_id, stage, alias.reopen_to, "reply", email_id)
            decision["stage_change"] = {"from": stage, "to": alias.reopen_to, "cause": "reply"}
    return email_id


def _new_record(conn: Connection, org_id: str, pipeline: Any, owner_id: int | None, alias: Any,
                parsed: ParsedMessage, sender: str, decision: dict[str, Any]) -> int:
    first, last = split_name(parsed.from_.name if parsed.from_ else "", sender)
    contact_id: int | None = None
    if looks_like_address(sender):
        wanted = repo.PersonWanted(sender, ("contact",), "contact")
        _, contact_id, action = repo.find_or_create(conn, org_id, wanted, owner_id, "alias", first, last)
        decision["contact"] = {"id": contact_id, "action": action}
    else:
        decision["contact"] = None
    records = m.Record.__table__
    stamp = repo.now()
    record_id = conn.execute(
        records.insert().values(
            org_id=org_id, pipeline_id=pipeline.id, stage=pipeline.first_stage,
            title=parsed.subject.strip() or NO_SUBJECT, owner_id=owner_id, tags=list(alias.tags),
            contact_id=contact_id, created_at=stamp, updated_at=stamp,
        ).returning(records.c.id)
    ).scalar_one()
    email_id = repo.store_email(conn, org_id, parsed, source="alias", direction="inbound", filed_by=None)
    repo.link(conn, org_id, email_id, "record", record_id)
    if contact_id is not None:
        repo.link(conn, org_id, email_id, "contact", contact_id)
        _participate(conn, org_id, record_id, sender)
    add_stage_change(conn, org_id, record_id, None, pipeline.first_stage, "created", email_id)
    decision["record"] = {"id": record_id, "action": "created"}
    decision["stage_change"] = {"from": None, "to": pipeline.first_stage, "cause": "created"}
    decision["outcome"] = "filed"
    return email_id


def _participate(conn: Connection, org_id: str, record_id: int, address: str) -> None:
    parts = m.Participant.__table__
    conn.execute(repo.insert_for(conn, parts).values(org_id=org_id, record_id=record_id, address=address)
                 .on_conflict_do_nothing())


def add_stage_change(conn: Connection, org_id: str, record_id: int, from_stage: str | None, to_stage: str,
                     cause: str, email_id: int | None = None) -> None:
    conn.execute(m.StageChange.__table__.insert().values(
        org_id=org_id, record_id=record_id, from_stage=from_stage, to_stage=to_stage,
        at=repo.now(), cause=cause, email_id=email_id))
