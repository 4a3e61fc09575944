"""Emails: the stored message (fields, bodies, the raw bytes, attachments) and its
links to the leads, contacts and records it is filed under; and the reads `gateway
record show` and `gateway export` list them with."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Sequence

from sqlalchemy import Connection, Row, bindparam, select

from gateway.message import ParsedMessage
from gateway.store import models as m
from gateway.store.prepared import PerDialect, Prepared
from gateway.store.sql import insert_for, now, tenant_rows

# Date headers this far ahead of arrival still count (clock skew).
FUTURE_SKEW = timedelta(minutes=15)

EMAIL_KEYS = ("org_id", "message_id", "subject", "from_name", "from_address", "to_addresses", "cc_addresses",
              "date", "received_at", "sort_at", "kind", "direction", "source", "filed_by_user_id", "text_body",
              "html_body", "size", "digest", "in_reply_to", "references", "visibility")


def sort_time(parsed: ParsedMessage, arrived: datetime) -> datetime:
    """Date header, or arrival when it is missing, unparseable or in the future.
    Always at the Date header's resolution (whole seconds), so that messages within
    one second are ordered by arrival (the second sort key), never by a mix of a
    truncated Date and a precise arrival time."""
    if parsed.date is None or parsed.date > arrived + FUTURE_SKEW:
        return arrived.replace(microsecond=0)
    return parsed.date.replace(microsecond=0)


class _Statements:
    def __init__(self, conn: Connection):
        e, links = m.Email.__table__, m.Link.__table__
        link = insert_for(conn, links).values(org_id=bindparam("org_id"), email_id=bindparam("email_id"),
                                              kind=bindparam("kind"), target_id=bindparam("target_id"))
        # Compiled once, run on the driver's cursor (gateway/store/prepared.py).
        self.link = Prepared(link.on_conflict_do_nothing(), conn.dialect)
        self.email = Prepared(e.insert().returning(e.c.id), conn.dialect, EMAIL_KEYS)
        self.raw = Prepared(m.EmailRaw.__table__.insert(), conn.dialect, ("email_id", "org_id", "content"))
        self.attachments = m.Attachment.__table__.insert()


_stmts = PerDialect(_Statements)


def store(conn: Connection, org_id: str, p: ParsedMessage, *, source: str, direction: str, filed_by: int | None,
          kind: str = "message", visibility: str = "public") -> int:
    """Store a message (with its raw bytes and attachment list); its id.  ``visibility``:
    the filing user's sharing setting (SPEC 2.12); mail no user filed is public within
    the organisation."""
    st = _stmts(conn)
    arrived = now()
    email_id = st.email.scalar(conn, {
        "org_id": org_id,
        "message_id": p.message_id,
        "subject": p.subject,
        "from_name": p.from_.name if p.from_ else "",
        "from_address": p.from_.address if p.from_ else "",
        "to_addresses": [a.address for a in p.to],
        "cc_addresses": [a.address for a in p.cc],
        "date": p.date,
        "received_at": arrived,
        "sort_at": sort_time(p, arrived),
        "kind": kind,
        "direction": direction,
        "source": source,
        "filed_by_user_id": filed_by,
        "text_body": p.text_body,
        "html_body": p.html_body,
        "size": len(p.raw),
        "digest": p.digest,
        "in_reply_to": list(p.in_reply_to),
        "references": list(p.references),
        "visibility": visibility,
    })
    assert email_id is not None
    st.raw.run(conn, {"email_id": email_id, "org_id": org_id, "content": p.raw})
    if p.attachments:
        conn.execute(st.attachments, [
            {"org_id": org_id, "email_id": email_id, "filename": a.filename,
             "content_type": a.content_type, "size": a.size}
            for a in p.attachments
        ])
    return email_id


def link(conn: Connection, org_id: str, email_id: int, kind: str, target_id: int) -> None:
    """File an email under a lead, contact or record (once)."""
    _stmts(conn).link.run(conn, {"org_id": org_id, "email_id": email_id, "kind": kind, "target_id": target_id})


def raw(conn: Connection, email_id: int, org_id: str | None = None) -> bytes | None:
    """A stored message exactly as received (only within ``org_id`` when given)."""
    table = m.EmailRaw.__table__
    query = select(table.c.content).where(table.c.email_id == email_id)
    if org_id:
        query = query.where(table.c.org_id == org_id)
    return conn.execute(query).scalar_one_or_none()


def by_ids(conn: Connection, email_ids: list[int]) -> dict[int, Row[Any]]:
    """The rows (every column) of these emails, by id."""
    e = m.Email.__table__
    return {r.id: r for r in conn.execute(select(e).where(e.c.id.in_(email_ids)))}


def listing(conn: Connection, org_id: str | None = None) -> Sequence[Row[Any]]:
    """Every email (of ``org_id`` when given) without its HTML body, by id."""
    e = m.Email.__table__
    return tenant_rows(conn, select(*[c for c in e.c if c.name not in ("html_body",)]), e, org_id)


def links(conn: Connection, org_id: str | None = None) -> Sequence[Row[Any]]:
    """Every link of an email to a lead, contact or record (of ``org_id`` when given), by id."""
    return tenant_rows(conn, select(m.Link.__table__), m.Link.__table__, org_id)


def attachments(conn: Connection, org_id: str | None = None) -> Sequence[Row[Any]]:
    """Every attachment's row (of ``org_id`` when given), by id."""
    return tenant_rows(conn, select(m.Attachment.__table__), m.Attachment.__table__, org_id)
