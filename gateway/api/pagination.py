"""Cursor pagination, the same for every list: items in id order (newest last), at
most ``limit`` (1..500, default 100) per page; ``next_cursor`` is passed back as
``cursor=`` for the next page and is null on the last.  A cursor is opaque to the
CRM (the last id seen, encoded); a cursor that is not one of ours is a 422."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, Sequence, TypeVar

from fastapi import Query
from pydantic import BaseModel

from gateway.api.problems import Problem

T = TypeVar("T")
MAX_LIMIT = 500
MAX_ID = 2**63 - 1  # ids are 64-bit (BIGINT; SQLite's INTEGER)
DEFAULT_LIMIT = 100


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"after:{last_id}".encode()).decode().rstrip("=")


def decode(cursor: str | None) -> int:
    """The id after which the page starts (0: from the beginning)."""
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    kind, _, value = text.partition(":")
    if kind != "after" or not value.isdigit() or len(value) > 19 or int(value) > MAX_ID:
        raise Problem(422, "cursor: not a cursor of this API (pass back next_cursor as it came)")
    return int(value)


@dataclass(frozen=True)
class PageParams:
    after: int  # the id after which the page starts
    limit: int


async def page_params(
        cursor: str | None = Query(None, max_length=100, description="next_cursor of the page before"),
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="items per page (1..500)")) -> PageParams:
    """The ``cursor`` and ``limit`` query parameters (a FastAPI dependency; async, as a
    plain function would be sent to a thread for nothing)."""
    return PageParams(decode(cursor), limit)


UpdatedSince = Query(None, description="only what was created or changed at or after this time "
                                       "(ISO 8601; UTC when no offset)")


def utc(value: datetime | None, name: str = "updated_since") -> datetime | None:
    """A query's time in UTC (naive: taken as UTC); out of range is a 422."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except OverflowError:  # year 1 or 9999 with an offset
        raise Problem(422, f"{name}: out of range") from None


def render(body: dict[str, Any]) -> bytes:
    """A page as JSON, the same bytes FastAPI would send, encoded item by item: run in
    the API's threads, where short steps let the event loop take the GIL between
    items (one call over a 500-item page would hold it, and so SMTP, for tens of ms)."""
    items = b",".join(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode() for item in body["items"])
    rest = json.dumps({k: v for k, v in body.items() if k != "items"}, separators=(",", ":"))[1:]
    return b'{"items":[' + items + b"]" + (b"," + rest.encode() if rest != "}" else b"}")


def page(items: Sequence[Any], limit: int, last_id: Any) -> dict[str, Any]:
    """A page of ``items`` fetched with ``limit + 1`` rows: the extra row only says
    that there is a next page.  ``last_id(item)`` gives an item's id."""
    more = len(items) > limit
    shown = list(items[:limit])
    return {"items": shown, "next_cursor": encode(last_id(shown[-1])) if more and shown else None}
