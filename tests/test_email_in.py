"""Email-in pipeline aliases (SPEC section 3): records, threads, reopen, noise, tenants."""

from __future__ import annotations

import json
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest

from tests.helpers import message

SERVICE = "service@in.zylker.example"
SALES = "sales@in.zylker.example"
HELP = "help@in.lumen.example"
CUSTOMER = "charles@zillum.com"


def send(gw, rcpts, *, frm=f"Charles Smith <{CUSTOMER}>", envelope=CUSTOMER, **kw):
    if isinstance(rcpts, str):
        rcpts = [rcpts]
    return gw.lmtp(envelope, rcpts, message(frm=frm, to=rcpts[0], **kw))


def show(gw, record_id):
    return gw.record(record_id)


def records(gw, org=None):
    return gw.export(org)["records"]


def test_new_record_from_alias_mail(gw):
    tx = send(gw, SERVICE, subject="Printer is broken", message_id="<first@zillum.com>")
    assert tx.codes == [250]
    (rec,) = records(gw)
    assert (rec["pipeline"], rec["stage"], rec["title"], rec["owner"], rec["tags"]) == (
        "Service", "Open", "Printer is broken", "kitazawa@zylker.example", ["support"])
    (contact,) = gw.export()["contacts"]
    assert (contact["email"], contact["first_name"], contact["last_name"], contact["source"]) == (
        CUSTOMER, "Charles", "Smith", "alias")
    assert rec["contact_id"] == contact["id"]
    assert len(rec["email_ids"]) == 1
    assert [(h["from"], h["to"], h["cause"]) for h in rec["stage_history"]] == [(None, "Open", "created")]
    shown = json.loads(gw.cli("record", "show", str(rec["id"]), "--json").stdout)
    assert shown == show(gw, rec["id"])
    assert shown["token"] == f"[#S-{rec['id']}]"
    assert shown["conversation"][0]["message_id"] == "first@zillum.com"


def test_sales_alias_owner_and_tags_and_empty_subject(gw):
    assert send(gw, SALES, frm="lead@prospect.example", envelope="lead@prospect.example", subject="").codes == [250]
    (rec,) = records(gw)
    assert (rec["pipeline"], rec["stage"], rec["owner"], rec["tags"]) == (
        "Sales", "Qualification", "hashimoto@zylker.example", ["email-in", "sales"])
    assert rec["title"] == "(no subject)"
    (contact,) = gw.export()["contacts"]
    assert contact["last_name"] == "lead@prospect.example" and contact["first_name"] == ""


def test_existing_contact_is_linked(gw):
    box = gw.dropbox("kitazawa@zylker.example")
    # kitazawa's dropbox (contacts only) creates the contact first.
    assert gw.lmtp("kitazawa@zylker.example", [box], message(frm="kitazawa@zylker.example", to=CUSTOMER)).codes == [250]
    assert send(gw, SERVICE).codes == [250]
    contacts = gw.export()["contacts"]
    assert len(contacts) == 1
    assert records(gw)[0]["contact_id"] == contacts[0]["id"]
    assert show(gw, records(gw)[0]["id"])["decisions"][0]["contact"]["action"] == "matched"


def test_japanese_display_name_is_family_name_first(gw):
    assert send(gw, SERVICE, frm="山田 太郎 <yamada@example.jp>", envelope="yamada@example.jp").codes == [250]
    (contact,) = gw.export()["contacts"]
    assert (contact["last_name"], contact["first_name"]) == ("山田", "太郎")


def _date(minutes: int) -> str:
    return format_datetime(datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc) + timedelta(minutes=minutes))


def test_five_message_thread_ordered_by_date_header(gw):
    # Arrival order: m1, m3, m2, m5, m4; Date order: m1 < m2 < m3 < m4 < m5.
    plan = [("m1", 0, None, None), ("m3", 20, "m2", ["m1", "m2"]), ("m2", 10, "m1", ["m1"]),
            ("m5", 40, "m4", ["m1", "m2", "m3", "m4"]), ("m4", 30, "m3", ["m1", "m2", "m3"])]
    for name, minutes, reply_to, refs in plan:
        headers = {}
        if reply_to:
            headers["In-Reply-To"] = f"<{reply_to}@zillum.com>"
            headers["References"] = " ".join(f"<{r}@zillum.com>" for r in refs)
        data = message(frm=CUSTOMER, to=SERVICE, subject=f"Re: issue ({name})",
                       message_id=f"<{name}@zillum.com>", date=_date(minutes), headers=headers)
        assert gw.lmtp(CUSTOMER, [SERVICE], data).codes == [250]
    recs = records(gw)
    # m3 arrived before m2 existed: it names m1 in References, so it still joins.
    assert len(recs) == 1, [r["title"] for r in recs]
    shown = show(gw, recs[0]["id"])
    assert [c["message_id"] for c in shown["conversation"]] == [f"m{i}@zillum.com" for i in range(1, 6)]
    methods = [d["thread"]["method"] for d in shown["decisions"]]
    assert methods.count("none") == 1 and methods.count("in-reply-to") + methods.count("references") == 4


def test_missing_or_future_date_sorts_by_arrival(gw):
    assert send(gw, SERVICE, subject="start", message_id="<s1@zillum.com>").codes == [250]
    future = (datetime.now(timezone.utc) + timedelta(days=30))
    data = message(frm=CUSTOMER, to=SERVICE, subject="from the future", message_id="<s2@zillum.com>",
                   date=format_datetime(future), headers={"In-Reply-To": "<s1@zillum.com>"})
    assert gw.lmtp(CUSTOMER, [SERVICE], data).codes == [250]
    nodate = message(frm=CUSTOMER, to=SERVICE, subject="no date", message_id="<s3@zillum.com>", date=None,
                     headers={"In-Reply-To": "<s2@zillum.com>"})
    assert gw.lmtp(CUSTOMER, [SERVICE], nodate).codes == [250]
    shown = show(gw, records(gw)[0]["id"])
    assert [c["subject"] for c in shown["conversation"]] == ["start", "from the future", "no date"]
    assert shown["conversation"][1]["date"].startswith(str(future.year))
    assert shown["conversation"][1]["sort_at"] <= shown["conversation"][2]["sort_at"]  # ties: arrival order


def test_mail_outside_every_thread_makes_a_new_record(gw):
    assert send(gw, SERVICE, subject="one", message_id="<o1@zillum.com>").codes == [250]
    assert send(gw, SERVICE, subject="Re: one", headers={"In-Reply-To": "<unknown@zillum.com>"}).codes == [250]
    assert len(records(gw)) == 2


def test_token_threads_headerless_reply_from_participant_only(gw):
    assert send(gw, SERVICE, subject="Login fails", message_id="<t1@zillum.com>").codes == [250]
    rid = records(gw)[0]["id"]
    token = f"[#S-{rid}]"
    # The customer's client dropped In-Reply-To/References but kept the subject token.
    assert send(gw, SERVICE, subject=f"Re: {token} Login fails").codes == [250]
    assert len(records(gw)) == 1
    assert show(gw, rid)["decisions"][-1]["thread"] == {"method": "token", "evidence": token, "record_id": rid}
    # A stranger quoting the token starts a new record instead.
    assert send(gw, SERVICE, frm="stranger@other.example", envelope="stranger@other.example",
                subject=f"Re: {token} Login fails").codes == [250]
    recs = records(gw)
    assert len(recs) == 2
    stranger = show(gw, recs[1]["id"])["decisions"][0]["thread"]
    assert stranger["method"] == "none" and "non-participant" in stranger["token_ignored"]
    # A token of another pipeline (Sales uses D) does not thread into Service.
    assert send(gw, SERVICE, subject=f"Re: [#D-{rid}] Login fails").codes == [250]
    assert len(records(gw)) == 3


def test_reply_to_resolved_record_reopens(gw):
    assert send(gw, SERVICE, subject="Broken", message_id="<r1@zillum.com>").codes == [250]
    rid = records(gw)[0]["id"]
    gw.move(rid, "Resolved")
    assert send(gw, SERVICE, subject="Re: Broken", headers={"In-Reply-To": "<r1@zillum.com>"}).codes == [250]
    rec = records(gw)[0]
    assert rec["stage"] == "Reopened"
    assert [(h["from"], h["to"], h["cause"]) for h in rec["stage_history"]] == [
        (None, "Open", "created"), ("Open", "Resolved", "manual"), ("Resolved", "Reopened", "reply")]
    assert show(gw, rid)["decisions"][-1]["stage_change"] == {"from": "Resolved", "to": "Reopened", "cause": "reply"}
    # A reply to an open record changes nothing.
    assert send(gw, SERVICE, subject="Re: Broken", headers={"In-Reply-To": "<r1@zillum.com>"}).codes == [250]
    assert len(records(gw)[0]["stage_history"]) == 3


def test_no_reopen_where_the_alias_has_it_off(gw):
    assert send(gw, SALES, subject="Deal", message_id="<d1@zillum.com>").codes == [250]
    rid = records(gw)[0]["id"]
    gw.move(rid, "Closed Won")
    assert send(gw, SALES, subject="Re: Deal", headers={"In-Reply-To": "<d1@zillum.com>"}).codes == [250]
    assert records(gw)[0]["stage"] == "Closed Won"
    assert len(records(gw)[0]["email_ids"]) == 2


NOISE = {
    "auto-submitted": {"Auto-Submitted": "auto-replied"},
    "x-autoreply": {"X-Autoreply": "yes"},
    "x-autorespond": {"X-Autorespond": "vacation"},
    "precedence-bulk": {"Precedence": "bulk"},
    "precedence-junk": {"Precedence": "junk"},
    "precedence-list": {"Precedence": "list"},
    "x-auto-response-suppress": {"X-Auto-Response-Suppress": "All"},
}


@pytest.mark.parametrize("name", sorted(NOISE))
def test_auto_reply_to_resolved_record_is_stored_but_never_reopens(gw, name):
    assert send(gw, SERVICE, subject="Ticket", message_id="<n1@zillum.com>").codes == [250]
    rid = records(gw)[0]["id"]
    gw.move(rid, "Resolved")
    tx = send(gw, SERVICE, subject="Out of office", headers={"In-Reply-To": "<n1@zillum.com>", **NOISE[name]})
    assert tx.codes == [250]
    rec = records(gw)[0]
    assert rec["stage"] == "Resolved" and len(rec["email_ids"]) == 2
    assert show(gw, rid)["conversation"][1]["kind"] == "auto_reply"


@pytest.mark.parametrize("name", sorted(NOISE))
def test_auto_reply_outside_a_thread_is_dropped(gw, name):
    tx = send(gw, SERVICE, subject="Out of office", headers=NOISE[name])
    assert tx.codes == [250] and b"Accepted" in tx.data[0][1]
    ex = gw.export()
    assert ex["records"] == [] and ex["contacts"] == [] and ex["emails"] == []


def test_bounces(gw):
    assert send(gw, SERVICE, subject="Ticket", message_id="<b1@zillum.com>").codes == [250]
    # Null reverse-path, in the thread: stored, marked as a bounce.
    tx = gw.lmtp("<>", [SERVICE], message(frm="Mail Delivery System <MAILER-DAEMON@mx.zillum.com>", to=SERVICE,
                                          subject="Undelivered", headers={"In-Reply-To": "<b1@zillum.com>"}))
    assert tx.codes == [250]
    rid = records(gw)[0]["id"]
    assert [c["kind"] for c in show(gw, rid)["conversation"]] == ["message", "bounce"]
    # Outside any thread: dropped, whichever sign gives it away -- each mail below
    # carries one sign only (a postmaster@ or mailer-daemon@ sender is a sign of its own).
    plain = message(frm="reports@mx.example", to=SERVICE, subject="report")
    ctype = b"Content-Type: text/plain; charset=\"utf-8\""
    assert plain.count(ctype) == 1
    report = plain.replace(ctype, b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"x\"")
    for envelope, data in [("", message(frm=CUSTOMER, to=SERVICE, subject="dsn")),
                           ("bounces@mx.example", report),
                           ("mailer-daemon@mx.example", message(frm=CUSTOMER, to=SERVICE, subject="from the daemon")),
                           ("bounces@mx.example", message(frm="MAILER-DAEMON@mx.example", to=SERVICE))]:
        assert gw.lmtp(envelope or "<>", [SERVICE], data).codes == [250]
        assert len(records(gw)) == 1 and len(gw.export()["contacts"]) == 1, (envelope, data[:300])


def test_mail_from_our_own_alias_is_a_loop(gw):
    tx = send(gw, SERVICE, frm=SALES, envelope=SALES, subject="loop")
    assert tx.codes == [250]
    assert records(gw) == [] and gw.export()["contacts"] == []


def test_mixed_envelope_one_reply_each_and_tenants_apart(gw):
    box = gw.dropbox("hashimoto@zylker.example")
    data = message(frm="hashimoto@zylker.example", to=f"{SALES}, {SERVICE}, {HELP}", cc=CUSTOMER,
                   subject="Mixed", message_id="<mixed@zylker.example>")
    tx = gw.lmtp("hashimoto@zylker.example", [box, SALES, SERVICE, HELP, "nobody@in.lumen.example"], data)
    assert tx.rcpt_codes == [250, 250, 250, 250, 550]
    assert tx.codes == [250, 250, 250, 250]
    assert tx.noop[0] == 250
    zylker, lumen = records(gw, "zylker"), records(gw, "lumen")
    assert sorted(r["pipeline"] for r in zylker) == ["Sales", "Service"]
    assert [r["pipeline"] for r in lumen] == ["Support"]
    lumen_contacts = gw.export("lumen")["contacts"]
    assert [c["org"] for c in lumen_contacts] == ["lumen"]
    assert lumen[0]["contact_id"] == lumen_contacts[0]["id"]


def test_in_reply_to_never_crosses_organisations(gw):
    assert send(gw, SERVICE, subject="Zylker thread", message_id="<z1@zillum.com>").codes == [250]
    assert send(gw, HELP, subject="Re: Zylker thread", headers={"In-Reply-To": "<z1@zillum.com>"}).codes == [250]
    assert len(records(gw, "zylker")) == 1 and len(records(gw, "lumen")) == 1
    lumen_rec = records(gw, "lumen")[0]
    assert show(gw, lumen_rec["id"])["decisions"][0]["thread"]["method"] == "none"


def test_repeated_alias_delivery_files_once(gw):
    data = message(frm=CUSTOMER, to=SERVICE, message_id="<again@zillum.com>")
    assert gw.lmtp(CUSTOMER, [SERVICE], data).codes == [250]
    assert gw.lmtp(CUSTOMER, [SERVICE], data).codes == [250]
    assert len(records(gw)) == 1 and gw.count("emails") == 1


def test_alias_removal_keeps_records(gw):
    assert send(gw, SALES, subject="Keep me").codes == [250]
    rules = gw.config_dir / "rules" / "zylker.toml"
    text = rules.read_text()
    start = text.index("[pipelines.alias]\naddress = \"sales@")
    end = text.index("[[pipelines]]", start)
    rules.write_text(text[:start] + text[end:])
    gw.restart()
    tx = send(gw, SALES, subject="After removal")
    assert tx.rcpt_codes == [550] and tx.rcpts[0][1].startswith(b"5.1.1")
    (rec,) = records(gw)
    assert rec["title"] == "Keep me" and rec["pipeline"] == "Sales"


def test_record_stage_command(gw):
    assert send(gw, SERVICE, subject="x").codes == [250]
    rid = str(records(gw)[0]["id"])
    out = json.loads(gw.cli("record", "stage", rid, "In Progress", "--json").stdout)
    assert out == {"id": int(rid), "from": "Open", "to": "In Progress", "changed": True}
    bad = gw.cli("record", "stage", rid, "Nope", check=False)
    assert bad.returncode == 1 and b"not a stage of Service" in bad.stderr
    assert gw.cli("record", "show", "999", check=False).returncode == 1
    text = gw.cli("record", "show", rid).stdout.decode()
    assert "Service" in text and "In Progress" in text and "manual" in text
