"""Bearer tokens (`gateway token create`): who a request speaks for.

No, unknown or revoked token: 401.  A read token on a write endpoint: 403.  Anything
of another organisation: 404 (the routes look everything up within the token's
organisation, so another organisation's ids simply do not exist for it)."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.context import ApiContext
from gateway.api.problems import Problem
from gateway.store import tokens
from gateway.store.tokens import Principal

# Documents the scheme in the OpenAPI document; the answer to a missing token is ours.
_BEARER = HTTPBearer(auto_error=False, description="a token from `gateway token create`")


async def context(request: Request) -> ApiContext:
    return request.app.state.context  # type: ignore[no-any-return]


async def principal(request: Request,
                    credentials: HTTPAuthorizationCredentials | None = Depends(_BEARER)) -> Principal:
    if credentials is None or not credentials.credentials.strip():
        raise Problem(401, "send Authorization: Bearer <token> (create one with `gateway token create`)")
    token = credentials.credentials.strip()
    if len(token) > 200:
        raise Problem(401, "unknown or revoked token")
    ctx = await context(request)
    found = await ctx.read(tokens.principal, token)
    org = ctx.rules.orgs.get(found.org_id) if found is not None else None
    if found is None or org is None:  # an organisation gone from the rules: its tokens too
        raise Problem(401, "unknown or revoked token")
    if found.user_id is not None:
        user = org.users.get(found.user_email or "")
        if user is None or user.id != found.user_id:  # the user left the rules: so did what they could see
            raise Problem(401, f"token {found.name!r} belongs to {found.user_email}, who is no longer a user "
                               f"of {found.org_id}")
    return found


async def writer(who: Principal = Depends(principal)) -> Principal:
    if who.scope != "write":
        raise Problem(403, f"token {who.name!r} has the read scope; this needs a write token")
    return who


async def gate(request: Request) -> None:
    """The token checks of the request's route, by themselves: FastAPI decodes a JSON
    body before it runs dependencies, so a malformed body would otherwise be answered
    (400/422) before a missing token (401) or a read token on a write route (403)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not _uses(dependant, principal):
        return
    who = await principal(request, await _BEARER(request))
    if _uses(dependant, writer):
        await writer(who)


def _uses(dependant: Dependant, call: object) -> bool:
    return any(d.call is call or _uses(d, call) for d in dependant.dependencies)
