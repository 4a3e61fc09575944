"""Outbound mail from the CRM: who may send what, how it is rewritten, where it is filed.

Before relay: the control headers (X-Gateway-Class, X-Gateway-Record) are removed,
a missing Message-ID or Date is added, the record token goes into the subject of
mail that belongs to a record, and the message is DKIM-signed for its From domain.
After the smarthost accepted it, the message as relayed is stored in the record's
conversation (outbound; its external recipients take part in the record from then
on), or on the leads/contacts it was sent to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from email.header import Header
from email.utils import format_datetime, make_msgid

from sqlalchemy import Connection

from gateway import events
from gateway.addresses import domain_of, looks_like_address, normalise
from gateway.filing.people import participants
from gateway.filing.threads import first_evidence, header_evidence
from gateway.errors import PermanentFailure
from gateway.parse import parse_message
from gateway.parse.headers import split_fields
from gateway.message import ParsedMessage
from gateway.outcome import Link, RelayDecision, decision_json
from gateway.replies import REPLIES
from gateway.rules.index import LoginEntry, OrgEntry, RuleIndex, record_token
from gateway.store import conversations, deliveries, emails, people, records
from gateway.store import events as store_events
from gateway.store.sql import now

RECORD_HEADER = "X-Gateway-Record"
CONTROL_HEADERS = ("x-gateway-class", "x-gateway-record")


def check_sender(org: OrgEntry, login: LoginEntry, address: str) -> None:
    """SPEC 3.8: From must be an active user's address or an organisation address,
    in a verified domain (one with a DKIM key).  A user may send as themselves or
    as the organisation, not as another user."""
    address = normalise(address)
    if not looks_like_address(address) or not org.may_send_from(address):
        raise PermanentFailure(REPLIES.from_not_allowed, f"{address} is not a sender of {org.id}")
    if login.kind == "user" and address != login.username and address not in org.addresses:
        raise PermanentFailure(REPLIES.from_not_allowed, f"{login.username} may not send as {address}")
    if domain_of(address) not in org.dkim:
        raise PermanentFailure(REPLIES.domain_not_verified, f"{domain_of(address)} has no DKIM key")


# --- rewriting at the byte level: the body is relayed exactly as submitted ---------


def _name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().lower().decode("ascii", "replace")


def _encode(name: str, value: str) -> bytes:
    try:
        value.encode("ascii")
        return f"{name}: {value}".encode()
    except UnicodeEncodeError:
        return f"{name}: {Header(value, 'utf-8', header_name=name).encode()}".encode()


def rewrite(raw: bytes, *, parsed: ParsedMessage, subject: str | None, hostname: str) -> tuple[bytes, str]:
    """Remove control headers, add Message-ID/Date when missing, set the subject.
    Returns the new message (CRLF line ends) and its Message-ID (no brackets)."""
    # The header section as the parser reads it (one scanner: gateway/parse/headers.py).
    fields, body = split_fields(raw)
    drop = set(CONTROL_HEADERS) | ({"subject"} if subject is not None else set())
    kept = [f for f in fields if _name(f) not in drop]
    added: list[bytes] = []
    message_id = parsed.message_id
    if not message_id:
        message_id = make_msgid(domain=domain_of(parsed.from_.address) if parsed.from_ else hostname)[1:-1]
        added.append(f"Message-ID: <{message_id}>".encode())
    if not any(_name(f) == "date" for f in fields):
        from gateway.store.sql import now

        added.append(f"Date: {format_datetime(now())}".encode())
    if subject is not None:
        added.append(_encode("Subject", subject))
    if not body.endswith(b"\n") and body:
        body += b"\r\n"
    body = re.sub(rb"(?<!\r)\n", b"\r\n", body)
    return b"\r\n".join(kept + added) + b"\r\n\r\n" + body, message_id


# --- which record a sent mail belongs to --------------------------------------------


@dataclass(frozen=True)
class RecordRef:
    id: int
    token: str
    contact_id: int | None
    method: str
    evidence: str


def find_record(conn: Connection, org: OrgEntry, parsed: ParsedMessage, explicit: str | None) -> RecordRef | None:
    """The record a sent mail belongs to: the X-Gateway-Record header (which must name
    a record of the organisation), else In-Reply-To / References in order of evidence."""

    def ref(record_id: int, method: str, evidence: str) -> RecordRef | None:
        row = records.get(conn, record_id, org.id)
        if row is None:
            return None
        return RecordRef(row.id, record_token(org, row.pipeline, row.id), row.contact_id, method, evidence)

    if explicit:
        digits = re.sub(r"\D", "", explicit)
        found = ref(int(digits), "header", f"{RECORD_HEADER}: {explicit.strip()}") if digits else None
        if found is None:
            raise PermanentFailure(REPLIES.no_such_record, f"{RECORD_HEADER}: {explicit.strip()} is not a record of {org.id}")
        return found
    candidates, ids = header_evidence(parsed)
    if not ids:
        return None
    match = first_evidence(candidates, conversations.records_by_message_id(conn, org.id, ids))
    return ref(match.record_id, match.method, match.evidence) if match and match.record_id is not None else None


def subject_with_token(subject: str, token: str) -> str | None:
    """The subject with the record token appended, or None when it is already there."""
    if token.lower() in subject.lower():
        return None
    return f"{subject} {token}".strip()


def store_outbound(conn: Connection, rules: RuleIndex, org_id: str, relayed: bytes,
                   record: RecordRef | None, filed_by: int | None, decision: RelayDecision) -> int:
    """File the relayed message: on its record, or on the leads/contacts it went to;
    the decision is stored with the links it made."""
    parsed = parse_message(relayed)
    org = rules.orgs[org_id]
    row = emails.values(org_id, parsed, source="relay", direction="outbound", filed_by=filed_by, kind="message",
                        visibility="public", arrived=now())
    email_id = row["id"] = emails.insert(conn, row, parsed)
    links: list[Link] = []
    if record is not None:
        links.append(Link("record", record.id))
        if record.contact_id is not None:
            links.append(Link("contact", record.contact_id))
        # Its external recipients take part in the record (their replies thread by token).
        records.participate(conn, org_id, record.id, participants(org, parsed, ""))
    else:
        for address in sorted({normalise(a.address) for a in parsed.to + parsed.cc}):
            if org.is_own_address(address):
                continue
            for kind in ("contact", "lead"):
                found = people.find(conn, org_id, kind, address)  # type: ignore[arg-type]
                if found is not None:
                    links.append(Link(kind, found))
    for link in links:
        emails.link(conn, org_id, email_id, link.kind, link.id)
    filed = replace(decision, links=tuple(links))
    deliveries.record_relayed(conn, org_id, parsed, email_id, decision_json(filed))
    store_events.append(conn, org_id, [events.email_filed(org, row, links, parsed, filed,
                                                          record.id if record is not None else None)])
    return email_id


# A resubmission of a message we relayed (the submitter missed our 250).
already_relayed = deliveries.already_relayed
