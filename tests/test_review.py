"""Trust and review (issue 16, first part): the dropbox's authenticated-sender
requirement read from the Authentication-Results of the organisation's own MTA or
from our own DKIM check, and the review queue it holds mail in -- through real LMTP,
the CLI and the database."""

from __future__ import annotations

import json

import dkim
import pytest

from gateway import metrics, signing
from gateway.store import review as store_review
from gateway.store.sql import now
from tests.conftest import RunningGateway
from tests.helpers import edit_config, message

H = "hashimoto@zylker.example"
CUSTOMER = "charless@zillum.com"
TRUSTED, UNTRUSTED = "mx.zylker.example", "mx.attacker.example"


@pytest.fixture
def trusting(config_dir, database_url):
    """A gateway trusting mx.zylker.example's Authentication-Results, its organisation
    requiring a DKIM or SPF pass for dropbox mail (``on_fail``: refuse, or review)."""
    started = []

    def start(on_fail: str = "refuse", verify_dkim: bool = False) -> RunningGateway:
        edit_config(config_dir / "gateway.toml", "authserv_ids = []", f'authserv_ids = ["{TRUSTED}"]')
        if verify_dkim:
            edit_config(config_dir / "gateway.toml", "verify_dkim = false", "verify_dkim = true")
        edit_config(config_dir / "rules" / "zylker.toml", 'record_token = "[#{prefix}-{id}]"',
                    f'record_token = "[#{{prefix}}-{{id}}]"\ndropbox_requires = "dkim_or_spf"\n'
                    f'dropbox_on_fail = "{on_fail}"')
        gw = RunningGateway(config_dir, database_url).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def results(authserv_id: str, dkim_result: str = "pass", domain: str = "zylker.example") -> dict[str, str]:
    return {"Authentication-Results": f"{authserv_id}; dkim={dkim_result} header.d={domain} header.s=gw2026;"
                                      f" spf=none smtp.mailfrom={domain}"}


def offer(subject: str = "Our offer", headers: dict[str, str] | None = None, **kw) -> bytes:
    return message(frm=f"Taro Hashimoto <{H}>", to=f"Charles Stone <{CUSTOMER}>", subject=subject,
                   headers=headers or {}, **kw)


def decision_of(gw, email_id: int) -> dict:
    import sqlalchemy as sa

    with gw.engine.connect() as conn:
        value = conn.execute(sa.text("SELECT decision FROM deliveries WHERE email_id = :e"), {"e": email_id}).scalar_one()
    return value if isinstance(value, dict) else json.loads(value)


def test_only_the_own_mtas_authentication_results_count(trusting):
    gw = trusting()
    box = gw.dropbox(H)
    assert gw.lmtp(H, [box], offer(headers=results(TRUSTED))).codes == [250]
    forged = gw.lmtp(H, [box], offer("Forged", headers=results(UNTRUSTED)))
    assert forged.codes == [550] and b"5.7.1" in forged.data[0][1]
    misaligned = gw.lmtp(H, [box], offer("Misaligned", headers=results(TRUSTED, domain="attacker.example")))
    assert misaligned.codes == [550]
    (email,) = gw.export()["emails"]
    assert email["subject"] == "Our offer"
    auth = decision_of(gw, email["id"])["auth"]
    assert (auth["requires"], auth["met"]) == ("dkim_or_spf", True)
    assert auth["results"] == [{"method": "dkim", "result": "pass", "domain": "zylker.example", "source": TRUSTED},
                               {"method": "spf", "result": "none", "domain": "zylker.example", "source": TRUSTED}]
    assert gw.count("review_queue") == 0  # refused, not held


def test_dkim_verified_here_against_a_key_published_through_a_resolver_stub(trusting, tmp_path):
    gw = trusting(verify_dkim=True)
    key = signing.generate_key(tmp_path / "k.pem")
    asked = []

    def resolver(name: bytes, timeout: float = 5) -> bytes | None:
        asked.append(name)
        return signing.txt_record(key).encode() if name == b"gw2026._domainkey.zylker.example." else None

    gw.app.deliveries.dns = resolver
    box = gw.dropbox(H)
    raw = offer()
    signed = dkim.sign(raw, b"gw2026", b"zylker.example", key, include_headers=[b"from", b"subject", b"to"]) + raw
    assert gw.lmtp(H, [box], signed).codes == [250]
    assert asked == [b"gw2026._domainkey.zylker.example."]
    tampered = signed.replace(b"Please find the quotation attached.", b"Please pay into account 666.")
    assert gw.lmtp(H, [box], tampered).codes == [550]
    (email,) = gw.export()["emails"]
    assert decision_of(gw, email["id"])["auth"]["results"] == [
        {"method": "dkim", "result": "pass", "domain": "zylker.example", "source": "dkimpy"}]


def test_held_mail_approved_by_the_cli_is_filed_as_a_direct_delivery_would_be(trusting):
    gw = trusting(on_fail="review")
    box = gw.dropbox(H)
    held_before = metrics.review_held.labels(reason="authentication")._value.get()
    held = offer("Held offer", message_id="<held-1@zylker.example>")
    tx = gw.lmtp(H, [box], held)
    assert tx.codes == [250] and b"held for review" in tx.data[0][1]
    assert gw.export()["emails"] == [] and gw.export()["leads"] == []
    assert metrics.review_held.labels(reason="authentication")._value.get() == held_before + 1
    (row,) = json.loads(gw.cli("review", "list", "--json").stdout)
    assert (row["status"], row["recipient"], row["sender"], row["subject"], row["reason"]) == (
        "pending", H, H, "Held offer", "authentication")
    assert "no dkim or spf pass aligned with zylker.example" in row["evidence"]
    shown = gw.cli("review", "show", str(row["id"])).stdout.decode()
    assert "for authentication: no dkim or spf pass" in shown and "Please find the quotation attached." in shown
    # The same delivery again is a repeat: held once.
    assert gw.lmtp(H, [box], held).codes == [250]
    assert gw.count("review_queue") == 1

    done = json.loads(gw.cli("review", "approve", str(row["id"]), "--json").stdout)
    assert (done["status"], done["result"]) == ("approved", "filed")
    # A direct delivery of the same mail (authenticated, its own Message-ID) for comparison.
    direct = offer("Held offer", message_id="<direct-1@zylker.example>", headers=results(TRUSTED))
    assert gw.lmtp(H, [box], direct).codes == [250]
    exported = gw.export()
    approved, filed = exported["emails"]
    assert approved["id"] == done["email_id"]
    same = ("subject", "from", "to", "cc", "direction", "source", "kind", "filed_by", "visibility", "links",
            "new_text", "attachments")
    assert {k: approved[k] for k in same} == {k: filed[k] for k in same}
    assert [lead["email"] for lead in exported["leads"]] == [CUSTOMER]
    # Approving again changes nothing; the same delivery again is still a repeat.
    again = json.loads(gw.cli("review", "approve", str(row["id"]), "--json").stdout)
    assert (again["email_id"], again["result"]) == (done["email_id"], "approved before")
    assert gw.lmtp(H, [box], held).codes == [250]
    assert gw.count("emails") == 2
    assert json.loads(gw.cli("review", "list", "--json").stdout) == []  # nothing pending
    (decided,) = json.loads(gw.cli("review", "list", "--all", "--json").stdout)
    assert decided["status"] == "approved" and decided["email_id"] == done["email_id"]


def test_rejected_mail_stays_unfiled_and_is_pruned_after_the_retention(trusting):
    gw = trusting(on_fail="review")
    box = gw.dropbox(H)
    held = offer("Phishing", message_id="<phish-1@zylker.example>")
    assert gw.lmtp(H, [box], held).codes == [250]
    (row,) = json.loads(gw.cli("review", "list", "--json").stdout)
    done = json.loads(gw.cli("review", "reject", str(row["id"]), "--reason", "not from Taro", "--json").stdout)
    assert done["status"] == "rejected"
    refused = gw.cli("review", "approve", str(row["id"]), check=False)
    assert refused.returncode == 1 and b"was rejected" in refused.stderr
    assert gw.lmtp(H, [box], held).codes == [250]  # a repeat: not held again
    assert gw.count("emails") == 0 and gw.count("review_queue") == 1
    (kept,) = json.loads(gw.cli("review", "list", "--all", "--json").stdout)
    assert (kept["status"], kept["note"]) == ("rejected", "not from Taro")
    from datetime import timedelta

    assert gw.app.database.writing(store_review.prune, now() - timedelta(days=1)) == 0  # decided just now: kept
    assert gw.app.database.writing(store_review.prune, now() + timedelta(seconds=1)) == 1
    assert gw.count("review_queue") == 0


def test_explain_shows_the_results_and_the_hold(trusting, tmp_path):
    gw = trusting(on_fail="review")
    box = gw.dropbox(H)
    eml = tmp_path / "offer.eml"
    eml.write_bytes(offer(headers=results(TRUSTED, dkim_result="fail")))
    text = gw.cli("explain", str(eml), "--from", H, "--rcpt", box).stdout.decode()
    assert f"authentication: dkim=fail (zylker.example) by {TRUSTED}" in text
    assert "dropbox requires dkim_or_spf: NOT met" in text
    assert "held for review (authentication)" in text
    assert "reply: 250 2.0.0 Accepted, held for review" in text
    assert gw.count("review_queue") == 0  # explain wrote nothing


def test_review_through_the_api_list_show_approve_reject(trusting):
    gw = trusting(on_fail="review")
    box = gw.dropbox(H)
    for n in (1, 2):
        assert gw.lmtp(H, [box], offer(f"Offer {n}", message_id=f"<api-{n}@zylker.example>")).codes == [250]
    reader, writer_token, bound = gw.token(scope="read"), gw.token(name="crm"), gw.token(user=H)
    with gw.api(reader) as api:
        listed = api.get("/review").json()
        assert [(h["subject"], h["status"], h["reason"]) for h in listed["items"]] == [
            ("Offer 1", "pending", "authentication"), ("Offer 2", "pending", "authentication")]
        first, second = (h["id"] for h in listed["items"])
        one = api.get(f"/review/{first}").json()
        assert (one["to"], one["text"]) == ([CUSTOMER], "Please find the quotation attached.")
        assert api.post(f"/review/{first}/approve").status_code == 403  # read scope
        assert api.get("/review/999999").status_code == 404
    with gw.api(bound) as api:
        assert api.get("/review").status_code == 403  # the queue needs an organisation token
    with gw.api(gw.token("lumen")) as api:
        assert api.get(f"/review/{first}").status_code == 404  # another organisation's
        assert api.post(f"/review/{first}/approve").status_code == 404
    with gw.api(writer_token) as api:
        approved = api.post(f"/review/{first}/approve").json()
        assert (approved["status"], approved["result"]) == ("approved", "filed")
        again = api.post(f"/review/{first}/approve").json()
        assert (again["email_id"], again["result"]) == (approved["email_id"], "approved before")
        rejected = api.post(f"/review/{second}/reject", json={"reason": "spoofed"}).json()
        assert (rejected["status"], rejected["email_id"]) == ("rejected", None)
        conflict = api.post(f"/review/{second}/approve")
        assert conflict.status_code == 409 and "was rejected by api:crm" in conflict.json()["detail"]
        assert api.get("/review").json()["items"] == []
        decided = api.get("/review", params={"status": "all"}).json()["items"]
        assert [(h["status"], h["decided_by"], h["note"]) for h in decided] == [
            ("approved", "api:crm", None), ("rejected", "api:crm", "spoofed")]
        shown = api.get(f"/emails/{approved['email_id']}").json()
        assert shown["subject"] == "Offer 1"
    assert [e["subject"] for e in gw.export()["emails"]] == ["Offer 1"]


SERVICE = "service@in.zylker.example"


def alias_policy(config_dir, accept_from: str, on_refused: str) -> None:
    edit_config(config_dir / "rules" / "zylker.toml", 'accept_from = "everyone"\non_refused = "reject"',
                f'accept_from = "{accept_from}"\non_refused = "{on_refused}"')


def to_service(frm: str, subject: str, **kw) -> bytes:
    return message(frm=frm, to=SERVICE, subject=subject, **kw)


def test_alias_taking_contacts_only_refuses_strangers_with_the_organisations_text(config_dir, database_url):
    alias_policy(config_dir, "contacts", "reject")
    edit_config(config_dir / "rules" / "zylker.toml", 'record_token = "[#{prefix}-{id}]"',
                'record_token = "[#{prefix}-{id}]"\nalias_refused_text = "Please write to us through the portal"')
    gw = RunningGateway(config_dir, database_url).start()
    try:
        stranger = gw.lmtp("bob@other.example", [SERVICE], to_service("bob@other.example", "Hello"))
        assert stranger.codes == [550] and stranger.data[0][1] == b"5.7.1 Please write to us through the portal"
        assert gw.count("records") == 0 and gw.count("contacts") == 0
        with gw.api(gw.token()) as api:
            assert api.post("/contacts", json={"email": "known@customer.example"}).status_code == 201
        first = to_service("known@customer.example", "Printer", cc="Amy <amy@customer.example>",
                           message_id="<p-1@customer.example>")
        assert gw.lmtp("known@customer.example", [SERVICE], first).codes == [250]
        reply = to_service("amy@customer.example", "Re: Printer", headers={"In-Reply-To": "<p-1@customer.example>"})
        assert gw.lmtp("amy@customer.example", [SERVICE], reply).codes == [250]  # a participant
        intruder = to_service("eve@other.example", "Re: Printer", headers={"In-Reply-To": "<p-1@customer.example>"})
        assert gw.lmtp("eve@other.example", [SERVICE], intruder).codes == [550]
        (record,) = gw.export()["records"]
        assert len(record["email_ids"]) == 2
    finally:
        gw.stop()


def test_alias_taking_replies_only_holds_new_records_and_approval_opens_one(config_dir, database_url):
    alias_policy(config_dir, "participants", "review")
    gw = RunningGateway(config_dir, database_url).start()
    try:
        first = to_service(f"Charles <{CUSTOMER}>", "Printer", message_id="<q-1@zillum.com>")
        tx = gw.lmtp(CUSTOMER, [SERVICE], first)
        assert tx.codes == [250] and b"held for review" in tx.data[0][1]
        (row,) = json.loads(gw.cli("review", "list", "--json").stdout)
        assert (row["route"], row["recipient"], row["reason"]) == ("alias", SERVICE, "sender_policy")
        assert "would open a new record" in row["evidence"]
        assert gw.count("records") == 0
        done = json.loads(gw.cli("review", "approve", str(row["id"]), "--json").stdout)
        assert done["result"] == "filed"
        (record,) = gw.export()["records"]
        assert gw.record(record["id"])["contact"]["email"] == CUSTOMER
        reply = to_service(CUSTOMER, "Re: Printer", headers={"In-Reply-To": "<q-1@zillum.com>"})
        assert gw.lmtp(CUSTOMER, [SERVICE], reply).codes == [250]
        assert len(gw.record(record["id"])["conversation"]) == 2
    finally:
        gw.stop()


def test_spam_verdicts_hold_new_records_and_flag_replies(config_dir, database_url):
    edit_config(config_dir / "gateway.toml", "# spam_score_review = 5.0", "spam_score_review = 5.0")
    gw = RunningGateway(config_dir, database_url).start()
    try:
        flagged = to_service(CUSTOMER, "Cheap pills", headers={"X-Spam-Flag": "YES"})
        assert b"held for review" in gw.lmtp(CUSTOMER, [SERVICE], flagged).data[0][1]
        scored = to_service(CUSTOMER, "Offer", headers={"X-Spamd-Result": "default: False [7.20 / 15.00]"})
        assert b"held for review" in gw.lmtp(CUSTOMER, [SERVICE], scored).data[0][1]
        low = to_service(CUSTOMER, "Printer", message_id="<s-1@zillum.com>", headers={"X-Spam-Score": "2.1"})
        assert gw.lmtp(CUSTOMER, [SERVICE], low).data[0][1].startswith(b"2.0.0 Filed")
        reply = to_service(CUSTOMER, "Re: Printer", headers={"In-Reply-To": "<s-1@zillum.com>", "X-Spam-Score": "6.5"})
        assert gw.lmtp(CUSTOMER, [SERVICE], reply).data[0][1].startswith(b"2.0.0 Filed")
        held = json.loads(gw.cli("review", "list", "--json").stdout)
        assert [(h["subject"], h["reason"]) for h in held] == [("Cheap pills", "spam"), ("Offer", "spam")]
        (record,) = gw.export()["records"]
        decisions = gw.record(record["id"])["decisions"]
        assert "spam" not in decisions[0] and "6.5" in decisions[1]["spam"]
    finally:
        gw.stop()


def test_new_records_per_sender_are_capped_and_exempt_senders_are_not(config_dir, database_url):
    edit_config(config_dir / "gateway.toml", "new_records_per_sender = 20", "new_records_per_sender = 3")
    edit_config(config_dir / "gateway.toml", "new_records_exempt = []", 'new_records_exempt = ["monitor.example"]')
    gw = RunningGateway(config_dir, database_url).start()
    capped = metrics.review_capped._value.get()
    try:
        replies = [gw.lmtp("loop@robot.example", [SERVICE], to_service("loop@robot.example", f"Alert {n}")).data[0][1]
                   for n in range(5)]
        assert [r.startswith(b"2.0.0 Filed") for r in replies] == [True, True, True, False, False]
        for n in range(5):
            assert gw.lmtp("nagios@monitor.example", [SERVICE],
                           to_service("nagios@monitor.example", f"Check {n}")).data[0][1].startswith(b"2.0.0 Filed")
        held = json.loads(gw.cli("review", "list", "--json").stdout)
        assert [(h["sender"], h["reason"]) for h in held] == [("loop@robot.example", "new_record_cap")] * 2
        assert "4 new records from loop@robot.example within 60 minutes (limit 3)" == held[0]["evidence"]
        assert metrics.review_capped._value.get() == capped + 2
        assert gw.count("records") == 8
    finally:
        gw.stop()


def test_the_cap_holds_across_two_processes_on_postgresql(config_dir, database_url, tmp_path):
    if database_url.startswith("sqlite"):
        pytest.skip("several processes share PostgreSQL only")
    import smtplib
    from concurrent.futures import ThreadPoolExecutor

    from tests.helpers import free_port, serve_lmtp

    edit_config(config_dir / "gateway.toml", "new_records_per_sender = 20", "new_records_per_sender = 5")
    ports = [free_port(), free_port()]
    procs = [serve_lmtp(config_dir, database_url, ports[0], tmp_path / "a.log")]
    try:
        procs.append(serve_lmtp(config_dir, database_url, ports[1], tmp_path / "b.log"))

        def send(n: int) -> bytes:
            with smtplib.LMTP("127.0.0.1", ports[n % 2], timeout=60) as client:
                client.sendmail("flood@robot.example", [SERVICE], to_service("flood@robot.example", f"Flood {n}"))
                return b"ok"

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert list(pool.map(send, range(24))) == [b"ok"] * 24
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    import sqlalchemy as sa

    from gateway.store import db

    engine = sa.create_engine(db.normalise_url(database_url))
    try:
        with engine.connect() as conn:
            records = conn.execute(sa.text("SELECT count(*) FROM records")).scalar_one()
            held = conn.execute(sa.text("SELECT count(*) FROM review_queue WHERE reason = 'new_record_cap'")).scalar_one()
    finally:
        engine.dispose()
    assert (records, held) == (5, 19)
