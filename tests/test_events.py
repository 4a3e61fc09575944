"""Events (issue 14): the outbox written with each change, in commit order, and the pull
feed GET /v1/events -- over real LMTP/SMTP and HTTP against the running daemon."""

from __future__ import annotations

import smtplib
import time
from typing import Any

import pytest

from tests.helpers import message

PROBLEM = "application/problem+json"
H = "hashimoto@zylker.example"


def feed(gw, token: str, **params: Any) -> dict[str, Any]:
    with gw.api(token) as api:
        r = api.get("/events", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def wait_events(gw, token: str, count: int, timeout: float = 15.0, **params: Any) -> list[dict[str, Any]]:
    """The feed once it holds ``count`` events (the outbox sequences right after a commit)."""
    deadline = time.monotonic() + timeout
    while True:
        items = feed(gw, token, limit=500, **params)["items"]
        if len(items) >= count or time.monotonic() > deadline:
            return items
        time.sleep(0.05)


def test_dropbox_filing_tells_lead_created_then_email_filed(gw):
    token = gw.token(scope="read")
    data = message(to="Charles <charless@zillum.com>", attachments=[("q.pdf", "application/pdf", b"%PDF-1")])
    assert gw.lmtp(H, [gw.dropbox(H)], data).codes == [250]
    items = wait_events(gw, token, 2)
    assert [e["type"] for e in items] == ["lead.created", "email.filed"]
    lead, filed = items
    ex = gw.export()
    (stored_lead,), (stored_email,) = ex["leads"], ex["emails"]
    with gw.api(token) as api:
        assert lead["data"] == api.get(f"/leads/{stored_lead['id']}").json()
        shown = api.get(f"/emails/{stored_email['id']}").json()
    del shown["text_body"], shown["html_body"], shown["new_text"]
    assert filed["data"]["email"] == shown  # the API's representation minus bodies
    assert filed["data"]["decision"]["people"][0]["action"] == "created"
    assert filed["data"]["email"]["attachments"] == [{"index": 0, "filename": "q.pdf",
                                                     "content_type": "application/pdf", "size": 6}]
    assert lead["id"].startswith("evt_zylker_") and lead["timestamp"].endswith("Z")
    assert set(lead) == {"id", "type", "timestamp", "data"}


def test_alias_new_record_reply_reopen_and_api_move(gw):
    token = gw.token(scope="write", name="crm-sync")
    customer = "charles@zillum.com"
    first = message(frm=f"Charles <{customer}>", to="service@in.zylker.example", subject="Broken",
                    message_id="<first@zillum.com>")
    assert gw.lmtp(customer, ["service@in.zylker.example"], first).codes == [250]
    items = wait_events(gw, token, 3)
    assert [e["type"] for e in items] == ["contact.created", "record.created", "email.filed"]
    record = items[1]["data"]["record"]
    with gw.api(token) as api:
        shown = api.get(f"/records/{record['id']}").json()
        assert {k: shown[k] for k in ("id", "pipeline", "stage", "title", "token", "owner", "tags")} \
            == {k: record[k] for k in ("id", "pipeline", "stage", "title", "token", "owner", "tags")}
        assert items[0]["data"] == api.get(f"/contacts/{record['contact_id']}").json()
        r = api.patch(f"/records/{record['id']}", json={"stage": "Closed"})
        assert r.status_code == 200, r.text
    reply = message(frm=f"Charles <{customer}>", to="service@in.zylker.example", subject="Re: Broken",
                    message_id="<second@zillum.com>", headers={"In-Reply-To": "<first@zillum.com>"})
    assert gw.lmtp(customer, ["service@in.zylker.example"], reply).codes == [250]
    items = wait_events(gw, token, 6)
    assert [e["type"] for e in items[3:]] == ["record.stage_changed", "record.stage_changed", "email.filed"]
    moved, reopened = items[3]["data"], items[4]["data"]
    assert (moved["from"], moved["to"], moved["reason"], moved["actor"]) == ("Open", "Closed", "api", "crm-sync")
    assert (reopened["from"], reopened["to"], reopened["reason"]) == ("Closed", "Reopened", "reply")
    assert reopened["email_id"] == items[5]["data"]["email"]["id"]
    # Ids in feed order; after= continues after one.
    seqs = [int(e["id"].rsplit("_", 1)[1]) for e in items]
    assert seqs == sorted(seqs) == list(range(seqs[0], seqs[0] + 6))
    page = feed(gw, token, after=items[2]["id"], limit=2)
    assert [e["id"] for e in page["items"]] == [items[3]["id"], items[4]["id"]]
    assert page["next_after"] == items[4]["id"]
    assert feed(gw, token, after=items[5]["id"]) == {"items": [], "next_after": items[5]["id"]}
    only = feed(gw, token, types="record.created,contact.created")["items"]
    assert [e["type"] for e in only] == ["contact.created", "record.created"]


def test_retry_and_dropped_mail_make_no_event_and_other_organisations_see_none(gw):
    zylker, lumen = gw.token(scope="read"), gw.token("lumen", scope="read")
    data = message(message_id="<once@zylker.example>")
    assert gw.lmtp(H, [gw.dropbox(H)], data).codes == [250]
    assert gw.lmtp(H, [gw.dropbox(H)], data).codes == [250]  # the MTA's retry: a duplicate
    # An auto-reply outside any thread is dropped: no event.
    auto = message(frm="robot@zillum.com", to="service@in.zylker.example", headers={"Auto-Submitted": "auto-replied"})
    assert gw.lmtp("robot@zillum.com", ["service@in.zylker.example"], auto).codes == [250]
    assert [e["type"] for e in wait_events(gw, zylker, 2)] == ["lead.created", "email.filed"]
    time.sleep(0.5)
    assert len(feed(gw, zylker)["items"]) == 2
    assert feed(gw, lumen) == {"items": [], "next_after": None}
    # Another organisation's event id is not an id of this one.
    first = feed(gw, zylker)["items"][0]["id"]
    with gw.api(lumen) as api:
        r = api.get("/events", params={"after": first})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM


def test_rolled_back_filing_writes_no_event(faulty):
    from gateway.routing import DropboxRoute

    gw, faults = faulty
    token = gw.token(scope="read")
    with faults.failing(DropboxRoute, after=True):
        assert gw.lmtp(H, [gw.dropbox(H)], message()).codes == [451]
    time.sleep(0.5)
    assert feed(gw, token)["items"] == [] and gw.count("events") == 0 and gw.count("leads") == 0
    # The MTA's retry files it, with its events.
    assert gw.lmtp(H, [gw.dropbox(H)], message()).codes == [250]
    assert [e["type"] for e in wait_events(gw, token, 2)] == ["lead.created", "email.filed"]


@pytest.mark.parametrize("params", [{"after": "evt_zylker_x"}, {"after": "bogus"}, {"types": "email.filed,nope"},
                                    {"limit": 0}, {"limit": 501}])
def test_bad_feed_queries_are_422(gw, params):
    with gw.api(gw.token(scope="read")) as api:
        r = api.get("/events", params=params)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text


def test_api_and_imports_tell_people_created_once(gw, tmp_path):
    token = gw.token()
    with gw.api(token) as api:
        ann = api.post("/contacts", json={"email": "ann@example.com", "first_name": "Ann", "owner": H}).json()
        assert api.post("/contacts", json={"email": "ann@example.com", "first_name": "Anne"}).status_code == 200
        body = b'{"email": "p1@example.com"}\n{"email": "p2@example.com", "owner": "' + H.encode() + b'"}\nnot json\n'
        r = api.post("/leads/import", content=body, headers={"Content-Type": "application/x-ndjson"})
        assert r.json()["created"] == 2, r.text
        leads = {p["email"]: p for p in api.get("/leads").json()["items"]}
    items = wait_events(gw, token, 3)
    assert [e["type"] for e in items] == ["contact.created", "lead.created", "lead.created"]
    assert items[0]["data"]["id"] == ann["id"] and items[0]["data"]["first_name"] == "Ann"  # as created
    assert [e["data"] for e in items[1:]] == [leads["p1@example.com"], leads["p2@example.com"]]
    # The command line (another process): the daemon picks its events up by polling.
    csv = tmp_path / "people.csv"
    csv.write_text("email,first_name\nq1@example.com,Q\np1@example.com,P\n")
    gw.cli("import", "leads", str(csv), "--org", "zylker")
    items = wait_events(gw, token, 4)
    assert [(e["type"], e["data"]["email"]) for e in items[3:]] == [("lead.created", "q1@example.com")]
    gw.cli("import", "leads", str(csv), "--org", "zylker", "--dry-run")
    time.sleep(1.5)
    assert len(feed(gw, token)["items"]) == 4


def test_outbound_relay_failure_and_quota_exhausted(gwr, sink):
    zylker, lumen = gwr.token(scope="read"), gwr.token("lumen", scope="read")
    k = "kitazawa@zylker.example"
    tx = gwr.submit(message(frm=f"Hanako <{k}>", to="charles@zillum.com"), ["charles@zillum.com"], mail_from=k)
    assert tx.codes == [250]
    (filed,) = wait_events(gwr, zylker, 1)
    assert filed["type"] == "email.filed"
    email = filed["data"]["email"]
    assert (email["direction"], email["source"], email["filed_by"]) == ("outbound", "outbound", k)
    assert filed["data"]["decision"]["login"] == "crm@zylker.example"
    sink.mode = "permfail"
    tx = gwr.submit(message(frm=f"Hanako <{k}>", to="charles@zillum.com", subject="Again"), ["charles@zillum.com"],
                    mail_from=k)
    assert tx.codes == [554]
    items = wait_events(gwr, zylker, 2)
    failed = items[1]
    assert failed["type"] == "relay.failed"
    assert failed["data"]["recipients"] == ["charles@zillum.com"] and failed["data"]["mail_from"] == k
    assert "5.7.1" in failed["data"]["error"] or "554" in failed["data"]["error"]
    sink.mode = "accept"
    # lumen: 50 individual mails a day; two refusals make one event.
    with smtplib.SMTP("127.0.0.1", gwr.submission_port, timeout=30) as client:
        client.ehlo()
        client.login("crm@lumen.example", "demo-only")
        assert client.mail("owner@lumen.example")[0] == 250
        codes = [client.rcpt(f"r{i}@customer.example")[0] for i in range(52)]
        assert codes[50:] == [451, 451]
        client.rset()
    (exhausted,) = wait_events(gwr, lumen, 1)
    assert exhausted["type"] == "quota.exhausted"
    assert (exhausted["data"]["class"], exhausted["data"]["limit"]) == ("individual", 50)
    assert exhausted["data"]["resets_at"].endswith("T23:00:00Z") or exhausted["data"]["resets_at"].endswith("T22:00:00Z")
    time.sleep(0.5)
    assert len(feed(gwr, lumen)["items"]) == 1


def test_quarantine_tells_message_quarantined(faulty):
    from gateway.routing import DropboxRoute

    gw, faults = faulty
    token = gw.token(scope="read")
    data = message(message_id="<poison@zylker.example>", to="p@customer.example")
    with faults.failing(DropboxRoute):
        codes = [gw.lmtp(H, [gw.dropbox(H)], data).codes[0] for _ in range(5)]
    assert codes == [451] * 4 + [250]
    (kept,) = wait_events(gw, token, 1)
    assert kept["type"] == "message.quarantined"
    assert (kept["data"]["route"], kept["data"]["recipient"], kept["data"]["attempts"]) == ("dropbox", H, 5)
    assert kept["data"]["message_id"] == "poison@zylker.example" and "boom" in kept["data"]["error"]


def test_example_consumer_reads_the_pull_feed(gw):
    import subprocess
    import sys
    from pathlib import Path

    token = gw.token(scope="read")
    assert gw.lmtp(H, [gw.dropbox(H)], message(subject="Hello feed")).codes == [250]
    items = wait_events(gw, token, 2)
    example = Path(__file__).resolve().parents[1] / "examples" / "webhook_consumer.py"
    out = subprocess.run([sys.executable, str(example), "pull", "--token", token,
                          "--url", f"http://127.0.0.1:{gw.api_port}/v1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [[e["id"], e["type"]] for e in items]
    assert "'Hello feed'" in lines[1] and "charless@zillum.com" in lines[0]
    # --after the last one: nothing more.
    out = subprocess.run([sys.executable, str(example), "pull", "--token", token, "--after", items[-1]["id"],
                          "--url", f"http://127.0.0.1:{gw.api_port}/v1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "", out.stderr


def test_events_past_the_retention_are_pruned_by_the_daemon(config_dir, database_url):
    """The daemon deletes events older than [events] retention_days (at start, then
    hourly), counted in gateway_events_pruned_total; newer ones stay in the feed."""
    from datetime import datetime, timedelta, timezone

    import sqlalchemy as sa

    from gateway import metrics
    from gateway.store import db
    from tests.conftest import RunningGateway

    gw = RunningGateway(config_dir, database_url).start()
    try:
        token = gw.token(scope="read")
        assert gw.lmtp(H, [gw.dropbox(H)], message(subject="Old")).codes == [250]
        old = wait_events(gw, token, 2)
    finally:
        gw.stop()
    engine = db.make_engine(database_url)
    try:
        with engine.begin() as conn:  # 31 days ago: past the shipped 30
            conn.execute(sa.text("UPDATE events SET created_at = :at"),
                         {"at": datetime.now(timezone.utc) - timedelta(days=31)})
    finally:
        engine.dispose()
    before = metrics.events_pruned._value.get()
    gw = RunningGateway(config_dir, database_url).start()
    try:
        assert gw.lmtp(H, [gw.dropbox(H)], message(subject="New", to="n@customer.example")).codes == [250]
        items = wait_events(gw, token, 2)
        deadline = time.monotonic() + 10
        while gw.count("events") > 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.count("events") == 2 and metrics.events_pruned._value.get() == before + 2
        items = feed(gw, token)["items"]
        assert [e["type"] for e in items] == ["lead.created", "email.filed"]
        assert items[1]["data"]["email"]["subject"] == "New"
        assert {e["id"] for e in items}.isdisjoint(e["id"] for e in old)  # ids are never handed out again
    finally:
        gw.stop()
