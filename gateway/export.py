"""`gateway export`: everything stored, as one JSON document (shape in the README).
The rows come from the store modules of each aggregate; here they become the document."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from gateway.outcome import Kind
from gateway.records import export_records, ts as _ts
from gateway.store import emails as store_emails
from gateway.store import people as store_people
from gateway.store import users as store_users


def export(engine: Engine, org_id: str | None = None) -> dict[str, Any]:
    with engine.connect() as conn:
        owners = store_users.emails(conn)

        def people(kind: Kind) -> list[dict[str, Any]]:
            return [
                {
                    "id": r.id, "org": r.org_id, "email": r.email, "first_name": r.first_name,
                    "last_name": r.last_name, "owner": owners.get(r.owner_id), "source": r.source,
                    "created_at": _ts(r.created_at),
                }
                for r in store_people.listing(conn, kind, org_id)
            ]

        email_links: dict[int, list[dict[str, Any]]] = {}
        for r in store_emails.links(conn, org_id):
            email_links.setdefault(r.email_id, []).append({"kind": r.kind, "id": r.target_id})
        email_atts: dict[int, list[dict[str, Any]]] = {}
        for r in store_emails.attachments(conn, org_id):
            email_atts.setdefault(r.email_id, []).append(
                {"filename": r.filename, "content_type": r.content_type, "size": r.size})
        out_emails = [
            {
                "id": r.id, "org": r.org_id, "message_id": r.message_id, "subject": r.subject,
                "from": r.from_address, "from_name": r.from_name, "to": r.to_addresses, "cc": r.cc_addresses,
                "date": _ts(r.date), "received_at": _ts(r.received_at), "direction": r.direction,
                "source": r.source, "kind": r.kind, "filed_by": owners.get(r.filed_by_user_id),
                "visibility": r.visibility, "size": r.size, "new_text": r.new_text,
                "forwarded_by": r.forwarded_by, "forward_note": r.forward_note, "invitation": r.invitation,
                "links": email_links.get(r.id, []), "attachments": email_atts.get(r.id, []),
            }
            for r in store_emails.listing(conn, org_id)
        ]
        out_records = export_records(conn, org_id, owners)
        return {"leads": people("lead"), "contacts": people("contact"), "records": out_records, "emails": out_emails}
