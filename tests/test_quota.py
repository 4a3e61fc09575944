"""Quota in the database: refill at local midnight across DST (time-machine), and
three gateway processes sharing one bucket (arithmetic: tests/unit/test_quota_arithmetic.py)."""

from __future__ import annotations

import os
import smtplib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
import time_machine

from gateway import quota
from tests.helpers import free_port, message, serve_process, wait_port

BERLIN = ZoneInfo("Europe/Berlin")


def org(gw, org_id):
    return gw.app.deliveries.rules.orgs[org_id]


@pytest.mark.parametrize("before, after", [
    # Spring forward: 23-hour day. 23:59 CET on the 28th, then 00:01 CET on the 29th.
    (datetime(2026, 3, 28, 22, 59, tzinfo=timezone.utc), datetime(2026, 3, 28, 23, 1, tzinfo=timezone.utc)),
    # Fall back: the 25-hour day ends at 00:00 CET = 23:00 UTC.
    (datetime(2026, 10, 25, 22, 59, tzinfo=timezone.utc), datetime(2026, 10, 25, 23, 1, tzinfo=timezone.utc)),
])
def test_bucket_refills_at_local_midnight_across_dst(gw, before, after):
    lumen = org(gw, "lumen")
    with time_machine.travel(before, tick=False):
        assert gw.app.database.writing(quota.reserve, lumen, "individual", 50) is not None
        assert gw.app.database.writing(quota.reserve, lumen, "individual", 1) is None
        status = quota.status(gw.engine, lumen)
        assert status["classes"]["individual"]["remaining"] == 0
        assert datetime.fromisoformat(status["next_reset_utc"].replace("Z", "+00:00")) == after.replace(minute=0)
    with time_machine.travel(after, tick=False):
        assert quota.status(gw.engine, lumen)["classes"]["individual"]["used"] == 0
        assert gw.app.database.writing(quota.reserve, lumen, "individual", 50) is not None
    # One minute later on the wall clock would be the same day: still full.
    with time_machine.travel(before, tick=False):
        assert gw.app.database.writing(quota.reserve, lumen, "individual", 1) is None


def test_releases_go_to_the_day_they_were_taken_from(gw):
    lumen = org(gw, "lumen")
    with time_machine.travel(datetime(2026, 5, 1, 21, 59, tzinfo=timezone.utc), tick=False):
        taken = gw.app.database.writing(quota.reserve, lumen, "individual", 10)
    with time_machine.travel(datetime(2026, 5, 1, 22, 1, tzinfo=timezone.utc), tick=False):
        assert gw.app.database.writing(quota.reserve, lumen, "individual", 5) is not None
        gw.app.database.writing(quota.release, taken)
        assert quota.status(gw.engine, lumen)["classes"]["individual"]["used"] == 5


def _submit_one(port: int, i: int) -> int:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.ehlo()
            client.login("crm@lumen.example", "demo-only")
            client.mail("owner@lumen.example")
            code, _ = client.rcpt(f"c{i}@customer.example")
            if code != 250:
                client.rset()
                return code
            code, _ = client.data(message(frm="owner@lumen.example", to=f"c{i}@customer.example", subject=f"n{i}"))
            return code
    except (smtplib.SMTPException, OSError):
        return -1


def test_three_processes_never_exceed_the_bucket(config_dir, database_url, sink, tmp_path):
    """Three `gateway serve` processes on one database, a 50-token bucket (lumen, free
    plan, one user), 200 concurrent attempts: exactly 50 relayed."""
    procs, ports = [], []
    try:
        for n in range(3):
            port = free_port()
            env = {**os.environ, "GATEWAY_DATABASE_URL": database_url,
                   "GATEWAY_LMTP_LISTEN": "off", "GATEWAY_SMTP_LISTEN": "off", "GATEWAY_METRICS_LISTEN": "off",
                   "GATEWAY_API_LISTEN": "off",
                   "GATEWAY_SUBMISSION_LISTEN": f"127.0.0.1:{port}",
                   "GATEWAY_RELAY_URL": f"smtp://127.0.0.1:{sink.port}"}
            procs.append(serve_process(config_dir / "gateway.toml", env, tmp_path / f"serve{n}.log"))
            ports.append(port)
            if n == 0:
                wait_port(port, procs[0], tmp_path / "serve0.log")  # the first one creates the schema
        for n, (port, proc) in enumerate(zip(ports, procs)):
            wait_port(port, proc, tmp_path / f"serve{n}.log")
        with ThreadPoolExecutor(max_workers=24) as pool:
            codes = list(pool.map(lambda i: _submit_one(ports[i % 3], i), range(200)))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
    assert codes.count(250) == 50, codes
    assert set(codes) <= {250, 451}
    assert len(sink.messages) == 50
    import sqlalchemy as sa

    from gateway.store import db

    engine = db.make_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT sum(used) FROM quota_buckets WHERE org_id = 'lumen'")).scalar_one() == 50
    engine.dispose()
