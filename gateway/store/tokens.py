"""API tokens: a bearer token per CRM integration, per organisation, optionally bound
to a user.  Only the SHA-256 of a token is stored (it carries 160+ random bits, so a
slow hash would add nothing); the token itself is shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, NamedTuple, Sequence

from sqlalchemy import Connection, Row, select, update

from gateway.store import models as m
from gateway.store.sql import now, tenant_rows

_TOKENS, _USERS = m.ApiToken.__table__, m.User.__table__
PREFIX = "gwt_"


class Principal(NamedTuple):
    """Who a request's token speaks for."""

    token_id: int
    org_id: str
    name: str
    scope: str  # read | write
    user_id: int | None
    user_email: str | None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def create(conn: Connection, org_id: str, name: str, scope: str, user_id: int | None) -> tuple[int, str]:
    """A new token: (its id, the token -- shown once, never stored)."""
    token = PREFIX + secrets.token_urlsafe(30)
    token_id = conn.execute(_TOKENS.insert().values(
        org_id=org_id, name=name, user_id=user_id, scope=scope, token_hash=digest(token), created_at=now(),
    ).returning(_TOKENS.c.id)).scalar_one()
    return token_id, token


def listing(conn: Connection, org_id: str) -> Sequence[Row[Any]]:
    query = (select(_TOKENS.c.id, _TOKENS.c.org_id, _TOKENS.c.name, _TOKENS.c.scope, _TOKENS.c.created_at,
                    _TOKENS.c.revoked_at, _USERS.c.email.label("user"))
             .outerjoin(_USERS, _USERS.c.id == _TOKENS.c.user_id))
    return tenant_rows(conn, query, _TOKENS, org_id)


def revoke(conn: Connection, token_id: int) -> bool:
    """Revoke a token (at once, in every process); False if there is no such live token."""
    done = conn.execute(update(_TOKENS).where(_TOKENS.c.id == token_id, _TOKENS.c.revoked_at.is_(None))
                        .values(revoked_at=now()))
    return done.rowcount == 1


def principal(conn: Connection, token: str) -> Principal | None:
    """The live token ``token`` is, or None (unknown or revoked)."""
    row = conn.execute(
        select(_TOKENS.c.id, _TOKENS.c.org_id, _TOKENS.c.name, _TOKENS.c.scope, _TOKENS.c.user_id, _USERS.c.email)
        .outerjoin(_USERS, _USERS.c.id == _TOKENS.c.user_id)
        .where(_TOKENS.c.token_hash == digest(token), _TOKENS.c.revoked_at.is_(None))
    ).one_or_none()
    return Principal(*row) if row is not None else None
