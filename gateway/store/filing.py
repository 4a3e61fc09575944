"""Committing a filing plan (gateway/filing/): the one place a filing writes.

The idempotency key goes in first (store/deliveries.py): the same mail again finds
it and files nothing.  Then the people, the email and its links, the record and its
stage changes; last the decision, stored with the key.  All on the caller's
connection, inside the caller's transaction (committed, a savepoint of a batch, or
rolled back by `gateway explain`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from gateway.outcome import (
    AliasDecision,
    AliasPlan,
    DropboxDecision,
    DropboxPlan,
    DropNoise,
    Filing,
    JoinRecord,
    Link,
    NewRecord,
    Person,
    Plan,
    StageChange,
    Touched,
    decision_json,
    plan_json,
)
from gateway.message import ParsedMessage
from gateway.store import deliveries, emails, people, records, review
from gateway.store.sql import now


def commit(conn: Connection, parsed: ParsedMessage, plan: Plan, *, delivery_id: int | None = None) -> Filing:
    """Write what ``plan`` decided, exactly once per (organisation, route, message).
    ``delivery_id``: the delivery of a held message being approved (its key is claimed
    already, by the hold)."""
    if delivery_id is None:
        delivery_id = deliveries.claim(conn, plan.org_id, plan.route_key, parsed, plan_json(plan))
        if delivery_id is None:
            return Filing("duplicate", None)
    w = _Writer(conn, plan.org_id, now())
    if plan.hold is not None:
        return _held(w, parsed, plan, delivery_id)
    filing = _dropbox(w, parsed, plan) if isinstance(plan, DropboxPlan) else _alias(w, parsed, plan)
    assert filing.decision is not None
    doc = decision_json(filing.decision)
    deliveries.finish(conn, delivery_id, filing.email_id, doc)
    return replace(filing, at=w.at, links=tuple(w.links), email=w.email, decision_doc=doc)


class _Writer:
    """The connection, organisation and one time stamp of a commit, and the links it made."""

    def __init__(self, conn: Connection, org_id: str, at: datetime):
        self.conn, self.org_id, self.at = conn, org_id, at
        self.links: list[Link] = []
        self.email: dict[str, Any] | None = None  # the emails row written, with its id

    def link(self, email_id: int, kind: str, target_id: int) -> None:
        emails.link(self.conn, self.org_id, email_id, kind, target_id)
        self.links.append(Link(kind, target_id))

    def store(self, parsed: ParsedMessage, *, source: str, direction: str, filed_by: int | None,
              kind: str = "message", visibility: str = "public", forwarded_by: str | None = None,
              forward_note: str | None = None) -> int:
        self.email = emails.values(self.org_id, parsed, source=source, direction=direction, filed_by=filed_by,
                                   kind=kind, visibility=visibility, arrived=self.at, forwarded_by=forwarded_by,
                                   forward_note=forward_note)
        self.email["id"] = emails.insert(self.conn, self.email, parsed)
        return self.email["id"]  # type: ignore[no-any-return]


def _dropbox(w: _Writer, parsed: ParsedMessage, plan: DropboxPlan) -> Filing:
    found = []
    for wanted in plan.wanted:  # sorted by address: row locks in one order
        kind, person_id, action = people.find_or_create(w.conn, plan.org_id, wanted, plan.user_id, "dropbox",
                                                        at=w.at)
        found.append(Person(wanted.address, kind, person_id, action))  # type: ignore[arg-type]
    if plan.filed is not None:  # a forward, filed as its original
        assert parsed.forward is not None
        email_id = w.store(plan.filed, source="dropbox", direction="inbound", filed_by=plan.user_id,
                           visibility=plan.visibility, forwarded_by=plan.sender, forward_note=parsed.forward.note)
    else:
        email_id = w.store(parsed, source="dropbox", direction="inbound", filed_by=plan.user_id,
                           visibility=plan.visibility)
    for person in found:
        assert person.id is not None
        w.link(email_id, person.kind, person.id)
    decision = DropboxDecision(plan.user, plan.sender, plan.search, plan.creates, plan.customers, tuple(found),
                               plan.forward, plan.auth)
    return Filing("filed", decision, email_id)


def _held(w: _Writer, parsed: ParsedMessage, plan: Plan, delivery_id: int) -> Filing:
    """Keep the message for review (gateway/review.py): nothing is filed, the decision
    says why it was held, and the delivery's key stays taken (a repeat is a duplicate)."""
    assert plan.hold is not None
    hold = plan.hold
    held_id = review.hold(w.conn, plan.org_id, plan.route_key, hold.route_ref, delivery_id, hold.envelope_sender,
                          plan.sender, parsed, hold.reason, hold.evidence, w.at)
    held = replace(hold, id=held_id)
    decision: DropboxDecision | AliasDecision
    if isinstance(plan, DropboxPlan):
        decision = DropboxDecision(plan.user, plan.sender, plan.search, plan.creates, plan.customers, (),
                                   plan.forward, plan.auth, held)
    else:
        decision = AliasDecision(plan.alias, plan.pipeline, plan.sender, plan.noise, plan.thread, "held", held=held)
    doc = decision_json(decision)
    deliveries.finish(w.conn, delivery_id, None, doc)
    return Filing("held", decision, None, held_id=held_id, at=w.at, decision_doc=doc)


def _alias(w: _Writer, parsed: ParsedMessage, plan: AliasPlan) -> Filing:
    conn, org_id, action = w.conn, plan.org_id, plan.action
    base = dict(alias=plan.alias, pipeline=plan.pipeline, sender=plan.sender, noise=plan.noise, thread=plan.thread,
                spam=plan.spam)
    if isinstance(action, DropNoise):
        return Filing("dropped", AliasDecision(**base, outcome="dropped"))
    if isinstance(action, JoinRecord):
        email_id = w.store(parsed, source="alias", direction="inbound", filed_by=None,
                           kind=plan.noise.kind if plan.noise else "message")
        w.link(email_id, "record", action.record_id)
        if action.link_contact is not None:
            w.link(email_id, "contact", action.link_contact)
        _answered_dropbox_mail(w, plan, action.record_id)
        records.participate(conn, org_id, action.record_id, action.participants)
        change = action.stage_change
        if change is not None:
            records.set_stage(conn, action.record_id, change.to_stage)
            records.add_stage_change(conn, org_id, action.record_id, change.from_stage, change.to_stage,
                                     change.cause, email_id)
        return Filing("filed", AliasDecision(**base, outcome="filed", record=Touched(action.record_id, "joined"),
                                             stage_change=change, participants=action.participants), email_id)
    return _new_record(w, parsed, plan, action, base)


def _new_record(w: _Writer, parsed: ParsedMessage, plan: AliasPlan, action: NewRecord,
                base: dict) -> Filing:  # type: ignore[type-arg]
    conn, org_id = w.conn, plan.org_id
    contact: Touched | None = None
    if action.contact is not None:
        _, contact_id, made = people.find_or_create(conn, org_id, action.contact, action.owner_id, "alias",
                                                    action.first_name, action.last_name, at=w.at)
        contact = Touched(contact_id, made)  # type: ignore[arg-type]
    record_id = records.create(conn, org_id, pipeline_id=action.pipeline_id, stage=action.stage, title=action.title,
                               owner_id=action.owner_id, tags=list(action.tags),
                               contact_id=contact.id if contact else None, at=w.at)
    email_id = w.store(parsed, source="alias", direction="inbound", filed_by=None)
    w.link(email_id, "record", record_id)
    if contact is not None:
        assert contact.id is not None
        w.link(email_id, "contact", contact.id)
    records.participate(conn, org_id, record_id, action.participants)
    _answered_dropbox_mail(w, plan, record_id)
    change = StageChange(None, action.stage, "created")
    records.add_stage_change(conn, org_id, record_id, None, action.stage, "created", email_id)
    decision = AliasDecision(**base, outcome="filed", record=Touched(record_id, "created"), contact=contact,
                             stage_change=change, new_record=True, participants=action.participants)
    return Filing("filed", decision, email_id)


def _answered_dropbox_mail(w: _Writer, plan: AliasPlan, record_id: int) -> None:
    """The user's BCC'd mail this answers (issue 15) joins the record's conversation:
    the record shows the mail that started it."""
    if plan.thread.dropbox_email is not None:
        emails.link(w.conn, plan.org_id, plan.thread.dropbox_email, "record", record_id)
