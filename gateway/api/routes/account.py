"""The organisation's account: the daily sending quota (as `gateway quota status --json`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from gateway import quota
from gateway.api.auth import context, principal
from gateway.api.context import ApiContext
from gateway.store.tokens import Principal

router = APIRouter(tags=["account"])


class ClassQuota(BaseModel):
    limit: int
    used: int
    remaining: int


class QuotaClasses(BaseModel):
    individual: ClassQuota
    bulk: ClassQuota


class QuotaStatus(BaseModel):
    org: str
    timezone: str
    plan: str
    edition: str
    active_users: int
    day: str
    next_reset_local: str
    next_reset_utc: str
    classes: QuotaClasses


@router.get("/quota", response_model=QuotaStatus,
            summary="Daily sending quota per class: limit, used, remaining, next reset")
async def get_quota(who: Principal = Depends(principal), ctx: ApiContext = Depends(context)) -> Any:
    org = ctx.rules.orgs[who.org_id]
    return await ctx.read(quota.status_on, org)
