"""Deliveries: one row per message accepted for one route -- the idempotency key,
claimed first so that the same mail again files nothing, and the decision stored
with it (gateway/filing/outcome.py serialises it)."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

from sqlalchemy import Connection, Row, bindparam, select, update

from gateway.message import ParsedMessage
from gateway.store import models as m
from gateway.store.prepared import PerDialect, Prepared
from gateway.store.sql import insert_for, now

_DELIVERIES = m.Delivery.__table__


def message_key(parsed: ParsedMessage) -> str:
    """The idempotency key of a delivery: the Message-ID together with the digest of
    the content that survives re-delivery (originator fields and body, see
    gateway.parse.DIGEST_FIELDS), so the same mail again is a repeat while another
    mail that reuses the Message-ID (printers, scripts, broken mailers) is not.
    Bounded for the index.  Migration 0006 rewrote the keys stored before this form."""
    content = "sha256:" + parsed.digest
    if not parsed.message_id:
        return content
    if len(parsed.message_id) <= 400:
        return f"mid:{parsed.message_id} {content}"
    return f"mid-sha256:{hashlib.sha256(parsed.message_id.encode('utf-8', 'replace')).hexdigest()} {content}"


class _Statements:
    def __init__(self, conn: Connection):
        d = _DELIVERIES
        claim = (
            insert_for(conn, d).values(org_id=bindparam("org_id"), route=bindparam("route"),
                                       message_key=bindparam("message_key"),
                                       decision=bindparam("decision", type_=d.c.decision.type),
                                       created_at=bindparam("created_at"))
            .on_conflict_do_nothing(index_elements=["org_id", "route", "message_key"]).returning(d.c.id)
        )
        finish = (update(d).where(d.c.id == bindparam("b_id"))
                  .values(email_id=bindparam("b_email_id"), decision=bindparam("b_decision", type_=d.c.decision.type)))
        # Compiled once, run on the driver's cursor (gateway/store/prepared.py).
        self.claim = Prepared(claim, conn.dialect)
        self.finish = Prepared(finish, conn.dialect)


_stmts = PerDialect(_Statements)


def claim(conn: Connection, org_id: str, route: str, parsed: ParsedMessage, decision: dict[str, Any]) -> int | None:
    """Insert the idempotency key; None when this delivery was already filed.

    It goes in first: a concurrent duplicate waits on it (or, on SQLite, on the
    write lock) and then files nothing.
    """
    return _stmts(conn).claim.scalar(conn, {
        "org_id": org_id, "route": route, "message_key": message_key(parsed), "decision": decision,
        "created_at": now()})


def finish(conn: Connection, delivery_id: int, email_id: int | None, decision: dict[str, Any]) -> None:
    _stmts(conn).finish.run(conn, {"b_id": delivery_id, "b_email_id": email_id, "b_decision": decision})


def record_relayed(conn: Connection, org_id: str, parsed: ParsedMessage, email_id: int,
                   decision: dict[str, Any]) -> None:
    """Outbound: the relayed message, so that a resubmission is recognised."""
    conn.execute(insert_for(conn, _DELIVERIES).values(
        org_id=org_id, route="relay", message_key=message_key(parsed), email_id=email_id,
        decision=decision, created_at=now()).on_conflict_do_nothing())


def already_relayed(conn: Connection, org_id: str, parsed: ParsedMessage) -> bool:
    """A resubmission of a message we relayed (the submitter missed our 250)."""
    if not parsed.message_id:
        return False
    return conn.execute(select(_DELIVERIES.c.id).where(
        _DELIVERIES.c.org_id == org_id, _DELIVERIES.c.route == "relay",
        _DELIVERIES.c.message_key == message_key(parsed))).first() is not None


def decisions(conn: Connection, email_ids: list[int]) -> Sequence[Row[Any]]:
    """The delivery rows (their stored decisions) that filed these emails, in order."""
    return conn.execute(
        select(_DELIVERIES).where(_DELIVERIES.c.email_id.in_(email_ids)).order_by(_DELIVERIES.c.id)).all()
