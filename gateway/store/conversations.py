"""Conversation lookups: which records a message continues (by Message-ID or by the
record token) and who takes part in a record.  Always within one organisation."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, literal_column, select

from gateway.store import models as m
from gateway.store.prepared import PerDialect, Prepared, Shapes

_EMAILS, _LINKS, _RECORDS, _PARTS = m.Email.__table__, m.Link.__table__, m.Record.__table__, m.Participant.__table__
MAX_IDS = 100  # message ids looked up at once (gateway/filing/threads.py bounds them so)


def _by_message_id(shape: tuple[int, bool, bool]) -> Any:
    """The Message-ID -> record join for ``n`` ids (one compiled statement per shape)."""
    n, pipeline, participant = shape
    joined = _EMAILS.join(_LINKS, (_LINKS.c.email_id == _EMAILS.c.id) & (_LINKS.c.kind == literal_column("'record'")))
    columns: list[Any] = [_EMAILS.c.message_id, _LINKS.c.target_id]
    where = [_EMAILS.c.org_id == bindparam("b_org"), _EMAILS.c.message_id.in_([bindparam(f"b_mid{i}") for i in range(n)])]
    if pipeline:
        joined = joined.join(_RECORDS, _RECORDS.c.id == _LINKS.c.target_id)
        where.append(_RECORDS.c.pipeline_id == bindparam("b_pipeline"))
    if participant:
        joined = joined.outerjoin(
            _PARTS, (_PARTS.c.record_id == _LINKS.c.target_id) & (_PARTS.c.address == bindparam("b_participant")))
        columns.append(_PARTS.c.id.is_not(None))
    return select(*columns).select_from(joined).where(*where)


class _Statements:
    """Compiled once per dialect, run on the driver's cursor (gateway/store/prepared.py)."""

    def __init__(self, conn: Connection):
        self.by_message_id = Shapes(conn.dialect, _by_message_id)
        self.takes_part = Prepared(select(_PARTS.c.id).where(
            _PARTS.c.record_id == bindparam("b_record"), _PARTS.c.address == bindparam("b_address")),
            conn.dialect)


_stmts = PerDialect(_Statements)


def records_by_message_id(conn: Connection, org_id: str, message_ids: list[str], *, pipeline_id: int | None = None,
                          participant: str | None = None) -> dict[str, int]:
    """The Message-ID -> record join: for each id, the record a message with that id
    is filed on (optionally only records of one pipeline).  An id may be on several
    records (mailers that reuse ids): the one ``participant`` takes part in wins,
    then the newest.  At most MAX_IDS ids."""
    ids = list(dict.fromkeys(message_ids))[:MAX_IDS]
    if not ids:
        return {}
    params: dict[str, Any] = {f"b_mid{i}": mid for i, mid in enumerate(ids)}
    params.update(b_org=org_id, b_pipeline=pipeline_id, b_participant=participant)
    statement = _stmts(conn).by_message_id((len(ids), pipeline_id is not None, participant is not None))
    best: dict[str, tuple[bool, int]] = {}
    for row in statement.rows(conn, params):
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
    return _stmts(conn).takes_part.scalar(conn, {"b_record": record_id, "b_address": address}) is not None
