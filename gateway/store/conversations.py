"""Conversation lookups: which records a message continues (by Message-ID or by the
record token) and who takes part in a record.  Always within one organisation."""

from __future__ import annotations

from sqlalchemy import Connection, select

from gateway.store import models as m

_EMAILS, _LINKS, _RECORDS, _PARTS = m.Email.__table__, m.Link.__table__, m.Record.__table__, m.Participant.__table__


def records_by_message_id(conn: Connection, org_id: str, message_ids: list[str], *, pipeline_id: int | None = None,
                          participant: str | None = None) -> dict[str, int]:
    """The Message-ID -> record join: for each id, the record a message with that id
    is filed on (optionally only records of one pipeline).  An id may be on several
    records (mailers that reuse ids): the one ``participant`` takes part in wins,
    then the newest."""
    query = (select(_EMAILS.c.message_id, _LINKS.c.target_id)
             .join(_LINKS, (_LINKS.c.email_id == _EMAILS.c.id) & (_LINKS.c.kind == "record"))
             .where(_EMAILS.c.org_id == org_id, _EMAILS.c.message_id.in_(message_ids)))
    if pipeline_id is not None:
        query = query.join(_RECORDS, _RECORDS.c.id == _LINKS.c.target_id).where(_RECORDS.c.pipeline_id == pipeline_id)
    if participant is not None:
        query = query.add_columns(_PARTS.c.id.is_not(None)).outerjoin(
            _PARTS, (_PARTS.c.record_id == _LINKS.c.target_id) & (_PARTS.c.address == participant))
    best: dict[str, tuple[bool, int]] = {}
    for row in conn.execute(query):
        mid, record_id = row[0], row[1]
        takes_part = bool(row[2]) if participant is not None else False
        best[mid] = max((takes_part, record_id), best.get(mid, (False, 0)))
    return {mid: record_id for mid, (_, record_id) in best.items()}


def dropbox_mail(conn: Connection, org_id: str, message_ids: list[str]) -> dict[str, tuple[int, list[str]]]:
    """Mail users filed through their dropbox with these Message-IDs: for each id, the
    newest such email's id and the ids it answered (In-Reply-To, then References
    newest first)."""
    query = (select(_EMAILS.c.id, _EMAILS.c.message_id, _EMAILS.c.in_reply_to, _EMAILS.c.references)
             .where(_EMAILS.c.org_id == org_id, _EMAILS.c.message_id.in_(message_ids),
                    _EMAILS.c.source == "dropbox")
             .order_by(_EMAILS.c.id))
    return {row.message_id: (row.id, list(row.in_reply_to or []) + list(reversed(row.references or [])))
            for row in conn.execute(query)}


def record_in_pipeline(conn: Connection, org_id: str, pipeline_id: int, record_id: int) -> bool:
    return conn.execute(
        select(_RECORDS.c.id).where(_RECORDS.c.id == record_id, _RECORDS.c.org_id == org_id,
                                    _RECORDS.c.pipeline_id == pipeline_id)
    ).scalar_one_or_none() is not None


def takes_part(conn: Connection, record_id: int, address: str) -> bool:
    return conn.execute(
        select(_PARTS.c.id).where(_PARTS.c.record_id == record_id, _PARTS.c.address == address)
    ).scalar_one_or_none() is not None
