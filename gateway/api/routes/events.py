"""/events: the pull feed (issue 14) -- the organisation's events in commit order, for
CRMs that cannot take webhooks (behind a firewall); the same events, ids and data
that webhooks send.  Read-only: it never marks anything as read; the CRM keeps the
last id it handled and passes it as ``after=``."""

from __future__ import annotations

from typing import Any, Union

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import Connection

from gateway import events
from gateway.api.auth import context, principal
from gateway.api.context import ApiContext
from gateway.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from gateway.api.problems import Problem
from gateway.store import events as store_events
from gateway.store.tokens import Principal

router = APIRouter(tags=["events"])

EventData = Union[tuple(dict.fromkeys(events.DATA_MODELS.values()))]  # type: ignore[misc]


class Event(BaseModel):
    id: str = Field(description="unique; the webhook-id of its webhook deliveries; pass as after=")
    type: events.EventType
    timestamp: str = Field(description="when the change was committed (UTC ISO 8601)")
    data: EventData = Field(description="its shape depends on type (the *Data schemas)")  # type: ignore[valid-type]


class EventPage(BaseModel):
    items: list[Event]
    next_after: str | None = Field(description="pass as after= for the events after these (the last item's id, "
                                               "or the after= given when there are none yet)")


def _feed(conn: Connection, org_id: str, after: int, limit: int, types: list[str] | None) -> dict[str, Any]:
    rows = store_events.feed(conn, org_id, after, limit, types)
    items = [events.envelope(org_id, r.seq, r.type, r.created_at, r.data) for r in rows]
    last = rows[-1].seq if rows else after
    return {"items": items, "next_after": events.public_id(org_id, last) if last else None}


@router.get("/events", response_model=EventPage,
            summary="The organisation's events in commit order, after an event id (the pull feed)")
async def list_events(
    after: str | None = Query(None, max_length=100, description="an event id: only the events after it"),
    types: str | None = Query(None, max_length=1000, description="comma-separated event types (default: all)"),
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="events per page (1..500)"),
    who: Principal = Depends(principal), ctx: ApiContext = Depends(context),
) -> Response:
    start = 0
    if after:
        seq = events.seq_of(who.org_id, after)
        if seq is None:
            raise Problem(422, f"after: {after[:100]!r} is not an event id of {who.org_id} (evt_{who.org_id}_N, "
                               "as items[].id and next_after give them)")
        start = seq
    wanted = None
    if types:
        wanted = [t.strip() for t in types.split(",") if t.strip()]
        unknown = [t for t in wanted if t not in events.TYPES]
        if unknown:
            raise Problem(422, f"types: unknown {', '.join(repr(t[:50]) for t in unknown[:5])} "
                               f"(types: {', '.join(events.TYPES)})", allowed=list(events.TYPES))
    return await ctx.listing(_feed, who.org_id, start, limit, wanted)
