"""BCC dropbox filing: one test per rule of SPEC section 2, over real LMTP/SMTP."""

from __future__ import annotations

import re
import threading

import pytest
import vobject

from tests.helpers import edit_config, message

H = "hashimoto@zylker.example"
K = "kitazawa@zylker.example"


def people(export, kind):
    return {p["email"]: p for p in export[kind]}


def test_rule_2_1_roles_with_permission_get_an_address(gw):
    assert gw.dropbox(H).startswith("bcc-")
    assert gw.dropbox(K).startswith("bcc-")
    proc = gw.cli("dropbox", "address", "suzuki@zylker.example", check=False)
    assert proc.returncode == 1
    assert b"lacks the permission" in proc.stderr


def test_rule_2_1_permission_taken_away_stops_the_address(gw):
    box = gw.dropbox(H)
    rules = gw.config_dir / "rules" / "zylker.toml"
    edit_config(rules, "standard = { dropbox = true }", "standard = { dropbox = false }")
    gw.restart()
    tx = gw.lmtp(H, [box], message())
    assert tx.rcpt_codes == [550]
    assert tx.rcpts[0][1].startswith(b"5.1.1")  # same answer as unknown: reveals nothing


def test_rule_2_2_address_is_unguessable_and_regenerates(gw):
    old = gw.dropbox(H)
    token = old.split("@")[0][len("bcc-"):]
    assert re.fullmatch(r"[a-z2-7]{32}", token)  # 160 random bits in base32
    assert old.endswith("@in.zylker.example")
    new = gw.cli("dropbox", "regenerate", H).stdout.decode().strip()
    assert new != old and new.startswith("bcc-")
    # The running daemon refuses the old address at once and takes the new one.
    tx = gw.lmtp(H, [old, new], message())
    assert tx.rcpt_codes == [550, 250]
    assert tx.codes == [250]
    assert gw.cli("dropbox", "address", H).stdout.decode().strip() == new
    # JSON for scripts.
    out = gw.cli("dropbox", "address", H, "--json").stdout
    import json

    assert json.loads(out) == {"user": H, "org": "zylker", "address": new}


def test_rule_2_3_vcard(gw):
    box = gw.dropbox(H)
    card = vobject.readOne(gw.cli("dropbox", "vcard", H).stdout.decode())
    assert card.email.value == box
    assert "hashimoto@zylker.example" in card.fn.value


def test_rule_2_4_only_registered_senders_are_filed(gw):
    box = gw.dropbox(H)
    tx = gw.lmtp(H, [box], message(frm="Mallory <mallory@evil.example>"))
    assert tx.codes == [550] and tx.data[0][1].startswith(b"5.7.1")
    assert gw.count("emails") == 0 and gw.count("leads") == 0 and gw.count("deliveries") == 0
    # The second registered address works, whatever the envelope says.
    tx = gw.lmtp("bounce@mailer.example", [box], message(frm="H. Hashimoto <h.hashimoto@zylker.example>"))
    assert tx.codes == [250]
    # kitazawa's second sender is support@
    box_k = gw.dropbox(K)
    assert gw.lmtp(K, [box_k], message(frm="support@zylker.example")).codes == [250]
    assert gw.lmtp(K, [box_k], message(frm=H)).codes == [550]


def test_rule_2_5_contacts_then_leads_creates_a_lead(gw):
    box = gw.dropbox(H)
    assert gw.lmtp(H, [box], message(to="new@customer.example")).codes == [250]
    ex = gw.export()
    assert list(people(ex, "leads")) == ["new@customer.example"]
    assert ex["contacts"] == []


def test_rule_2_5_contacts_only_creates_a_contact(gw):
    box = gw.dropbox(K)
    assert gw.lmtp(K, [box], message(frm=K, to="new@customer.example")).codes == [250]
    ex = gw.export()
    assert list(people(ex, "contacts")) == ["new@customer.example"]
    assert ex["leads"] == []
    assert people(ex, "contacts")["new@customer.example"]["owner"] == K


def test_rule_2_5_search_order_prefers_contacts_then_leads(gw):
    box_h, box_k = gw.dropbox(H), gw.dropbox(K)
    # kitazawa (contacts only) creates a contact for a@; hashimoto creates a lead for b@.
    assert gw.lmtp(K, [box_k], message(frm=K, to="a@customer.example")).codes == [250]
    assert gw.lmtp(H, [box_h], message(to="b@customer.example")).codes == [250]
    # hashimoto writes to both and to c@: a@ matches the contact, b@ the lead, c@ is new.
    assert gw.lmtp(H, [box_h], message(to="a@customer.example, b@customer.example",
                                       cc="c@customer.example")).codes == [250]
    ex = gw.export()
    contacts, leads = people(ex, "contacts"), people(ex, "leads")
    assert set(contacts) == {"a@customer.example"}
    assert set(leads) == {"b@customer.example", "c@customer.example"}
    last = ex["emails"][-1]
    assert sorted((link["kind"], link["id"]) for link in last["links"]) == sorted([
        ("contact", contacts["a@customer.example"]["id"]),
        ("lead", leads["b@customer.example"]["id"]),
        ("lead", leads["c@customer.example"]["id"]),
    ])
    # kitazawa searches contacts only: b@ (a lead) is not matched, a contact is made.
    assert gw.lmtp(K, [box_k], message(frm=K, to="b@customer.example")).codes == [250]
    assert "b@customer.example" in people(gw.export(), "contacts")


def test_rule_2_5_contacts_then_leads_can_create_a_contact(gw):
    rules = gw.config_dir / "rules" / "zylker.toml"
    edit_config(rules, 'create = "lead"', 'create = "contact"')
    gw.restart()
    assert gw.lmtp(H, [gw.dropbox(H)], message(to="x@customer.example")).codes == [250]
    ex = gw.export()
    assert list(people(ex, "contacts")) == ["x@customer.example"] and ex["leads"] == []


def test_rule_2_6_customers_exclude_own_people_domains_and_gateway(gw):
    box_h, box_k = gw.dropbox(H), gw.dropbox(K)
    to = ", ".join([
        "Customer <Customer@Example.COM>",
        "kitazawa@zylker.example",          # a user
        "colleague@zylker.example",         # own domain
        "support@zylker.example",           # a user's sender address
        "sales@in.zylker.example",          # a gateway alias
        box_k,                              # another dropbox
        "hashimoto@zylker.example",         # the sender
    ])
    assert gw.lmtp(H, [box_h], message(to=to, cc="h.hashimoto@zylker.example")).codes == [250]
    ex = gw.export()
    assert list(people(ex, "leads")) == ["customer@example.com"]  # normalised
    assert ex["contacts"] == []


def test_rule_2_7_created_record_uses_address_as_last_name(gw):
    assert gw.lmtp(H, [gw.dropbox(H)], message(to="charless@zillum.com")).codes == [250]
    lead = gw.export()["leads"][0]
    assert lead["email"] == "charless@zillum.com" and lead["last_name"] == "charless@zillum.com"
    assert lead["source"] == "dropbox" and lead["owner"] == H


def test_rule_2_8_dropbox_mail_never_makes_records(gw):
    assert gw.lmtp(H, [gw.dropbox(H)], message()).codes == [250]
    assert gw.export()["records"] == []


def test_rule_2_12_filed_mail_is_marked_and_stored_whole(gw):
    data = message(
        to="Charles <charless@zillum.com>", cc="other@zillum.com", subject="Quotation Q-17",
        body="Dear Charles,\nthe quotation.", message_id="<q17@zylker.example>",
        attachments=[("quote.pdf", "application/pdf", b"%PDF-1.4 " + b"0" * 1000)],
    )
    assert gw.lmtp(H, [gw.dropbox(H)], data).codes == [250]
    ex = gw.export()
    (email,) = ex["emails"]
    assert email["source"] == "dropbox" and email["filed_by"] == H and email["direction"] == "inbound"
    assert email["message_id"] == "q17@zylker.example"
    assert email["subject"] == "Quotation Q-17"
    assert email["from"] == H and email["to"] == ["charless@zillum.com"] and email["cc"] == ["other@zillum.com"]
    assert email["date"] is not None
    assert email["attachments"] == [{"filename": "quote.pdf", "content_type": "application/pdf", "size": 1009}]
    assert len(email["links"]) == 2 and {link["kind"] for link in email["links"]} == {"lead"}
    raw = gw.cli("email", "raw", str(email["id"])).stdout
    assert raw == data
    from sqlalchemy import text

    with gw.engine.connect() as conn:
        text_body, html = conn.execute(text("SELECT text_body, html_body FROM emails")).one()
    assert "the quotation." in text_body and html == ""


def test_same_delivery_repeated_files_once(gw):
    box = gw.dropbox(H)
    data = message(message_id="<same@zylker.example>")
    assert gw.lmtp(H, [box], data).codes == [250]
    tx = gw.lmtp(H, [box], data)
    assert tx.codes == [250] and b"Already filed" in tx.data[0][1]
    assert gw.smtp(H, [box], data).codes == [250]
    assert gw.count("emails") == 1 and gw.count("links") == 1


def test_repeat_without_message_id_is_caught_by_content_digest(gw):
    box = gw.dropbox(H)
    data = message(message_id=None)
    assert gw.lmtp(H, [box], data).codes == [250]
    # A retry through another hop adds a Received header: still the same delivery.
    assert gw.lmtp(H, [box], b"Received: from mx2.example by gw; Mon, 23 Nov 2026 10:00:00 +0000\r\n" + data).codes == [250]
    assert gw.count("emails") == 1
    assert gw.lmtp(H, [box], message(message_id=None, body="another text")).codes == [250]
    assert gw.count("emails") == 2


def test_one_message_to_two_routes_is_filed_on_both(gw):
    data = message(frm=H, to="both@customer.example", message_id="<two-routes@zylker.example>")
    rules = gw.config_dir / "rules" / "zylker.toml"
    # kitazawa files mail from hashimoto's address too, for this test.
    edit_config(rules, 'senders = ["kitazawa@zylker.example"', 'senders = ["hashimoto@zylker.example", "kitazawa@zylker.example"')
    gw.restart()
    tx = gw.lmtp(H, [gw.dropbox(H), gw.dropbox(K)], data)
    assert tx.codes == [250, 250]
    ex = gw.export()
    assert len(ex["emails"]) == 2
    assert {e["filed_by"] for e in ex["emails"]} == {H, K}


def test_simultaneous_deliveries_make_one_lead(gw):
    box_h, box_k = gw.dropbox(H), gw.dropbox(K)
    results: list[list[int]] = []

    def send(i: int) -> None:
        box, frm = (box_h, H) if i % 2 else (box_k, K)
        results.append(gw.lmtp(frm, [box], message(frm=frm, to="race@customer.example", subject=f"race {i}")).codes)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [[250]] * 12
    ex = gw.export()
    # hashimoto creates a lead, kitazawa a contact; never two of a kind.  (No lead at
    # all when kitazawa's contact came first: hashimoto searches contacts first.)
    leads = [p["id"] for p in ex["leads"] if p["email"] == "race@customer.example"]
    (contact,) = [p["id"] for p in ex["contacts"] if p["email"] == "race@customer.example"]
    assert len(leads) <= 1
    assert len(ex["emails"]) == 12
    # Every mail is linked to that one lead or that one contact, never to a twin.
    for email in ex["emails"]:
        (link,) = email["links"]
        wanted = {("contact", contact)} | ({("lead", leads[0])} if email["filed_by"] == H and leads else set())
        assert (link["kind"], link["id"]) in wanted, (email["filed_by"], link)


def test_simultaneous_duplicates_file_once(gw):
    box = gw.dropbox(H)
    data = message(to="dup@customer.example", message_id="<dup-race@zylker.example>")
    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(gw.lmtp(H, [box], data).codes)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [[250]] * 8
    assert gw.count("emails") == 1 and gw.count("leads") == 1


def test_tenants_never_share_leads(gw):
    assert gw.lmtp(H, [gw.dropbox(H)], message(to="shared@customer.example")).codes == [250]
    owner = "owner@lumen.example"
    assert gw.lmtp(owner, [gw.dropbox(owner)], message(frm=owner, to="shared@customer.example")).codes == [250]
    zylker, lumen = gw.export("zylker"), gw.export("lumen")
    assert [p["org"] for p in zylker["leads"]] == ["zylker"]
    assert [p["org"] for p in lumen["leads"]] == ["lumen"]
    assert zylker["leads"][0]["id"] != lumen["leads"][0]["id"]
    assert all(e["org"] == "lumen" for e in lumen["emails"]) and len(lumen["emails"]) == 1


def test_a_token_only_works_in_its_own_organisation(gw):
    box = gw.dropbox(H)
    token = box.split("@")[0]
    tx = gw.lmtp(H, [f"{token}@in.lumen.example"], message())
    assert tx.rcpt_codes == [550]


@pytest.mark.parametrize("listener", ["smtp", "lmtp"])
def test_export_cli_shape(gw, listener):
    send = gw.smtp if listener == "smtp" else gw.lmtp
    assert send(H, [gw.dropbox(H)], message()).codes == [250]
    import json

    doc = json.loads(gw.cli("export").stdout)
    assert set(doc) == {"leads", "contacts", "records", "emails"}
    lead = doc["leads"][0]
    assert {"id", "email", "first_name", "last_name", "owner", "source", "created_at"} <= set(lead)
    email = doc["emails"][0]
    assert {"id", "message_id", "subject", "from", "to", "cc", "date", "direction", "source", "links",
            "attachments"} <= set(email)
    assert json.loads(gw.cli("export", "--org", "lumen").stdout)["emails"] == []
