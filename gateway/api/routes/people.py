"""/contacts and /leads, the same shape: list (email=, updated_since=, cursor
pagination), get, create-or-update, delete, and the NDJSON import.

Create-or-update and the import share gateway/people_import.py with `gateway import`:
found by external_id when given, else by email; 201 for a new person, 200 for one
found (changed or not).  The database keeps one row per address and per external_id
in an organisation, so the same create sent twice -- even at once -- makes one row.
Delete keeps the mail and its links (history); records lose the contact.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import Connection, Row

from gateway import people_import, views
from gateway.api.auth import context, principal, writer
from gateway.api.context import ApiContext
from gateway.api.pagination import Page, PageParams, UpdatedSince, page, page_params, utc
from gateway.api.problems import Problem, documented, not_found
from gateway.outcome import Kind
from gateway.people_import import Importer, PersonIn, RowError
from gateway.store import people as store_people
from gateway.store.people import Upsert, UpsertResult
from gateway.store.tokens import Principal

router = APIRouter()

NDJSON = "application/x-ndjson"
_KINDS: dict[str, Kind] = {"contacts": "contact", "leads": "lead"}
_IMPORT_SOURCE = "import"
_MAX_ID = 2**63 - 1
PersonId = Annotated[int, Path(ge=1, le=_MAX_ID, description="the id")]


class Person(BaseModel):
    id: int
    email: str
    first_name: str
    last_name: str
    external_id: str | None
    owner: str | None  # the owner's e-mail address
    source: str  # dropbox | alias | api | import
    created_at: str
    updated_at: str | None


class LineError(BaseModel):
    line: int
    error: str


class ImportResult(BaseModel):
    created: int
    updated: int
    unchanged: int
    errors: list[LineError]


def _item(row: Row[Any]) -> dict[str, Any]:
    return views.person(row._mapping, row.owner)


def _listing(conn: Connection, kind: Kind, org_id: str, after: int, limit: int, email: str | None,
             updated_since: datetime | None) -> dict[str, Any]:
    rows = store_people.page(conn, kind, org_id, after, limit, email, updated_since)
    return page([_item(r) for r in rows], limit, lambda item: item["id"])


def _save(conn: Connection, org_id: str, kind: Kind, upsert: Upsert) -> tuple[UpsertResult, Row[Any] | None]:
    """Create or update one person and read it back, in one transaction."""
    result = store_people.upsert(conn, org_id, kind, [upsert], "api")[0]
    people_import.tell_created(conn, org_id, kind, [result])
    row = store_people.one(conn, kind, org_id, result.id) if result.id is not None else None
    return result, row


def _add_routes(collection: str, kind: Kind) -> None:
    singular = kind

    @router.get(f"/{collection}", response_model=Page[Person], tags=[collection], name=f"list_{collection}",
                summary=f"The organisation's {collection}, by id, a page at a time")
    async def listing(
        email: str | None = Query(None, max_length=320, description="only the one with this address"),
        updated_since: datetime | None = UpdatedSince,
        paging: PageParams = Depends(page_params),
        who: Principal = Depends(principal),
        ctx: ApiContext = Depends(context),
    ) -> Response:
        address = None
        if email is not None:
            try:
                address = people_import.checked_address(email)
            except ValueError as exc:
                raise Problem(422, f"email: {exc}") from None
        # A cursor carries up to 19 digits; ids are 64-bit (SQLite cannot even bind more).
        return await ctx.listing(_listing, kind, who.org_id, min(paging.after, _MAX_ID), paging.limit, address,
                                 utc(updated_since))

    @router.get(f"/{collection}/{{person_id}}", response_model=Person, tags=[collection], name=f"get_{singular}",
                summary=f"One {singular}")
    async def get_one(person_id: PersonId, who: Principal = Depends(principal),
                      ctx: ApiContext = Depends(context)) -> dict[str, Any]:
        row = await ctx.read(store_people.one, kind, who.org_id, person_id)
        if row is None:
            raise not_found(f"{singular} {person_id}")
        return _item(row)

    @router.post(f"/{collection}", response_model=Person, tags=[collection], name=f"create_or_update_{singular}",
                 summary=f"Create a {singular}, or update the one with this external_id (else this email)",
                 responses={201: {"model": Person, "description": "created"},
                            200: {"description": "found by external_id or email (updated or unchanged)"},
                            409: documented("the address or external_id is another person's")})
    async def create_or_update(body: PersonIn, response: Response, who: Principal = Depends(writer),
                               ctx: ApiContext = Depends(context)) -> dict[str, Any]:
        importer = Importer(ctx.rules.orgs[who.org_id], kind, source="api")
        try:
            upsert = importer.upsert_of(body)
        except RowError as exc:
            raise Problem(422, f"owner: {exc}") from None
        result, row = await ctx.write(_save, who.org_id, kind, upsert)
        if result.action == "conflict" or row is None:
            raise Problem(409, result.detail or f"the {singular} changed meanwhile: send it again")
        response.status_code = 201 if result.action == "created" else 200
        if result.action == "created":
            response.headers["Location"] = f"/v1/{collection}/{row.id}"
        return _item(row)

    @router.delete(f"/{collection}/{{person_id}}", status_code=204, response_class=Response, tags=[collection],
                   name=f"delete_{singular}",
                   summary=f"Delete a {singular} (its mail and links stay, as history)")
    async def remove(person_id: PersonId, who: Principal = Depends(writer),
                     ctx: ApiContext = Depends(context)) -> Response:
        if not await ctx.write(store_people.remove, kind, who.org_id, person_id):
            raise not_found(f"{singular} {person_id}")
        return Response(status_code=204)

    @router.post(f"/{collection}/import", response_model=ImportResult, tags=[collection], name=f"import_{collection}",
                 summary=f"Create or update many {collection}: a JSON object per line ({NDJSON})",
                 responses={415: documented(f"not {NDJSON}")},
                 openapi_extra={"requestBody": {"required": True, "content": {NDJSON: {"schema": {
                     # The lines, each as the body of POST /v1/{collection} (an NDJSON body
                     # is not a JSON array: one object per line, no brackets or commas).
                     "type": "array", "maxItems": people_import.MAX_API_LINES,
                     "items": {"$ref": "#/components/schemas/PersonIn"},
                     "description": f"one {singular} per line, as the body of POST /v1/{collection}; at most "
                                    f"{people_import.MAX_API_LINES:,} lines (more: 413)"}}}}})
    async def bulk(request: Request, who: Principal = Depends(writer),
                   ctx: ApiContext = Depends(context)) -> dict[str, Any]:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != NDJSON:
            raise Problem(415, f"send the lines as {NDJSON} (a JSON object per line)")
        data = await request.body()
        lines = people_import.count_lines(data)
        if lines > people_import.MAX_API_LINES:
            raise Problem(413, f"{lines:,} lines: at most {people_import.MAX_API_LINES:,} per request "
                               "(split the file, or use `gateway import`)")
        importer = Importer(ctx.rules.orgs[who.org_id], kind, source=_IMPORT_SOURCE)
        # Parsed and validated off the event loop (10,000 lines: ~0.1 s of CPU).
        batches = await asyncio.to_thread(lambda: list(importer.batches(people_import.ndjson(data.split(b"\n")))))
        # A transaction per batch: filings get the database between them.
        for batch in batches:
            importer.record(batch, await ctx.write(importer.write, batch))
        return importer.report.as_json()



for _collection, _kind in _KINDS.items():
    _add_routes(_collection, _kind)
