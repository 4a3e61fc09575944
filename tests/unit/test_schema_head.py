"""The revision commands compare the database's with (gateway/store/db.py
HEAD_REVISION, read without alembic) is alembic's own head of our migrations."""

from gateway.store import db


def test_head_revision_constant_is_the_newest_migration() -> None:
    assert db.HEAD_REVISION == db.head_revision()
