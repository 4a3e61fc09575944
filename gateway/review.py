"""The review queue (issue 16): mail held instead of filed, and the reviewer's decision.

A policy (gateway/filing/policies.py) holds a message: the delivery's idempotency key
is claimed, the message is kept whole with its route (store/review.py), the MTA gets
250 and the CRM ``message.held``.  A reviewer then

- approves it: it is filed exactly as a delivery would file it at that moment --
  the same filing code, today's rules and database -- on the held delivery's own key
  (so approving twice, or a re-delivery of the same mail, never files it twice); the
  policies are not asked again (the approval is the decision);
- or rejects it: nothing is filed, the message is kept for [review] retention_days
  (then pruned with the decided ones), and the same mail delivered again stays a
  repeat.

`gateway review` and /v1/review call these functions.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine

from gateway import metrics
from gateway.errors import UserError
from gateway.filing import file
from gateway.parse import parse_message
from gateway.routing import route_again
from gateway.rules.index import RuleIndex
from gateway.store import review as store_review
from gateway.store.db import Database
from gateway.views import ts

STATUSES = (store_review.PENDING, store_review.APPROVED, store_review.REJECTED)


class ReviewError(UserError):
    """A decision that cannot be taken: ``status`` 404 (no such message) or 409 (it was
    decided otherwise, or its route is gone)."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


def _view(row: Any) -> dict[str, Any]:
    return {"id": row.id, "org": row.org_id, "route": row.route.partition(":")[0], "recipient": row.route_ref,
            "envelope_sender": row.envelope_sender, "sender": row.sender, "subject": row.subject,
            "message_id": row.message_id, "reason": row.reason, "evidence": row.evidence, "status": row.status,
            "held_at": ts(row.created_at), "decided_at": ts(row.decided_at), "decided_by": row.decided_by,
            "note": row.decision_note, "email_id": row.email_id}


def listing_on(conn: Connection, org_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    return [_view(r) for r in store_review.listing(conn, org_id, status)]


def listing(engine: Engine, org_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return listing_on(conn, org_id, status)


def show_on(conn: Connection, held_id: int, org_id: str | None = None) -> dict[str, Any] | None:
    """One held message with what the parser reads of it (None: no such message)."""
    row = store_review.get(conn, held_id, org_id)
    if row is None:
        return None
    parsed = parse_message(row.content)
    return {**_view(row), "size": len(row.content), "date": ts(parsed.date),
            "to": [a.address for a in parsed.to], "cc": [a.address for a in parsed.cc],
            "text": parsed.new_text or parsed.text_body[:2000]}


def show(engine: Engine, held_id: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        return show_on(conn, held_id)


def approve(database: Database, rules: RuleIndex, held_id: int, by: str, org_id: str | None = None) -> dict[str, Any]:
    """File a held message now, through the delivery's filing code; idempotent (a
    message approved before answers what it filed then)."""
    with database.write() as conn:
        done = approve_on(conn, rules, held_id, by, org_id)
    decided(done)
    return done


def approve_on(conn: Connection, rules: RuleIndex, held_id: int, by: str, org_id: str | None = None) -> dict[str, Any]:
    """approve() in the caller's transaction (the API's)."""
    row = store_review.get(conn, held_id, org_id, lock=True)
    if row is None:
        raise ReviewError(f"no held message {held_id}", 404)
    if row.status == store_review.APPROVED:
        return {"id": held_id, "status": row.status, "email_id": row.email_id, "result": "approved before"}
    if row.status != store_review.PENDING:
        raise ReviewError(f"held message {held_id} was {row.status} by {row.decided_by} at {ts(row.decided_at)}")
    route = route_again(rules, row.org_id, row.route, row.route_ref)
    if route is None:
        raise ReviewError(f"{row.route_ref} is no longer a route of {row.org_id}: reject held message {held_id}")
    result = file(conn, rules, route, parse_message(row.content), row.envelope_sender, approved=row.delivery_id)
    if not store_review.decide(conn, held_id, store_review.APPROVED, by, email_id=result.email_id):
        raise ReviewError(f"held message {held_id} was decided meanwhile")  # rolls the filing back
    return {"id": held_id, "status": store_review.APPROVED, "email_id": result.email_id, "result": result.result}


def reject(database: Database, held_id: int, by: str, reason: str | None = None,
           org_id: str | None = None) -> dict[str, Any]:
    """Keep a held message unfiled (until the retention prunes it); idempotent."""
    with database.write() as conn:
        done = reject_on(conn, held_id, by, reason, org_id)
    decided(done)
    return done


def reject_on(conn: Connection, held_id: int, by: str, reason: str | None = None,
              org_id: str | None = None) -> dict[str, Any]:
    """reject() in the caller's transaction (the API's)."""
    row = store_review.get(conn, held_id, org_id, lock=True)
    if row is None:
        raise ReviewError(f"no held message {held_id}", 404)
    if row.status == store_review.REJECTED:
        return {"id": held_id, "status": row.status, "email_id": None, "result": "rejected before"}
    if row.status != store_review.PENDING:
        raise ReviewError(f"held message {held_id} was {row.status} by {row.decided_by} at {ts(row.decided_at)}")
    if not store_review.decide(conn, held_id, store_review.REJECTED, by, note=reason):
        raise ReviewError(f"held message {held_id} was decided meanwhile")
    return {"id": held_id, "status": store_review.REJECTED, "email_id": None, "result": "rejected"}


def decided(done: dict[str, Any]) -> None:
    """Count a decision once it is committed (not a repeat of an earlier one)."""
    if not done["result"].endswith(" before"):
        metrics.review_decisions.labels(decision=done["status"]).inc()


def page_on(conn: Connection, org_id: str, status: str | None, after: int, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` held messages of ``org_id`` after the id ``after`` (in ``status``
    when given), by id."""
    return [_view(r) for r in store_review.listing(conn, org_id, status, after=after, limit=limit)]


def render_listing(rows: list[dict[str, Any]]) -> str:
    """`gateway review list` as text, two lines per message."""
    if not rows:
        return "nothing held for review"
    out = []
    for r in rows:
        state = r["status"] if r["status"] == "pending" else f"{r['status']} by {r['decided_by']} {r['decided_at']}"
        out.append(f"{r['id']:>5}  {r['held_at']}  {r['org']}  {r['route']} {r['recipient']}  from {r['sender']}  "
                   f"\"{r['subject'][:60]}\"  {state}\n       held for {r['reason']}: {r['evidence'][:200]}")
    return "\n".join(out)


def render_show(shown: dict[str, Any]) -> str:
    lines = [f"Held message {shown['id']}  [{shown['org']}]  {shown['status']}",
             f"  for: {shown['route']} {shown['recipient']}   envelope sender: {shown['envelope_sender'] or '<>'}",
             f"  from: {shown['sender']}   to: {', '.join(shown['to']) or '-'}   cc: {', '.join(shown['cc']) or '-'}",
             f"  subject: {shown['subject']}   date: {shown['date']}   message-id: {shown['message_id']}",
             f"  held at {shown['held_at']} for {shown['reason']}: {shown['evidence']}"]
    if shown["status"] != "pending":
        lines.append(f"  {shown['status']} by {shown['decided_by']} at {shown['decided_at']}"
                     + (f": {shown['note']}" if shown["note"] else "")
                     + (f" (filed as email {shown['email_id']})" if shown["email_id"] else ""))
    lines.append("  text:")
    lines.extend(f"    | {line}" for line in shown["text"].splitlines()[:20])
    return "\n".join(lines)


def render_decision(done: dict[str, Any]) -> str:
    if done["status"] == store_review.APPROVED:
        what = f"filed as email {done['email_id']}" if done["email_id"] else f"approved ({done['result']})"
        return f"held message {done['id']}: {what}"
    return f"held message {done['id']}: rejected"
