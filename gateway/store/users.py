"""Users as the reads see them: the e-mail address that names a record's, lead's or
contact's owner and an email's filer.  The rows are written from the rules by
sync_rules (store/organisations.py) and never deleted (a user who left the rules is
only marked inactive), so an id once stored keeps resolving to its address."""

from __future__ import annotations

from sqlalchemy import Connection, select

from gateway.store import models as m

_USERS = m.User.__table__


def emails(conn: Connection) -> dict[int, str]:
    """Every user's address, by id (all organisations)."""
    return {r.id: r.email for r in conn.execute(select(_USERS.c.id, _USERS.c.email))}


def email(conn: Connection, user_id: int | None) -> str | None:
    """One user's address; None for no user (or an unknown id)."""
    return conn.execute(select(_USERS.c.email).where(_USERS.c.id == user_id)).scalar_one_or_none()
