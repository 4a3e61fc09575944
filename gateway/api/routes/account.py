"""The organisation's account: the daily sending quota (as `gateway quota status --json`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from gateway import quota
from gateway.api.auth import context, principal
from gateway.api.context import ApiContext
from gateway.store.tokens import Principal

router = APIRouter(tags=["account"])


@router.get("/quota", summary="Daily sending quota per class: limit, used, remaining, next reset")
async def get_quota(who: Principal = Depends(principal), ctx: ApiContext = Depends(context)) -> dict[str, Any]:
    org = ctx.rules.orgs[who.org_id]
    return await ctx.read(quota.status_on, org)
