"""Dropbox addresses: the random token that is a user's BCC address (SPEC 2.2),
issued once, replaced on demand, looked up per organisation."""

from __future__ import annotations

import base64
import secrets

from sqlalchemy import Connection, bindparam, select, update

from gateway.store import models as m
from gateway.store.prepared import PerDialect, Prepared
from gateway.store.sql import insert_for, now

_DROPBOX = m.DropboxAddress.__table__


def new_token() -> str:
    """128+ random bits (SPEC 2.2: the address is the only key), lower-case base32
    so it survives MTAs that fold the local part to lower case."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii").lower()


def ensure(conn: Connection, org_id: str, user_id: int) -> None:
    """Give the user an address if they have none yet."""
    stmt = insert_for(conn, _DROPBOX).values(token=new_token(), org_id=org_id, user_id=user_id, created_at=now())
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["user_id"]))


def token(conn: Connection, org_id: str, user_id: int) -> str:
    ensure(conn, org_id, user_id)
    return conn.execute(select(_DROPBOX.c.token).where(_DROPBOX.c.user_id == user_id)).scalar_one()


def regenerate(conn: Connection, org_id: str, user_id: int) -> str:
    """Replace the token: the old address stops working at the next lookup, everywhere."""
    fresh = new_token()
    ensure(conn, org_id, user_id)
    conn.execute(update(_DROPBOX).where(_DROPBOX.c.user_id == user_id).values(token=fresh, created_at=now()))
    return fresh


_owner = PerDialect(lambda conn: Prepared(
    select(_DROPBOX.c.user_id).where(_DROPBOX.c.token == bindparam("b_token"), _DROPBOX.c.org_id == bindparam("b_org")),
    conn.dialect))


def owner(conn: Connection, org_id: str, token: str) -> int | None:
    """The user id a dropbox token belongs to, within one organisation (RCPT, hot)."""
    return _owner(conn).scalar(conn, {"b_token": token, "b_org": org_id})


def listing(conn: Connection) -> list[tuple[str, str, int]]:
    """Every dropbox address: (token, organisation, user id), in no particular order."""
    return [(r.token, r.org_id, r.user_id)
            for r in conn.execute(select(_DROPBOX.c.token, _DROPBOX.c.org_id, _DROPBOX.c.user_id))]


def current(conn: Connection, user_id: int) -> str | None:
    """The user's token, without issuing one (None: none issued yet)."""
    return conn.execute(select(_DROPBOX.c.token).where(_DROPBOX.c.user_id == user_id)).scalar_one_or_none()
