"""Pipeline records: a page of them (filtered by pipeline, stage, last change), one
record as `gateway record show --json` has it, and a change of its stage, owner or
tags (write scope).  A stage change made here joins the stage history with the
token's name as ``actor``; a reply to a record moved here to a closed stage reopens
it like any other (gateway/filing/alias.py reads the stage, not who set it)."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from gateway import records
from gateway.api.auth import context, principal, writer
from gateway.api.context import ApiContext
from gateway.api.pagination import Page, PageParams, UpdatedSince, page, page_params, utc
from gateway.api.problems import Problem, not_found
from gateway.api.routes.emails import InvitationOut
from gateway.rules.index import OrgEntry
from gateway.store.tokens import Principal

router = APIRouter(tags=["records"])

# Ids are 64-bit in the database: a larger one would be a driver error, not a 404.
RecordId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the record's id")]
_Tag = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class Contact(BaseModel):
    id: int
    email: str
    first_name: str
    last_name: str


class ConversationEmail(BaseModel):
    id: int
    date: str | None
    sort_at: str | None
    from_: str | None = Field(alias="from")
    subject: str | None
    direction: str
    kind: str
    message_id: str | None
    source: str = Field(description="dropbox | alias | relay (as stored)")
    new_text: str = Field(description="the text its author wrote: quoted history and signature apart")
    forwarded_by: str | None = Field(description="a forward filed as its original: the user who forwarded it")
    invitation: InvitationOut | None = Field(description="the meeting invitation it carries")


class StageHistoryEntry(BaseModel):
    from_: str | None = Field(alias="from")
    to: str
    at: str | None
    cause: str = Field(description="created | reply | manual")
    email_id: int | None
    actor: str | None = Field(None, description="who moved it (an API token's name); absent when no person did")


class RecordSummary(BaseModel):
    id: int
    org: str
    pipeline: str
    stage: str
    title: str
    token: str | None = Field(description="the record's token in reply subjects, e.g. [#S-42]")
    owner: str | None
    tags: list[str]
    contact_id: int | None
    created_at: str | None
    updated_at: str | None


class Record(BaseModel):
    """A record as `gateway record show --json` prints it."""

    id: int
    org: str
    pipeline: str
    stage: str
    title: str
    token: str | None
    owner: str | None
    tags: list[str]
    contact: Contact | None
    participants: list[str] = Field(description="who takes part: the external addresses of the conversation's "
                                                "From, To and Cc, and every sender; their mail naming the record's "
                                                "token joins it")
    created_at: str | None
    updated_at: str | None
    conversation: list[ConversationEmail] = Field(description="the record's emails in conversation order")
    stage_history: list[StageHistoryEntry]
    decisions: list[dict[str, Any]] = Field(description="how each email of the conversation was filed")


class RecordPatch(BaseModel):
    """Any of stage, owner and tags (at least one); what is left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    stage: str | None = Field(None, min_length=1, max_length=100, description="a stage of the record's pipeline")
    owner: str | None = Field(None, min_length=1, max_length=320,
                              description="an active user's address of the organisation; null: no owner")
    tags: list[_Tag] | None = Field(None, max_length=50, description="the tags (replacing them), up to 50")

    @field_validator("tags")
    @classmethod
    def _printable(cls, tags: list[str] | None) -> list[str] | None:
        for tag in tags or []:
            if tag != tag.strip() or any(unicodedata.category(ch) == "Cc" for ch in tag):
                raise ValueError(f"tag {tag!r}: no control characters, no leading or trailing spaces")
        return tags

    @model_validator(mode="after")
    def _something_to_change(self) -> "RecordPatch":
        if not self.model_fields_set:
            raise ValueError("nothing to change: send any of stage, owner, tags")
        for name in ("stage", "tags"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} may not be null")
        return self


def _filters(org: OrgEntry, pipeline: str | None, stage: str | None) -> None:
    """422 for a pipeline or stage the rules do not name: a typo must not read as "no records"."""
    if pipeline is not None and pipeline not in org.pipelines:
        allowed = list(org.pipelines)
        raise Problem(422, f"pipeline: {pipeline!r} is not a pipeline of {org.id} (pipelines: {', '.join(allowed)})",
                      allowed=allowed)
    if stage is not None:
        pipes = [org.pipelines[pipeline]] if pipeline is not None else list(org.pipelines.values())
        allowed = list(dict.fromkeys(s for p in pipes for s in p.stages))
        if stage not in allowed:
            where = pipeline if pipeline is not None else f"any pipeline of {org.id}"
            raise Problem(422, f"stage: {stage!r} is not a stage of {where} (stages: {', '.join(allowed)})",
                          allowed=allowed)


@router.get("/records", response_model=Page[RecordSummary],
            summary="The organisation's records by id, optionally of one pipeline, stage, or changed since")
async def list_records(
    paging: PageParams = Depends(page_params),
    pipeline: str | None = Query(None, min_length=1, max_length=100, description="a pipeline's name"),
    stage: str | None = Query(None, min_length=1, max_length=100, description="a stage's name"),
    updated_since: datetime | None = UpdatedSince,
    who: Principal = Depends(principal), ctx: ApiContext = Depends(context),
) -> Response:
    rules = ctx.rules
    _filters(rules.orgs[who.org_id], pipeline, stage)
    query = partial(records.summaries, after=paging.after, limit=paging.limit + 1, pipeline=pipeline, stage=stage,
                    updated_since=utc(updated_since))
    return await ctx.listing(lambda conn: page(query(conn, rules, who.org_id), paging.limit, lambda r: r["id"]))


@router.get("/records/{record_id}", response_model=Record, response_model_exclude_unset=True,
            summary="One record: conversation, stage history and filing decisions")
async def get_record(record_id: RecordId, who: Principal = Depends(principal),
                     ctx: ApiContext = Depends(context)) -> Any:
    shown = await ctx.read(records.show_on, ctx.rules, record_id, who.org_id, who.user_id)
    if shown is None:
        raise not_found(f"record {record_id}")
    return shown


@router.patch("/records/{record_id}", response_model=Record, response_model_exclude_unset=True,
              summary="Change a record's stage, owner or tags (write scope)")
async def patch_record(record_id: RecordId, change: RecordPatch, who: Principal = Depends(writer),
                       ctx: ApiContext = Depends(context)) -> Any:
    rules = ctx.rules
    try:
        # One transaction: every value is checked before anything is written.
        changed = await ctx.write(records.edit, rules, who.org_id, record_id, change.model_dump(exclude_unset=True),
                                  who.name)
    except records.RecordChangeError as exc:
        raise Problem(422, f"{exc.field}: {exc}", allowed=list(exc.allowed)) from None
    if changed is None:
        raise not_found(f"record {record_id}")
    shown = await ctx.read(records.show_on, rules, record_id, who.org_id, who.user_id)
    if shown is None:  # cannot happen (records are never deleted), but never a 500
        raise not_found(f"record {record_id}")
    return shown
