"""Idempotency keys with the content digest; addresses in IDNA 2008

1. A delivery's key was the Message-ID alone, so a different mail reusing an id
   was answered 250 and stored nowhere.  Keys are now the Message-ID together with
   the digest of the originator fields and body (gateway.store.deliveries.message_key).
   Every stored delivery and quarantined message gets its key recomputed from the
   raw message, so a re-delivery of mail filed before the upgrade is still a
   repeat; emails.digest is recomputed the same way.  Deliveries without a stored
   message (dropped noise) keep their old key: a repeat of one is dropped again.
2. Domains were normalised with the stdlib's IDNA 2003 codec (faß.example became
   fass.example); now IDNA 2008 / UTS 46 (xn--fa-hia.example).  A stored address
   is renamed when the spellings seen in the organisation's mail say what it was
   and nothing else already has the new address; an address that merged two
   spellings (both faß and fass seen) is left and logged -- it cannot be split.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Iterator

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
BATCH = 500


def _batches(bind: Any, query: sa.Select, id_column: sa.ColumnElement) -> Iterator[list[Any]]:
    """Rows of ``query`` in id order, BATCH at a time (big tables stay out of memory)."""
    last = None
    while True:
        q = query.order_by(id_column).limit(BATCH)
        if last is not None:
            q = q.where(id_column > last)
        rows = bind.execute(q).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def upgrade() -> None:
    bind = op.get_bind()
    _rekey(bind)
    _renormalise(bind)


def downgrade() -> None:
    # Old keys cannot be told apart again (two mails with one Message-ID); the new
    # ones work with the old code as plain distinct keys. Nothing to undo.
    pass


# --- 1. content keys ----------------------------------------------------------

def _rekey(bind: Any) -> None:
    from gateway.errors import MalformedMessage
    from gateway.parse import parse_message
    from gateway.store.deliveries import message_key

    meta = sa.MetaData()
    emails = sa.Table("emails", meta, sa.Column("id"), sa.Column("digest"))
    raw = sa.Table("email_raw", meta, sa.Column("email_id"), sa.Column("content"))
    deliveries = sa.Table("deliveries", meta, sa.Column("id"), sa.Column("org_id"), sa.Column("route"),
                          sa.Column("message_key"), sa.Column("email_id"))
    quarantine = sa.Table("quarantine", meta, sa.Column("id"), sa.Column("org_id"), sa.Column("route"),
                          sa.Column("message_key"), sa.Column("content"))

    def move(table: sa.Table, row_id: int, org_id: str, route: str, key: str) -> None:
        taken = bind.execute(sa.select(table.c.id).where(table.c.org_id == org_id, table.c.route == route,
                                                         table.c.message_key == key)).first()
        if taken is None:
            bind.execute(sa.update(table).where(table.c.id == row_id).values(message_key=key))
        elif taken[0] != row_id:
            log.warning("0006: %s %d keeps its old key (%s is taken by %d)", table.name, row_id, key[:80], taken[0])

    query = (sa.select(deliveries.c.id, deliveries.c.org_id, deliveries.c.route, deliveries.c.message_key,
                       deliveries.c.email_id, raw.c.content)
             .join(raw, raw.c.email_id == deliveries.c.email_id))
    done = 0
    for rows in _batches(bind, query, deliveries.c.id):
        for row_id, org_id, route, old, email_id, content in rows:
            try:
                parsed = parse_message(bytes(content))
            except MalformedMessage:
                continue
            bind.execute(sa.update(emails).where(emails.c.id == email_id).values(digest=parsed.digest))
            new = message_key(parsed)
            if new != old:
                move(deliveries, row_id, org_id, route, new)
        done += len(rows)
        log.info("0006: %d deliveries re-keyed", done)
    query = sa.select(quarantine.c.id, quarantine.c.org_id, quarantine.c.route, quarantine.c.message_key,
                      quarantine.c.content)
    for rows in _batches(bind, query, quarantine.c.id):
        for row_id, org_id, route, old, content in rows:
            try:
                new = message_key(parse_message(bytes(content)))
            except MalformedMessage:
                continue
            if new != old:
                move(quarantine, row_id, org_id, route, new)


# --- 2. IDNA 2008 -------------------------------------------------------------

def _old_normalise(address: str) -> str:
    """gateway.addresses.normalise as it was before this revision (IDNA 2003)."""
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if not at:
        return address.lower()
    domain = domain.rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    return f"{local.lower()}@{domain}"


def _renormalise(bind: Any) -> None:
    from gateway.addresses import normalise

    meta = sa.MetaData()
    emails = sa.Table("emails", meta, sa.Column("id"), sa.Column("org_id"), sa.Column("from_address"),
                      sa.Column("to_addresses", sa.JSON), sa.Column("cc_addresses", sa.JSON))
    query = sa.select(emails.c.id, emails.c.org_id, emails.c.from_address, emails.c.to_addresses,
                      emails.c.cc_addresses)

    def addresses(row: Any) -> Iterator[str]:
        yield row.from_address or ""
        for value in (row.to_addresses or []) + (row.cc_addresses or []):
            if isinstance(value, str):
                yield value

    # What each stored (IDNA 2003) spelling now is, from the spellings in the mail.
    spellings: dict[tuple[str, str], set[str]] = defaultdict(set)
    for rows in _batches(bind, query, emails.c.id):
        for row in rows:
            for address in addresses(row):
                if address and not address.isascii():
                    old, new = _old_normalise(address), normalise(address)
                    if old != new:
                        spellings[(row.org_id, old)].add(new)
    if spellings:  # an ASCII spelling of an affected address: it was merged
        for rows in _batches(bind, query, emails.c.id):
            for row in rows:
                for address in addresses(row):
                    if address.isascii() and (row.org_id, address.lower()) in spellings:
                        spellings[(row.org_id, address.lower())].add(address.lower())

    def target(org_id: str, stored: str) -> str | None:
        if not stored.isascii():  # IDNA 2003 refused it and kept it as written
            new = normalise(stored)
            return new if new != stored else None
        found = spellings.get((org_id, stored))
        if not found:
            return None
        if len(found) > 1:
            log.warning("0006: %s (organisation %s) stands for %d spellings now told apart (%s); kept",
                        stored, org_id, len(found), ", ".join(sorted(found)))
            return None
        return next(iter(found))

    for name, column, scope in (("leads", "email", "org_id"), ("contacts", "email", "org_id"),
                                ("record_participants", "address", "record_id")):
        table = sa.Table(name, meta, sa.Column("id"), sa.Column("org_id"), sa.Column(column),
                         *([sa.Column(scope)] if scope != "org_id" else []))
        value, owner = table.c[column], table.c[scope]
        renamed = 0
        for rows in _batches(bind, sa.select(table.c.id, table.c.org_id, value, owner), table.c.id):
            for row_id, org_id, stored, owned_by in rows:
                new = target(org_id, stored)
                if new is None:
                    continue
                if bind.execute(sa.select(table.c.id).where(owner == owned_by, value == new)).first() is not None:
                    log.warning("0006: %s %d: %s not renamed to %s (already there)", name, row_id, stored, new)
                    continue
                bind.execute(sa.update(table).where(table.c.id == row_id).values({column: new}))
                renamed += 1
        if renamed:
            log.info("0006: %d %s renamed to their IDNA 2008 spelling", renamed, name)
