"""Outbound mail from the CRM: who may send what, how it is rewritten, where it is filed.

Before relay: the control headers (X-Gateway-Class, X-Gateway-Record) are removed,
a missing Message-ID or Date is added, the record token goes into the subject of
mail that belongs to a record, and the message is DKIM-signed for its From domain.
After the smarthost accepted it, the message as relayed is stored in the record's
conversation (outbound), or on the leads/contacts it was sent to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.header import Header
from email.utils import format_datetime, make_msgid
from typing import Any

from sqlalchemy import Connection, Engine, select

from gateway.addresses import domain_of, looks_like_address, normalise
from gateway.conversations import format_token, header_evidence
from gateway.errors import PermanentFailure
from gateway.ingest.parse import parse_message
from gateway.message import ParsedMessage
from gateway.replies import REPLIES
from gateway.rules.index import LoginEntry, OrgEntry, RuleIndex
from gateway.store import models as m
from gateway.store import repo
from gateway.store.db import write_transaction

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


def _split(raw: bytes) -> tuple[list[bytes], bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(sep)
        if end >= 0:
            head, body = raw[:end], raw[end + len(sep):]
            break
    else:
        head, body = raw, b""
    fields: list[bytes] = []
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif line:
            fields.append(line)
    return fields, body


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
    fields, body = _split(raw)
    drop = set(CONTROL_HEADERS) | ({"subject"} if subject is not None else set())
    kept = [f for f in fields if _name(f) not in drop]
    added: list[bytes] = []
    message_id = parsed.message_id
    if not message_id:
        message_id = make_msgid(domain=domain_of(parsed.from_.address) if parsed.from_ else hostname)[1:-1]
        added.append(f"Message-ID: <{message_id}>".encode())
    if not any(_name(f) == "date" for f in fields):
        from gateway.store.repo import now

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
    records, pipes = m.Record.__table__, m.Pipeline.__table__
    emails, links = m.Email.__table__, m.Link.__table__

    def ref(record_id: int, method: str, evidence: str) -> RecordRef | None:
        row = conn.execute(
            select(records.c.id, records.c.contact_id, pipes.c.name)
            .join(pipes, pipes.c.id == records.c.pipeline_id)
            .where(records.c.id == record_id, records.c.org_id == org.id)
        ).one_or_none()
        if row is None:
            return None
        pipe = org.pipelines.get(row.name)
        prefix = pipe.token_prefix if pipe else "".join(ch for ch in row.name if ch.isalnum()).upper()
        return RecordRef(row.id, format_token(org.record_token, prefix, row.id), row.contact_id, method, evidence)

    if explicit:
        digits = re.sub(r"\D", "", explicit)
        found = ref(int(digits), "header", f"{RECORD_HEADER}: {explicit.strip()}") if digits else None
        if found is None:
            raise PermanentFailure(REPLIES.no_such_record, f"{RECORD_HEADER}: {explicit.strip()} is not a record of {org.id}")
        return found
    candidates, ids = header_evidence(parsed)
    if not ids:
        return None
    rows = dict(conn.execute(
        select(emails.c.message_id, links.c.target_id)
        .join(links, (links.c.email_id == emails.c.id) & (links.c.kind == "record"))
        .where(emails.c.org_id == org.id, emails.c.message_id.in_(ids))
    ).all())
    for method, mid in candidates:
        if mid in rows:
            return ref(rows[mid], method, mid)
    return None


def subject_with_token(subject: str, token: str) -> str | None:
    """The subject with the record token appended, or None when it is already there."""
    if token.lower() in subject.lower():
        return None
    return f"{subject} {token}".strip()


def store_outbound(engine: Engine, rules: RuleIndex, org_id: str, relayed: bytes,
                   record: RecordRef | None, filed_by: int | None, decision: dict[str, Any]) -> int:
    """File the relayed message: on its record, or on the leads/contacts it went to."""
    parsed = parse_message(relayed)
    org = rules.orgs[org_id]
    with write_transaction(engine) as conn:
        email_id = repo.store_email(conn, org_id, parsed, source="relay", direction="outbound", filed_by=filed_by)
        links: list[dict[str, Any]] = []
        if record is not None:
            repo.link(conn, org_id, email_id, "record", record.id)
            links.append({"kind": "record", "id": record.id})
            if record.contact_id is not None:
                repo.link(conn, org_id, email_id, "contact", record.contact_id)
                links.append({"kind": "contact", "id": record.contact_id})
        else:
            for address in {normalise(a.address) for a in parsed.to + parsed.cc}:
                if org.is_own_address(address):
                    continue
                for kind, table in (("contact", m.Contact.__table__), ("lead", m.Lead.__table__)):
                    found = conn.execute(select(table.c.id).where(table.c.org_id == org_id,
                                                                 table.c.email == address)).scalar_one_or_none()
                    if found is not None:
                        repo.link(conn, org_id, email_id, kind, found)
                        links.append({"kind": kind, "id": found})
        decision["links"] = links
        conn.execute(repo.insert_for(conn, m.Delivery.__table__).values(
            org_id=org_id, route="relay", message_key=repo.message_key(parsed), email_id=email_id,
            decision=decision, created_at=repo.now()).on_conflict_do_nothing())
    return email_id


def already_relayed(engine: Engine, org_id: str, parsed: ParsedMessage) -> bool:
    """A resubmission of a message we relayed (the submitter missed our 250)."""
    if not parsed.message_id:
        return False
    table = m.Delivery.__table__
    with engine.connect() as conn:
        return conn.execute(select(table.c.id).where(
            table.c.org_id == org_id, table.c.route == "relay",
            table.c.message_key == repo.message_key(parsed))).first() is not None

