"""Addresses (issue 11 item 2): display names with @, IDNA 2008 domains, and the
migration that re-normalises stored addresses.  On SQLite and PostgreSQL (the
normalisation itself: tests/unit/test_addresses.py)."""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

from tests.helpers import message

HASHIMOTO = "hashimoto@zylker.example"


def _bcc(gw, to: bytes) -> list[int]:  # type: ignore[no-untyped-def]
    data = message(to="placeholder@example.invalid")
    assert b"To: placeholder@example.invalid" in data
    data = data.replace(b"To: placeholder@example.invalid", b"To: " + to)
    return gw.lmtp(HASHIMOTO, [gw.dropbox(HASHIMOTO)], data).codes


def test_display_name_with_at_sign_gives_three_customers(gw):
    assert _bcc(gw, b"smith@a.example, Mikel@Lindsaar <raasdnil@b.example>, tom@c.example") == [250]
    leads = sorted(lead["email"] for lead in gw.export()["leads"])
    assert leads == ["raasdnil@b.example", "smith@a.example", "tom@c.example"]


def test_unicode_and_punycode_domain_are_one_customer_and_ss_another(gw):
    assert _bcc(gw, "kunde@faß.example".encode()) == [250]
    assert _bcc(gw, b"kunde@xn--fa-hia.example") == [250]
    assert _bcc(gw, b"kunde@fass.example") == [250]
    leads = gw.export()["leads"]
    assert sorted(lead["email"] for lead in leads) == ["kunde@fass.example", "kunde@xn--fa-hia.example"]
    assert gw.count("emails") == 3


def test_migration_renames_addresses_whose_spelling_is_known(config_dir, database_url):
    """Stored before 0006 with IDNA 2003 (faß -> fass): renamed where the mail says
    which spelling it was; an address both spellings were merged into is kept."""
    from alembic import command

    from gateway.store import db, models as m
    from tests.conftest import RunningGateway

    engine = db.make_engine(database_url)
    stamp = datetime(2026, 12, 1, 9, tzinfo=timezone.utc)
    try:
        with engine.connect() as conn:
            command.upgrade(db._alembic_config(conn), "0005")
            conn.commit()
        with engine.begin() as conn:
            conn.execute(sa.insert(m.Organisation.__table__).values(id="zylker", name="Zylker", timezone="UTC",
                                                                     active=True))

            def mail(to: list[str]) -> None:
                conn.execute(sa.insert(m.Email.__table__).values(
                    org_id="zylker", message_id=None, subject="s", from_name="", from_address=HASHIMOTO,
                    to_addresses=to, cc_addresses=[], date=stamp, received_at=stamp, direction="inbound",
                    source="dropbox", text_body="", html_body="", size=1, digest="0" * 64, in_reply_to=[],
                    references=[], kind="message", sort_at=stamp))

            mail(["kunde@faß.example"])  # stored as kunde@fass.example by IDNA 2003
            mail(["info@faß.example", "INFO@fass.example"])  # two mailboxes merged into one row
            for address in ("kunde@fass.example", "info@fass.example", "other@fass.example"):
                conn.execute(sa.insert(m.Lead.__table__).values(
                    org_id="zylker", email=address, first_name="", last_name=address, owner_id=None,
                    source="dropbox", created_at=stamp))
        gw = RunningGateway(config_dir, database_url).start()  # upgrades to head
        try:
            leads = sorted(lead["email"] for lead in gw.export()["leads"])
            assert leads == ["info@fass.example", "kunde@xn--fa-hia.example", "other@fass.example"]
            # the renamed lead is the one new mail to the Unicode spelling finds
            assert _bcc(gw, "kunde@faß.example".encode()) == [250]
            assert len(gw.export()["leads"]) == 3
        finally:
            gw.stop()
    finally:
        engine.dispose()
