"""The idempotency key (issue 11 item 1): the same delivery again files nothing; a
*different* mail that reuses a Message-ID is filed.  On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

from tests.helpers import message

SERVICE = "service@in.zylker.example"
REUSED = "<0001@localhost.localdomain>"  # what scanners and scripts send, again and again


def _alias_mail(frm: str, subject: str, body: str, date: str = "Tue, 01 Dec 2026 09:00:00 +0000",
                **kw) -> bytes:  # type: ignore[no-untyped-def]
    return message(frm=frm, to=SERVICE, subject=subject, body=body, message_id=REUSED, date=date, **kw)


def test_identical_bytes_twice_file_once(gw):
    data = _alias_mail("Charles <charles@zillum.com>", "Printer", "It is broken.")
    assert gw.lmtp("charles@zillum.com", [SERVICE], data).codes == [250]
    again = gw.lmtp("charles@zillum.com", [SERVICE], data)
    assert again.codes == [250]
    assert (gw.count("emails"), gw.count("records"), gw.count("deliveries")) == (1, 1, 1)


def test_redelivery_with_more_trace_and_filter_headers_files_once(gw):
    data = _alias_mail("Charles <charles@zillum.com>", "Printer", "It is broken.")
    assert gw.lmtp("charles@zillum.com", [SERVICE], data).codes == [250]
    # The same mail after one more hop and a filter: new Received, Authentication-Results,
    # ARC and spam headers in front, as an MTA adds them.
    hop = (b"Received: from mx2.example (mx2.example [192.0.2.7]) by gw.example;\r\n"
           b"\tTue, 01 Dec 2026 09:05:00 +0000\r\n"
           b"Authentication-Results: mx2.example; spf=pass smtp.mailfrom=zillum.com\r\n"
           b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=mx2.example; s=arc; b=AAAA\r\n"
           b"X-Spam-Status: No, score=-0.1\r\n"
           b"Return-Path: <charles@zillum.com>\r\nDelivered-To: service@in.zylker.example\r\n")
    assert gw.lmtp("charles@zillum.com", [SERVICE], hop + data).codes == [250]
    assert (gw.count("emails"), gw.count("records")) == (1, 1)
    # ... and through SMTP instead of LMTP, still the same delivery.
    assert gw.smtp("charles@zillum.com", [SERVICE], hop + data).codes == [250]
    assert gw.count("emails") == 1


def test_two_different_mails_with_one_message_id_to_an_alias_are_two_records(gw):
    first = _alias_mail("Charles <charles@zillum.com>", "Printer", "It is broken.")
    second = _alias_mail("Dana <dana@other.example>", "Invoice question", "Where is my invoice?",
                         date="Tue, 01 Dec 2026 10:30:00 +0000")
    assert gw.lmtp("charles@zillum.com", [SERVICE], first).codes == [250]
    assert gw.lmtp("dana@other.example", [SERVICE], second).codes == [250]
    records = gw.export()["records"]
    assert sorted(r["title"] for r in records) == ["Invoice question", "Printer"]
    assert gw.count("emails") == 2
    # Each one is still idempotent on its own.
    assert gw.lmtp("dana@other.example", [SERVICE], second).codes == [250]
    assert gw.count("emails") == 2


def test_two_different_mails_with_one_message_id_to_a_dropbox_are_two_emails(gw):
    box = gw.dropbox("hashimoto@zylker.example")
    first = message(to="Charles <charless@zillum.com>", subject="Quotation", body="Our quotation.",
                    message_id=REUSED)
    second = message(to="Ann <ann@prospect.example>", subject="Meeting", body="See you Friday.",
                     message_id=REUSED)
    assert gw.lmtp("hashimoto@zylker.example", [box], first).codes == [250]
    assert gw.lmtp("hashimoto@zylker.example", [box], second).codes == [250]
    emails = gw.export()["emails"]
    assert sorted(e["subject"] for e in emails) == ["Meeting", "Quotation"]
    assert sorted(lead["email"] for lead in gw.export()["leads"]) == ["ann@prospect.example", "charless@zillum.com"]


def test_reply_to_a_collided_id_joins_the_record_the_sender_takes_part_in(gw):
    # Dana's mail comes first (the older record), Charles's second (the newer one).
    dana = _alias_mail("Dana <dana@other.example>", "Invoice question", "Where is my invoice?")
    charles = _alias_mail("Charles <charles@zillum.com>", "Printer", "It is broken.",
                          date="Tue, 01 Dec 2026 10:30:00 +0000")
    assert gw.lmtp("dana@other.example", [SERVICE], dana).codes == [250]
    assert gw.lmtp("charles@zillum.com", [SERVICE], charles).codes == [250]
    by_title = {r["title"]: r["id"] for r in gw.export()["records"]}
    reply = message(frm="dana@other.example", to=SERVICE, subject="Re: Invoice question", body="Any news?",
                    headers={"In-Reply-To": REUSED})
    assert gw.lmtp("dana@other.example", [SERVICE], reply).codes == [250]
    assert len(gw.record(by_title["Invoice question"])["conversation"]) == 2
    assert len(gw.record(by_title["Printer"])["conversation"]) == 1


def test_deliveries_filed_before_the_upgrade_stay_repeats(config_dir, database_url):
    """Rows keyed the old way (Message-ID alone) are re-keyed by migration 0006: the
    same mail delivered again after the upgrade is still a repeat."""
    from alembic import command

    from gateway.store import db, models as m
    from tests.conftest import RunningGateway

    data = _alias_mail("Charles <charles@zillum.com>", "Printer", "It is broken.")
    engine = db.make_engine(database_url)
    try:
        with engine.connect() as conn:
            command.upgrade(db._alembic_config(conn), "0005")
            conn.commit()
        stamp = datetime(2026, 12, 1, 9, tzinfo=timezone.utc)
        with engine.begin() as conn:
            conn.execute(sa.insert(m.Organisation.__table__).values(id="zylker", name="Zylker", timezone="UTC",
                                                                     active=True))
            email_id = conn.execute(sa.insert(m.Email.__table__).values(
                org_id="zylker", message_id=REUSED.strip("<>"), subject="Printer", from_name="Charles",
                from_address="charles@zillum.com", to_addresses=[SERVICE], cc_addresses=[], date=stamp,
                received_at=stamp, direction="inbound", source="alias", text_body="It is broken.", html_body="",
                size=len(data), digest="0" * 64, in_reply_to=[], references=[], kind="message", sort_at=stamp,
            ).returning(m.Email.__table__.c.id)).scalar_one()
            conn.execute(sa.insert(m.EmailRaw.__table__).values(email_id=email_id, org_id="zylker", content=data))
            conn.execute(sa.insert(m.Delivery.__table__).values(
                org_id="zylker", route="alias:Service", message_key="mid:" + REUSED.strip("<>"),
                email_id=email_id, decision={}, created_at=stamp))
        gw = RunningGateway(config_dir, database_url).start()  # upgrades to head
        try:
            with engine.connect() as conn:
                (key,) = conn.execute(sa.select(m.Delivery.__table__.c.message_key)).scalars().all()
            assert key.startswith("mid:" + REUSED.strip("<>") + " sha256:")
            assert gw.lmtp("charles@zillum.com", [SERVICE], data).codes == [250]
            assert gw.count("emails") == 1
            other = _alias_mail("Dana <dana@other.example>", "Invoice", "Where is it?")
            assert gw.lmtp("dana@other.example", [SERVICE], other).codes == [250]
            assert gw.count("emails") == 2
        finally:
            gw.stop()
    finally:
        engine.dispose()
