"""Statements run on the driver's cursor (gateway/store/prepared.py), on both backends.

On PostgreSQL they go through psycopg's pipeline mode inside a write transaction, with
our own BEGIN and COMMIT (issue 17): a statement nobody reads reports its error only at
the next read or at COMMIT.  Shown here: such an error still fails the transaction and
keeps nothing, statements of both kinds see each other, a rollback keeps nothing and
leaves the connection in ordinary transactions, and the dry run of `gateway explain`
still cannot commit.
"""

from __future__ import annotations

from typing import Iterator

import pytest
import sqlalchemy as sa
import sqlalchemy.exc

from gateway.store import db, emails, events
from gateway.store import models as m
from gateway.store.events import NewEvent

ORG = "acme"


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(m.Organisation.__table__.insert().values(id=ORG, name="Acme", timezone="UTC", active=True))
    yield engine
    engine.dispose()


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def _event(n: int) -> list[NewEvent]:
    return [NewEvent("test.event", {"n": n})]


def test_an_unread_statement_that_fails_fails_the_transaction_and_keeps_nothing(engine: sa.Engine) -> None:
    database = db.Database(engine)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        with database.write() as conn:
            events.append(conn, ORG, _event(1))
            emails.link(conn, ORG, 999_999, "lead", 1)  # no such email: a foreign key violation
    assert _count(engine, "events") == 0
    assert _count(engine, "links") == 0
    with database.write() as conn:  # the pool's connections work on
        events.append(conn, ORG, _event(2))
    assert _count(engine, "events") == 1


def test_statements_on_the_cursor_and_through_sqlalchemy_see_each_other(engine: sa.Engine) -> None:
    database = db.Database(engine)
    table = m.Event.__table__
    with database.write() as conn:
        events.append(conn, ORG, _event(1))
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 1
        events.append(conn, ORG, _event(2))
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 2
    assert _count(engine, "events") == 2


def test_a_rollback_keeps_nothing_and_leaves_ordinary_transactions(engine: sa.Engine) -> None:
    database = db.Database(engine)
    with pytest.raises(RuntimeError):
        with database.write() as conn:
            events.append(conn, ORG, _event(1))
            raise RuntimeError("changed my mind")
    assert _count(engine, "events") == 0
    # Every pooled connection still runs SQLAlchemy's transactions (a driver left in
    # autocommit would keep this insert despite the rollback).
    conns = [engine.connect() for _ in range(3)]
    try:
        for i, conn in enumerate(conns):
            conn.execute(m.Organisation.__table__.insert().values(id=f"tmp{i}", name="t", timezone="UTC"))
            conn.rollback()
    finally:
        for conn in conns:
            conn.close()
    assert _count(engine, "organisations") == 1


def test_the_dry_run_of_explain_cannot_commit_queued_statements(engine: sa.Engine, database_url: str) -> None:
    dry = db.Database(db.make_dry_run_engine(database_url))
    try:
        with dry.rolled_back() as conn:
            events.append(conn, ORG, _event(1))
        with pytest.raises(RuntimeError, match="dry run"):
            with dry.write() as conn:
                events.append(conn, ORG, _event(2))
    finally:
        dry.dispose()
    assert _count(engine, "events") == 0
