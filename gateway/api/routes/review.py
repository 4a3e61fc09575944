"""/review: mail held for review instead of filed (issue 16) -- the list, one message,
and the decision (write scope): approve files it through the delivery's filing code,
reject keeps it unfiled (gateway/review.py, as `gateway review` does).

The queue is the organisation's: it needs an organisation token (a token bound to a
user is refused with 403), since a held message is not yet anyone's filed mail that
the sharing setting could decide about."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway import review
from gateway.api.auth import context, principal, writer
from gateway.api.context import ApiContext
from gateway.api.pagination import Page, PageParams, page, page_params
from gateway.api.problems import Problem, documented, not_found
from gateway.store.tokens import Principal

router = APIRouter(tags=["review"])

HeldId = Annotated[int, Path(ge=1, le=2**63 - 1, description="its id in the review queue")]


class Held(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    org: str
    route: Literal["dropbox", "alias"]
    recipient: str = Field(description="the dropbox user's address or the alias address it was sent to")
    envelope_sender: str
    sender: str = Field(description="the From address")
    subject: str
    message_id: str | None
    reason: str = Field(description="why it was held: authentication | ...")
    evidence: str
    status: Literal["pending", "approved", "rejected"]
    held_at: str | None
    decided_at: str | None
    decided_by: str | None = Field(description="the API token's name or the CLI user who decided")
    note: str | None = Field(description="a rejection's reason")
    email_id: int | None = Field(description="what approving it filed")


class HeldMessage(Held):
    size: int
    date: str | None
    to: list[str]
    cc: list[str]
    text: str = Field(description="its new text (or the start of its body)")


class Decision(BaseModel):
    id: int
    status: Literal["approved", "rejected"]
    email_id: int | None = Field(description="the email approving it filed (null: nothing, or rejected)")
    result: str = Field(description="filed | duplicate | dropped | rejected | approved before | rejected before")


class RejectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000, description="why (kept with the decision)")


async def _organisation(who: Principal = Depends(principal)) -> Principal:
    if who.user_id is not None:
        raise Problem(403, f"token {who.name!r} is bound to a user; the review queue needs an organisation token")
    return who


async def _deciding(who: Principal = Depends(writer)) -> Principal:
    return await _organisation(who)


def _decision_problem(exc: review.ReviewError, held_id: int) -> Problem:
    return not_found(f"held message {held_id}") if exc.status == 404 else Problem(409, str(exc))


_CONFLICT = {409: documented("decided otherwise already, or its route is gone from the rules")}


@router.get("/review", response_model=Page[Held], summary="Mail held for review (pending by default)")
async def list_held(
    paging: PageParams = Depends(page_params),
    status: Literal["pending", "approved", "rejected", "all"] = Query("pending", description="which ones"),
    who: Principal = Depends(_organisation), ctx: ApiContext = Depends(context),
) -> Response:
    shown = None if status == "all" else status

    def query(conn: Any) -> dict[str, Any]:
        rows = review.page_on(conn, who.org_id, shown, paging.after, paging.limit + 1)
        return page(rows, paging.limit, lambda r: r["id"])

    return await ctx.listing(query)


@router.get("/review/{held_id}", response_model=HeldMessage, summary="One held message: who, why, its text")
async def get_held(held_id: HeldId, who: Principal = Depends(_organisation),
                   ctx: ApiContext = Depends(context)) -> Any:
    shown = await ctx.read(review.show_on, held_id, who.org_id)
    if shown is None:
        raise not_found(f"held message {held_id}")
    return shown


@router.post("/review/{held_id}/approve", response_model=Decision, responses=_CONFLICT,
             summary="File it now, as a delivery would (write scope; approving again changes nothing)")
async def approve_held(held_id: HeldId, who: Principal = Depends(_deciding),
                       ctx: ApiContext = Depends(context)) -> Any:
    try:
        done = await ctx.write(review.approve_on, ctx.rules, held_id, f"api:{who.name}", who.org_id)
    except review.ReviewError as exc:
        raise _decision_problem(exc, held_id) from None
    review.decided(done)
    return done


@router.post("/review/{held_id}/reject", response_model=Decision, responses=_CONFLICT,
             summary="Keep it unfiled (write scope); pruned after [review] retention_days")
async def reject_held(held_id: HeldId, body: RejectBody | None = None, who: Principal = Depends(_deciding),
                      ctx: ApiContext = Depends(context)) -> Any:
    try:
        done = await ctx.write(review.reject_on, held_id, f"api:{who.name}", body.reason if body else None,
                               who.org_id)
    except review.ReviewError as exc:
        raise _decision_problem(exc, held_id) from None
    review.decided(done)
    return done
