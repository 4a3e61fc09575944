"""Emails: the stored message (fields, bodies, the raw bytes, attachments) and its
links to the leads, contacts and records it is filed under; and the reads `gateway
record show` and `gateway export` list them with."""

from __future__ import annotations

from datetime import datetime, timedelta
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from sqlalchemy import Connection, Row, Select, and_, bindparam, exists, func, or_, select

from gateway.message import ParsedMessage
from gateway.store import models as m
from gateway.store.prepared import PerDialect, Prepared
from gateway.store.sql import insert_for, tenant_rows

# Date headers this far ahead of arrival still count (clock skew).
FUTURE_SKEW = timedelta(minutes=15)

EMAIL_KEYS = ("org_id", "message_id", "subject", "from_name", "from_address", "to_addresses", "cc_addresses",
              "date", "received_at", "sort_at", "kind", "direction", "source", "filed_by_user_id", "text_body",
              "html_body", "size", "digest", "in_reply_to", "references", "visibility", "new_text", "forwarded_by",
              "forward_note", "invitation")


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
        self.attachments = Prepared(m.Attachment.__table__.insert(), conn.dialect,
                                    ("org_id", "email_id", "filename", "content_type", "size"))


_stmts = PerDialect(_Statements)


def values(org_id: str, p: ParsedMessage, *, source: str, direction: str, filed_by: int | None, kind: str,
           visibility: str, arrived: datetime, forwarded_by: str | None = None,
           forward_note: str | None = None) -> dict[str, Any]:
    """The emails row of a message (without its id; insert() stores it).  ``visibility``:
    the filing user's sharing setting (SPEC 2.12); mail no user filed is public within
    the organisation.  ``forwarded_by``/``forward_note``: a forward filed as its
    original (``p`` then has the original's fields)."""
    return {
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
        "new_text": p.split.new_text,
        "forwarded_by": forwarded_by,
        "forward_note": forward_note,
        "invitation": p.invitation.as_json() if p.invitation is not None else None,
    }


def insert(conn: Connection, row: dict[str, Any], p: ParsedMessage) -> int:
    """Insert the emails ``row`` of ``p`` with its raw bytes and attachment list; its id."""
    st = _stmts(conn)
    email_id = st.email.scalar(conn, row)
    assert email_id is not None
    st.raw.run(conn, {"email_id": email_id, "org_id": row["org_id"], "content": p.raw})
    if p.attachments:
        st.attachments.run_many(conn, [
            {"org_id": row["org_id"], "email_id": email_id, "filename": a.filename,
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


# The API's reads (gateway/api/routes/emails.py).  Who may see what is decided by
# gateway/sharing.py; ``visible_to``/``sharers`` below are its SQL side, a superset.

_BODIES = ("text_body", "html_body", "new_text")


@dataclass(frozen=True, slots=True)
class EmailFilter:
    """What a list of emails is narrowed to (every given condition holds)."""

    since_id: int = 0
    contact_id: int | None = None
    lead_id: int | None = None
    record_id: int | None = None
    source: str | None = None  # as stored: dropbox | alias | relay


def _api_select(bodies: bool) -> Select[Any]:
    e, users = m.Email.__table__, m.User.__table__
    columns = [c for c in e.c if bodies or c.name not in _BODIES]
    return select(*columns, users.c.email.label("filed_by")).outerjoin(users, users.c.id == e.c.filed_by_user_id)


def api_page(conn: Connection, org_id: str, after: int, count: int, where: EmailFilter, *,
             visible_to: int | None = None, sharers: Iterable[int] = (), bodies: bool = False) -> Sequence[Row[Any]]:
    """Up to ``count`` emails of ``org_id`` with an id above ``after`` (and above
    ``where.since_id``), by id, each with its filer's address as ``filed_by``.  With
    ``visible_to`` (a user id): only that user's mail, public mail and custom mail of
    ``sharers`` -- the candidates gateway.sharing then decides on."""
    e, links = m.Email.__table__, m.Link.__table__
    query = _api_select(bodies).where(e.c.org_id == org_id, e.c.id > max(after, where.since_id))
    for kind, target in (("contact", where.contact_id), ("lead", where.lead_id), ("record", where.record_id)):
        if target is not None:
            query = query.where(exists().where(links.c.email_id == e.c.id, links.c.org_id == org_id,
                                               links.c.kind == kind, links.c.target_id == target))
    if where.source is not None:
        query = query.where(e.c.source == where.source)
    if visible_to is not None:
        seen = [e.c.filed_by_user_id == visible_to, e.c.visibility == "public"]
        sharer_ids = sorted(set(sharers))
        if sharer_ids:
            seen.append(and_(e.c.visibility == "custom", e.c.filed_by_user_id.in_(sharer_ids)))
        query = query.where(or_(*seen))
    return conn.execute(query.order_by(e.c.id).limit(count)).all()


def api_one(conn: Connection, org_id: str, email_id: int, *, bodies: bool = True) -> Row[Any] | None:
    """One email of ``org_id`` (with ``filed_by``, the filer's address), or None."""
    e = m.Email.__table__
    return conn.execute(_api_select(bodies).where(e.c.org_id == org_id, e.c.id == email_id)).one_or_none()


def api_links(conn: Connection, org_id: str, email_ids: Sequence[int]) -> Sequence[Row[Any]]:
    """The links of these emails (email_id, kind, target_id) by id, each with
    ``address``: the linked lead's or contact's address (None for a record)."""
    links, leads, contacts = m.Link.__table__, m.Lead.__table__, m.Contact.__table__
    query = (
        select(links.c.email_id, links.c.kind, links.c.target_id,
               func.coalesce(leads.c.email, contacts.c.email).label("address"))
        .outerjoin(leads, and_(links.c.kind == "lead", leads.c.id == links.c.target_id, leads.c.org_id == org_id))
        .outerjoin(contacts, and_(links.c.kind == "contact", contacts.c.id == links.c.target_id,
                                  contacts.c.org_id == org_id))
        .where(links.c.org_id == org_id, links.c.email_id.in_(list(email_ids)))
        .order_by(links.c.id)
    )
    return conn.execute(query).all() if email_ids else []


def api_attachments(conn: Connection, org_id: str, email_ids: Sequence[int]) -> Sequence[Row[Any]]:
    """The attachment rows of these emails, by id (an email's n-th row is its
    attachment n, as gateway.parse.attachment counts)."""
    table = m.Attachment.__table__
    query = select(table).where(table.c.org_id == org_id, table.c.email_id.in_(list(email_ids))).order_by(table.c.id)
    return conn.execute(query).all() if email_ids else []
