"""What a CRM is told (issue 14): the event types, the shape of each one's ``data``
(pydantic models: the OpenAPI document lists them), an event's public id, and the
events of each change -- built from the change's outcome, written by the caller in
the same transaction (gateway/store/events.py).

    email.filed            an email was filed (dropbox, alias, outbound)
    record.created         email-in opened a record
    record.stage_changed   a record moved: reply (reopen), manual (CLI), api
    contact.created        a contact was made (filing, API, import)
    lead.created           a lead was made (filing, API, import)
    relay.failed           the smarthost refused the CRM's mail or was unreachable
    quota.exhausted        the first refusal of an organisation and class in a day
    message.quarantined    a message kept failing with our own error and was set aside
    ping                   `gateway webhooks test` (never stored)
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from gateway import views
from gateway.message import ParsedMessage
from gateway.outcome import AliasDecision, DropboxDecision, Filing, Plan, decision_json
from gateway.views import public_id, ts
from gateway.rules.index import OrgEntry, RuleIndex, record_token
from gateway.store.events import NewEvent

EMAIL_FILED = "email.filed"
RECORD_CREATED = "record.created"
RECORD_STAGE_CHANGED = "record.stage_changed"
CONTACT_CREATED = "contact.created"
LEAD_CREATED = "lead.created"
RELAY_FAILED = "relay.failed"
QUOTA_EXHAUSTED = "quota.exhausted"
MESSAGE_QUARANTINED = "message.quarantined"
MESSAGE_HELD = "message.held"
PING = "ping"
TYPES = (EMAIL_FILED, RECORD_CREATED, RECORD_STAGE_CHANGED, CONTACT_CREATED, LEAD_CREATED, RELAY_FAILED,
         QUOTA_EXHAUSTED, MESSAGE_QUARANTINED, MESSAGE_HELD)
EventType = Literal["email.filed", "record.created", "record.stage_changed", "contact.created", "lead.created",
                    "relay.failed", "quota.exhausted", "message.quarantined", "message.held"]
PERSON_CREATED = {"contact": CONTACT_CREATED, "lead": LEAD_CREATED}


# --- public ids ----------------------------------------------------------------------

_ID = re.compile(r"^evt_(?P<org>[a-z0-9][a-z0-9_-]*)_(?P<seq>[0-9]{1,18})$")


def seq_of(org_id: str, event_id: str) -> int | None:
    """The seq an event id of ``org_id`` names, or None (not an id of this organisation)."""
    m = _ID.match(event_id)
    return int(m.group("seq")) if m and m.group("org") == org_id else None


def envelope(org_id: str, seq: int, type_: str, created_at: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """An event as the feed lists it (a webhook's body is the same without ``id``:
    the id travels in ``webhook-id``)."""
    return {"id": public_id(org_id, seq), "type": type_, "timestamp": ts(created_at), "data": data}


# --- the data of each type (documentation; built as plain dicts below) ----------------

class EventLink(BaseModel):
    kind: Literal["lead", "contact", "record"]
    id: int


class EventAttachment(BaseModel):
    index: int
    filename: str
    content_type: str
    size: int


class EventSender(BaseModel):
    name: str
    address: str


class EventEmail(BaseModel):
    """An email as GET /v1/emails/{id} shows it, without its bodies."""

    model_config = {"populate_by_name": True}
    id: int
    message_id: str | None
    subject: str
    from_: EventSender = Field(alias="from")
    to: list[str]
    cc: list[str]
    date: str | None
    received_at: str
    kind: str
    direction: Literal["inbound", "outbound"]
    source: Literal["dropbox", "alias", "outbound"]
    filed_by: str | None
    visibility: Literal["private", "custom", "public"]
    size: int
    links: list[EventLink]
    attachments: list[EventAttachment]
    forwarded_by: str | None = Field(description="a forward filed as its original: the user who forwarded it")
    forward_note: str | None = Field(description="that user's note above the forward")
    invitation: dict[str, Any] | None = Field(description="a meeting invitation's fields, as GET /v1/emails/{id} "
                                                          "shows them")


class EmailFiledData(BaseModel):
    """email.filed"""

    email: EventEmail
    decision: dict[str, Any] = Field(description="why it was filed so (as `gateway explain` and the record's "
                                                 "decisions show it)")


class EventRecord(BaseModel):
    id: int
    org: str
    pipeline: str
    stage: str
    title: str
    token: str | None
    owner: str | None
    tags: list[str]
    contact_id: int | None
    created_at: str
    updated_at: str


class RecordCreatedData(BaseModel):
    """record.created"""

    record: EventRecord
    email_id: int | None = Field(description="the mail that opened it")


class RecordStageChangedData(BaseModel):
    """record.stage_changed"""

    record_id: int
    pipeline: str
    token: str | None
    from_: str | None = Field(alias="from")
    to: str
    reason: Literal["reply", "manual", "api"]
    email_id: int | None = Field(description="the reply that reopened it (reason reply)")
    actor: str | None = Field(description="who moved it (reason manual or api: the token's name)")


class PersonCreatedData(BaseModel):
    """contact.created, lead.created: the person as GET /v1/contacts/{id} shows it."""

    id: int
    email: str
    first_name: str
    last_name: str
    external_id: str | None
    owner: str | None
    source: str
    created_at: str
    updated_at: str | None


class RelayFailedData(BaseModel):
    """relay.failed"""

    message_id: str | None
    mail_from: str
    recipients: list[str]
    login: str
    error: str = Field(description="what the smarthost answered, or why it could not be reached")
    refused: dict[str, str] = Field(description="recipient -> the smarthost's reply")


class QuotaExhaustedData(BaseModel):
    """quota.exhausted"""

    mail_class: str = Field(alias="class")
    limit: int
    day: str = Field(description="the organisation's local day (YYYY-MM-DD)")
    resets_at: str


class MessageQuarantinedData(BaseModel):
    """message.quarantined"""

    quarantine_id: int
    route: str
    recipient: str
    envelope_sender: str
    message_id: str | None
    attempts: int
    error: str


class MessageHeldData(BaseModel):
    """message.held"""

    review_id: int = Field(description="its id in the review queue (GET /v1/review/{id}, `gateway review show`)")
    route: str
    recipient: str
    envelope_sender: str
    sender: str
    subject: str
    message_id: str | None
    reason: str = Field(description="why it was held: authentication | ...")
    evidence: str


DATA_MODELS: dict[str, type[BaseModel]] = {
    EMAIL_FILED: EmailFiledData, RECORD_CREATED: RecordCreatedData, RECORD_STAGE_CHANGED: RecordStageChangedData,
    CONTACT_CREATED: PersonCreatedData, LEAD_CREATED: PersonCreatedData, RELAY_FAILED: RelayFailedData,
    QUOTA_EXHAUSTED: QuotaExhaustedData, MESSAGE_QUARANTINED: MessageQuarantinedData, MESSAGE_HELD: MessageHeldData,
}


# --- the events of a change ------------------------------------------------------------

def _owner(org: OrgEntry, user_id: int | None) -> str | None:
    user = org.users_by_id.get(user_id) if user_id is not None else None
    return user.email if user is not None else None


def email_filed(org: OrgEntry, email: dict[str, Any], links: Any, parsed: ParsedMessage, decision: Any,
                record_id: int | None = None, decision_doc: Any = None) -> NewEvent:
    """email.filed of an emails row just written (``email``: its values, with its id;
    ``decision_doc``: the decision's JSON when the caller has it already)."""
    view = views.email(email, filed_by=_owner(org, email["filed_by_user_id"]),
                       links=[{"kind": link.kind, "id": link.id} for link in links],
                       attachments=[{"filename": a.filename, "content_type": a.content_type, "size": a.size}
                                    for a in parsed.attachments])
    return NewEvent(EMAIL_FILED, {"email": view, "decision": decision_doc or decision_json(decision)}, record_id)


def person_created(org: OrgEntry, kind: str, values: dict[str, Any]) -> NewEvent:
    """contact.created / lead.created of a row just written (``values`` with its id)."""
    return NewEvent(PERSON_CREATED[kind], views.person(values, _owner(org, values.get("owner_id"))))


def people_created(kind: str, rows: Any) -> list[NewEvent]:
    """contact.created / lead.created of rows just written (with their owner's address)."""
    return [NewEvent(PERSON_CREATED[kind], views.person(r._mapping, r.owner)) for r in rows]


def stage_changed(org: OrgEntry, record_id: int, pipeline: str, from_stage: str | None, to_stage: str,
                  reason: str, email_id: int | None = None, actor: str | None = None) -> NewEvent:
    token = record_token(org, pipeline, record_id) if pipeline in org.pipelines else None
    return NewEvent(RECORD_STAGE_CHANGED, {
        "record_id": record_id, "pipeline": pipeline, "token": token, "from": from_stage, "to": to_stage,
        "reason": reason, "email_id": email_id, "actor": actor,
    }, record_id)


def relay_failed(message_id: str | None, mail_from: str, recipients: list[str], login: str, reply: str,
                 detail: str, refused: dict[str, str]) -> NewEvent:
    return NewEvent(RELAY_FAILED, {"message_id": message_id, "mail_from": mail_from, "recipients": recipients,
                                   "login": login, "error": (detail or reply)[:1000], "refused": dict(refused)})


def quota_exhausted(mail_class: str, limit: int, day: str, resets_at: str) -> NewEvent:
    return NewEvent(QUOTA_EXHAUSTED, {"class": mail_class, "limit": limit, "day": day, "resets_at": resets_at})


def message_quarantined(quarantine_id: int, route: str, recipient: str, envelope_sender: str,
                        message_id: str | None, attempts: int, error: str) -> NewEvent:
    return NewEvent(MESSAGE_QUARANTINED, {
        "quarantine_id": quarantine_id, "route": route, "recipient": recipient, "envelope_sender": envelope_sender,
        "message_id": message_id, "attempts": attempts, "error": error[:1000]})


def for_filing(rules: RuleIndex, plan: Plan, parsed: ParsedMessage, filing: Filing) -> list[NewEvent]:
    """The events of a dropbox or alias filing (none for a duplicate or dropped mail):
    people and record first, then the email that brought them; message.held for mail
    held for review."""
    hold = filing.hold
    if hold is not None and filing.held_id is not None:
        return [NewEvent(MESSAGE_HELD, {
            "review_id": filing.held_id, "route": plan.route_key.partition(":")[0], "recipient": hold.route_ref,
            "envelope_sender": hold.envelope_sender, "sender": plan.sender, "subject": parsed.subject,
            "message_id": parsed.message_id, "reason": hold.reason, "evidence": hold.evidence[:1000]})]
    if filing.result != "filed" or filing.email is None or filing.at is None:
        return []
    org = rules.orgs[plan.org_id]
    out: list[NewEvent] = []
    decision = filing.decision
    record_id = None
    at = filing.at
    if isinstance(decision, DropboxDecision):
        for p in decision.people:
            if p.action == "created" and p.id is not None:
                out.append(person_created(org, p.kind, {
                    "id": p.id, "email": p.address, "first_name": "", "last_name": p.address, "external_id": None,
                    "owner_id": filing.email["filed_by_user_id"], "source": "dropbox", "created_at": at,
                    "updated_at": at}))
    elif isinstance(decision, AliasDecision) and decision.record is not None:
        record_id = decision.record.id
        pipeline = decision.pipeline
        action = getattr(plan, "action", None)
        if decision.new_record and record_id is not None:
            contact = decision.contact
            if contact is not None and contact.action == "created" and contact.id is not None:
                address = action.contact.address
                out.append(person_created(org, "contact", {
                    "id": contact.id, "email": address, "first_name": action.first_name,
                    "last_name": action.last_name or address, "external_id": None,
                    "owner_id": action.owner_id, "source": "alias", "created_at": at, "updated_at": at}))
            out.append(NewEvent(RECORD_CREATED, {"record": {
                "id": record_id, "org": org.id, "pipeline": pipeline, "stage": action.stage, "title": action.title,
                "token": record_token(org, pipeline, record_id), "owner": _owner(org, action.owner_id),
                "tags": list(action.tags), "contact_id": contact.id if contact else None,
                "created_at": ts(at), "updated_at": ts(at)}, "email_id": filing.email_id}, record_id))
        elif decision.stage_change is not None and record_id is not None:
            change = decision.stage_change
            out.append(stage_changed(org, record_id, pipeline, change.from_stage, change.to_stage, change.cause,
                                     filing.email_id))
    out.append(email_filed(org, dict(filing.email), filing.links, parsed, decision, record_id, filing.decision_doc))
    return out
