"""A user's BCC dropbox (SPEC section 2): the address, a new one (the old one refused
at once, as with `gateway dropbox regenerate`), and the vCard of `gateway dropbox vcard`.

A user of another organisation, one whose role lacks the dropbox permission, and --
for a token bound to a user -- anyone but that user are all the same 404: the
address is the only key to a user's filing, so it is shown to no one else.

After a regenerate the daemon rewrites the Postfix recipient map when it keeps one
(postfix.recipient_map), as `gateway dropbox regenerate` does, so the old address is
refused by Postfix itself."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import Response
from pydantic import BaseModel

from gateway import dropboxes
from gateway.api.auth import context, principal, writer
from gateway.api.context import ApiContext
from gateway.api.problems import not_found
from gateway.rules.index import OrgEntry, UserEntry
from gateway.routing import dropbox_address
from gateway.store import dropboxes as store_dropboxes
from gateway.store.tokens import Principal

router = APIRouter(tags=["users"])

Email = Annotated[str, Path(min_length=3, max_length=320, description="the user's address")]
VCARD = "text/vcard"


class DropboxAddress(BaseModel):
    address: str


def _user(ctx: ApiContext, who: Principal, email: str) -> tuple[OrgEntry, UserEntry]:
    org = ctx.rules.orgs[who.org_id]
    user = dropboxes.dropbox_user(org, email)
    if user is None or (who.user_id is not None and who.user_id != user.id):
        raise not_found(f"dropbox for {email}")
    return org, user


async def _address(ctx: ApiContext, org: OrgEntry, user: UserEntry) -> str:
    token = await ctx.read(store_dropboxes.current, user.id)
    if token is None:  # issued at rules load; a first use may still come first
        token = await ctx.write(store_dropboxes.token, org.id, user.id)
    return dropbox_address(token, org.gateway_domain)


@router.get("/users/{email}/dropbox", response_model=DropboxAddress, summary="The user's dropbox address")
async def get_dropbox(email: Email, who: Principal = Depends(principal), ctx: ApiContext = Depends(context)) -> Any:
    org, user = _user(ctx, who, email)
    return {"address": await _address(ctx, org, user)}


@router.post("/users/{email}/dropbox/regenerate", response_model=DropboxAddress,
             summary="A new dropbox address; the old one is refused from now on (write scope)")
async def regenerate_dropbox(email: Email, who: Principal = Depends(writer),
                             ctx: ApiContext = Depends(context)) -> Any:
    org, user = _user(ctx, who, email)
    # The RCPT lookup reads the token from the database on every delivery, so the
    # old address is refused from this commit on (SPEC 2.2).
    token = await ctx.write(store_dropboxes.regenerate, org.id, user.id)
    await ctx.recipients_changed()
    return {"address": dropbox_address(token, org.gateway_domain)}


@router.get("/users/{email}/dropbox.vcf", response_class=Response,
            responses={200: {"content": {VCARD: {"schema": {"type": "string"}}},
                             "description": "the address as a vCard 3.0"}},
            summary="The dropbox address as a vCard, as `gateway dropbox vcard` prints it")
async def get_dropbox_vcard(email: Email, who: Principal = Depends(principal),
                            ctx: ApiContext = Depends(context)) -> Response:
    org, user = _user(ctx, who, email)
    card = dropboxes.vcard(user, org, await _address(ctx, org, user))
    return Response(card, media_type=f"{VCARD}; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="dropbox.vcf"'})
