"""Fixtures of the unit tests: the shipped demo rules, compiled; a SQLite database at
the newest schema with those rules written to it.  No server is started here."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from gateway.rules.index import RuleIndex
from gateway.rules.loader import load_rules
from gateway.store import db, organisations

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def rules() -> RuleIndex:
    """The demo rules without database ids."""
    return load_rules(REPO / "rules")


@pytest.fixture
def database(tmp_path: Path) -> Iterator[db.Database]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'unit.db'}")
    db.upgrade(engine)
    database = db.Database(engine)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def bound(database: db.Database, rules: RuleIndex) -> RuleIndex:
    """The demo rules with the ids of ``database``."""
    return database.writing(organisations.sync_rules, rules)
