"""/emails: what the gateway filed -- the list, one email, its raw message, its
attachments -- as far as the token may see it (SPEC 2.12 sharing: gateway/sharing.py).

An email the token may not see answers exactly as one that does not exist (404), in
lists, single reads, raw and attachments alike.  Lists filter in SQL first (a superset
of what is visible) and apply the exact rule here, fetching on until the page is
full; a user's list reads at most ``MAX_SCAN`` candidates per request, and then ends
the page early (fewer items, ``next_cursor`` set) rather than scan a whole mailbox."""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal, Sequence
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Row

from gateway import sharing, views
from gateway.api.auth import context, principal
from gateway.api.context import ApiContext
from gateway.api.pagination import Page, PageParams, encode, page, page_params
from gateway.api.problems import not_found
from gateway.message import AttachmentInfo
from gateway.parse import attachment as parse_attachment
from gateway.rules.index import OrgEntry
from gateway.store import emails as store_emails
from gateway.store.emails import EmailFilter
from gateway.store.tokens import Principal

router = APIRouter(tags=["emails"])

# Ids are 64-bit in the database: a larger number is a 422, never a driver error.
MAX_ID = 2**63 - 1
MAX_SCAN = 5000


class Sender(BaseModel):
    name: str
    address: str


class LinkOut(BaseModel):
    kind: Literal["lead", "contact", "record"]
    id: int


class AttachmentOut(BaseModel):
    index: int = Field(description="its number in /emails/{id}/attachments/{index}")
    filename: str
    content_type: str
    size: int = Field(description="decoded size in octets")


class AttendeeOut(BaseModel):
    address: str
    name: str
    status: str = Field(description="PARTSTAT: ACCEPTED, DECLINED, TENTATIVE, NEEDS-ACTION ... (\"\" when none)")


class InvitationOut(BaseModel):
    """A meeting invitation: the first text/calendar part (it stays an attachment too)."""

    method: str = Field(description="REQUEST | REPLY | CANCEL | PUBLISH ... (\"\" when the part names none)")
    summary: str
    start: str | None = Field(description="ISO 8601: UTC with Z; a floating time without zone; YYYY-MM-DD all day")
    end: str | None
    organizer: str | None
    location: str
    uid: str
    attendees: list[AttendeeOut]


class EmailOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: int
    message_id: str | None
    subject: str
    from_: Sender = Field(alias="from")
    to: list[str]
    cc: list[str]
    date: str | None = Field(description="the Date header, UTC ISO 8601 (null when missing or unreadable)")
    received_at: str
    kind: Literal["message", "auto_reply", "bounce", "loop"]
    direction: Literal["inbound", "outbound"]
    source: Literal["dropbox", "alias", "outbound"]
    filed_by: str | None = Field(description="the user who filed it (dropbox, or outbound mail a user sent)")
    visibility: Literal["private", "custom", "public"]
    size: int
    links: list[LinkOut]
    attachments: list[AttachmentOut]
    forwarded_by: str | None = Field(description="a forward filed as its original: the user who forwarded it")
    forward_note: str | None = Field(description="a forward filed as its original: what the user wrote above it")
    invitation: InvitationOut | None = Field(description="the meeting invitation it carries")
    text_body: str | None = Field(None, description="on /emails/{id}, and in lists with include=bodies")
    html_body: str | None = Field(None, description="on /emails/{id}, and in lists with include=bodies")
    new_text: str | None = Field(None, description="the text its author wrote: text_body without the quoted history "
                                                   "and the signature; on /emails/{id}, and with include=bodies")


class _Details:
    """The links, customer addresses and attachments of a batch of emails."""

    def __init__(self, conn: Connection, org_id: str, email_ids: Sequence[int]):
        self.links: dict[int, list[dict[str, Any]]] = {}
        self.customers: dict[int, list[str]] = {}
        self.attachments: dict[int, list[Any]] = {}
        for r in store_emails.api_links(conn, org_id, email_ids):
            self.links.setdefault(r.email_id, []).append({"kind": r.kind, "id": r.target_id})
            if r.address is not None:
                self.customers.setdefault(r.email_id, []).append(r.address)
        for r in store_emails.api_attachments(conn, org_id, email_ids):
            self.attachments.setdefault(r.email_id, []).append(r._mapping)

    def visible(self, org: OrgEntry, viewer: int | None, row: Row[Any]) -> bool:
        return sharing.visible(org, viewer, row.filed_by_user_id, row.visibility, self.customers.get(row.id, ()))

    def email(self, row: Row[Any], bodies: bool) -> dict[str, Any]:
        return views.email(row._mapping, filed_by=row.filed_by, links=self.links.get(row.id, ()),
                           attachments=self.attachments.get(row.id, ()), bodies=bodies)


def _listing(conn: Connection, org: OrgEntry, viewer: int | None, where: EmailFilter, after: int, limit: int,
             bodies: bool) -> dict[str, Any]:
    seen_by = sharing.prefilter(org, viewer)
    shown: list[dict[str, Any]] = []
    cursor, scanned = after, 0
    while True:
        rows = store_emails.api_page(conn, org.id, cursor, limit + 1, where, bodies=bodies,
                                     visible_to=seen_by.user_id if seen_by else None,
                                     sharers=seen_by.sharers if seen_by else ())
        details = _Details(conn, org.id, [r.id for r in rows])
        for row in rows:
            cursor = row.id
            if details.visible(org, viewer, row):
                shown.append(details.email(row, bodies))
                if len(shown) > limit:
                    break
        scanned += len(rows)
        if len(shown) > limit or len(rows) <= limit:  # a full page, or no more rows
            return page(shown, limit, lambda item: item["id"])
        if scanned >= MAX_SCAN:
            return {"items": shown, "next_cursor": encode(cursor)}


def _visible_row(conn: Connection, org: OrgEntry, viewer: int | None, email_id: int,
                 bodies: bool) -> tuple[Row[Any], _Details] | None:
    row = store_emails.api_one(conn, org.id, email_id, bodies=bodies)
    if row is None:
        return None
    details = _Details(conn, org.id, [row.id])
    return (row, details) if details.visible(org, viewer, row) else None


def _one(conn: Connection, org: OrgEntry, viewer: int | None, email_id: int) -> dict[str, Any] | None:
    found = _visible_row(conn, org, viewer, email_id, bodies=True)
    return found[1].email(found[0], bodies=True) if found else None


def _raw(conn: Connection, org: OrgEntry, viewer: int | None, email_id: int) -> bytes | None:
    if _visible_row(conn, org, viewer, email_id, bodies=False) is None:
        return None
    return store_emails.raw(conn, email_id, org.id)


def _attachment(conn: Connection, org: OrgEntry, viewer: int | None, email_id: int,
                index: int) -> tuple[bool, tuple[AttachmentInfo, bytes] | None]:
    """(whether the email is there for the viewer, the attachment or None)."""
    raw = _raw(conn, org, viewer, email_id)
    if raw is None:
        return False, None
    # Parsed again from the stored bytes (decoded parts are not stored), in the
    # API's threads like the read itself.
    return True, parse_attachment(raw, index)


# RFC 8187 attr-char besides letters and digits (quote() keeps "_.-~" itself).
_ATTR_CHARS = "!#$&+^`|"


def content_disposition(filename: str) -> str:
    """``attachment`` with the file name as RFC 6266 gives it: an ASCII ``filename``
    for every client, and ``filename*=UTF-8''...`` (RFC 8187) when the real name is
    not plain ASCII.  Control characters and path separators never reach a header."""
    name = "".join(ch for ch in filename if ch.isprintable()).replace("/", "_").replace("\\", "_").strip()
    name = name or "attachment"
    plain = "".join(ch for ch in unicodedata.normalize("NFKD", name) if not unicodedata.combining(ch))
    fallback = "".join(ch if " " <= ch <= "~" and ch != '"' else "_" for ch in plain)
    if fallback == name:
        return f'attachment; filename="{fallback}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe=_ATTR_CHARS)}"


_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")

EmailId = Path(ge=1, le=MAX_ID, description="an email's id")


@router.get("/emails", response_model=Page[EmailOut], response_model_exclude_unset=True,
            summary="Emails the token may see, oldest first (cursor pagination)")
async def list_emails(
    paging: PageParams = Depends(page_params),
    since_id: int = Query(0, ge=0, le=MAX_ID, description="only emails with a greater id"),
    contact_id: int | None = Query(None, ge=1, le=MAX_ID, description="only emails filed under this contact"),
    lead_id: int | None = Query(None, ge=1, le=MAX_ID, description="only emails filed under this lead"),
    record_id: int | None = Query(None, ge=1, le=MAX_ID, description="only emails filed under this record"),
    source: Literal["dropbox", "alias", "outbound"] | None = Query(None, description="how the mail came"),
    include: Literal["bodies"] | None = Query(None, description="bodies: text_body, html_body and new_text in each item"),
    who: Principal = Depends(principal), ctx: ApiContext = Depends(context),
) -> Any:
    org = ctx.rules.orgs[who.org_id]
    where = EmailFilter(since_id=since_id, contact_id=contact_id, lead_id=lead_id, record_id=record_id,
                        source=views.SOURCES[source] if source else None)
    return await ctx.listing(_listing, org, who.user_id, where, paging.after, paging.limit, include == "bodies")


@router.get("/emails/{email_id}", response_model=EmailOut, summary="One email, with its text and HTML bodies")
async def get_email(email_id: int = EmailId, who: Principal = Depends(principal),
                    ctx: ApiContext = Depends(context)) -> Any:
    found = await ctx.read(_one, ctx.rules.orgs[who.org_id], who.user_id, email_id)
    if found is None:
        raise not_found(f"email {email_id}")
    return found


@router.get("/emails/{email_id}/raw", response_class=Response,
            responses={200: {"description": "the message as received, byte for byte",
                             "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}}}},
            summary="The stored message, byte for byte")
async def get_raw(email_id: int = EmailId, who: Principal = Depends(principal),
                  ctx: ApiContext = Depends(context)) -> Response:
    raw = await ctx.read(_raw, ctx.rules.orgs[who.org_id], who.user_id, email_id)
    if raw is None:
        raise not_found(f"email {email_id}")
    return Response(content=raw, media_type="message/rfc822")


@router.get("/emails/{email_id}/attachments/{index}", response_class=Response,
            responses={200: {"description": "the decoded attachment, with its content type and file name",
                             "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}},
            summary="One attachment, decoded")
async def get_attachment(email_id: int = EmailId,
                         index: int = Path(ge=0, le=100_000, description="the attachment's index in the email"),
                         who: Principal = Depends(principal), ctx: ApiContext = Depends(context)) -> Response:
    there, found = await ctx.read(_attachment, ctx.rules.orgs[who.org_id], who.user_id, email_id, index)
    if not there:
        raise not_found(f"email {email_id}")
    if found is None:
        raise not_found(f"attachment {index} of email {email_id}")
    info, content = found
    # The part's type/subtype as sent (a charset we no longer know is not invented),
    # unless it is no RFC 6838 media type; nosniff and "attachment" keep a browser
    # from rendering what a customer sent.
    ctype = info.content_type if _MEDIA_TYPE.match(info.content_type) else "application/octet-stream"
    return Response(content=content, headers={
        "content-type": ctype,
        "content-disposition": content_disposition(info.filename),
        "x-content-type-options": "nosniff",
    })
