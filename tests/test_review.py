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
