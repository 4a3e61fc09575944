"""`gateway export`: everything stored, as one JSON document (shape in the README)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from gateway.records import export_records, ts as _ts
from gateway.store import models as m


def export(engine: Engine, org_id: str | None = None) -> dict[str, Any]:
    users, leads, contacts = m.User.__table__, m.Lead.__table__, m.Contact.__table__
    emails, links, atts = m.Email.__table__, m.Link.__table__, m.Attachment.__table__

    def where(table, query):  # type: ignore[no-untyped-def]
        return query.where(table.c.org_id == org_id) if org_id else query

    with engine.connect() as conn:
        owners = {r.id: r.email for r in conn.execute(select(users.c.id, users.c.email))}

        def people(table) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
            rows = conn.execute(where(table, select(table)).order_by(table.c.id))
            return [
                {
                    "id": r.id, "org": r.org_id, "email": r.email, "first_name": r.first_name,
                    "last_name": r.last_name, "owner": owners.get(r.owner_id), "source": r.source,
                    "created_at": _ts(r.created_at),
                }
                for r in rows
            ]

        email_links: dict[int, list[dict[str, Any]]] = {}
        for r in conn.execute(where(links, select(links)).order_by(links.c.id)):
            email_links.setdefault(r.email_id, []).append({"kind": r.kind, "id": r.target_id})
        email_atts: dict[int, list[dict[str, Any]]] = {}
        for r in conn.execute(where(atts, select(atts)).order_by(atts.c.id)):
            email_atts.setdefault(r.email_id, []).append(
                {"filename": r.filename, "content_type": r.content_type, "size": r.size})
        email_rows = conn.execute(
            where(emails, select(*[c for c in emails.c if c.name not in ("html_body",)])).order_by(emails.c.id))
        out_emails = [
            {
                "id": r.id, "org": r.org_id, "message_id": r.message_id, "subject": r.subject,
                "from": r.from_address, "from_name": r.from_name, "to": r.to_addresses, "cc": r.cc_addresses,
                "date": _ts(r.date), "received_at": _ts(r.received_at), "direction": r.direction,
                "source": r.source, "kind": r.kind, "filed_by": owners.get(r.filed_by_user_id), "size": r.size,
                "links": email_links.get(r.id, []), "attachments": email_atts.get(r.id, []),
            }
            for r in email_rows
        ]
        out_records = export_records(conn, org_id, owners)
        return {"leads": people(leads), "contacts": people(contacts), "records": out_records, "emails": out_emails}
