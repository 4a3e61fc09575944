"""Mail understanding (issue 15): forwards filed under the real customer, the new text
apart from quotes and signatures, participants, one thread across dropbox and alias,
meeting invitations -- through real LMTP to the daemon, read back from the database,
the API and `gateway explain`.

The messages of tests/data/understand are written as each client family emits them
(README there)."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from gateway import metrics
from tests.helpers import message

DATA = Path(__file__).parent / "data" / "understand"
H = "hashimoto@zylker.example"
K = "kitazawa@zylker.example"
SERVICE = "service@in.zylker.example"
SALES = "sales@in.zylker.example"
CHARLES, AMY, YAMADA, SATO = "charless@zillum.com", "amy@zillum.com", "yamada@customer.example", "sato@customer.example"
PLACEHOLDER = b"bcc-DROPBOX@in.zylker.example"
# Every original was sent on Monday 30 November 2026, 10:00 in Tokyo.
ORIGINAL_DATE = "2026-11-30T01:00:00Z"
ORIGINAL_NEW_TEXT = "Hello Taro,\n\nCould you send a quote for 40 units of the X200 printer?"
JA_NEW_TEXT = "橋本様\n\nお世話になっております。\nX200 を 40 台お見積もりいただけますでしょうか。\n\nよろしくお願いいたします。\n山田"


def eml(name: str, box: str | None = None) -> bytes:
    raw = (DATA / name).read_bytes()
    return raw.replace(PLACEHOLDER, box.encode()) if box else raw


def decision_of(gw, email_id: int) -> dict:
    with gw.engine.connect() as conn:
        value = conn.execute(sa.text("SELECT decision FROM deliveries WHERE email_id = :e"), {"e": email_id}).scalar_one()
    return value if isinstance(value, dict) else json.loads(value)


def linked_people(exported: dict, email: dict) -> list[str]:
    by_id = {("lead", p["id"]): p["email"] for p in exported["leads"]}
    by_id.update({("contact", p["id"]): p["email"] for p in exported["contacts"]})
    return sorted(by_id[(link["kind"], link["id"])] for link in email["links"] if link["kind"] != "record")


# file, method, original sender, customers, subject, the forwarder's note, new text, Message-ID
FORWARDS = [
    ("forward-gmail.eml", "gmail", CHARLES, [AMY, CHARLES], "Quote request", "Charles asked for a quote, filing it.",
     ORIGINAL_NEW_TEXT, None),
    ("forward-gmail-ja.eml", "gmail", YAMADA, [YAMADA], "見積もりのお願い", "山田様の見積もり依頼です。", JA_NEW_TEXT, None),
    ("forward-outlook.eml", "outlook", CHARLES, [AMY, CHARLES], "Quote request", "Please file this one.",
     ORIGINAL_NEW_TEXT, None),
    ("forward-outlook-ja.eml", "outlook-ja", YAMADA, [SATO, YAMADA], "見積もりのお願い", "ご確認ください。", JA_NEW_TEXT,
     None),
    ("forward-apple.eml", "apple", CHARLES, [AMY, CHARLES], "Quote request", "For the CRM.", ORIGINAL_NEW_TEXT, None),
    ("forward-thunderbird.eml", "thunderbird", CHARLES, [AMY, CHARLES], "Quote request", "Forwarding for the record.",
     ORIGINAL_NEW_TEXT, None),
    ("forward-attached.eml", "attachment", CHARLES, [AMY, CHARLES], "Quote request", "See the attached mail.",
     ORIGINAL_NEW_TEXT, "quote-request-1@zillum.com"),
]


def test_forwards_of_every_client_are_filed_under_the_customer_with_the_original_date(gw):
    box = gw.dropbox(H)
    for name, *_ in FORWARDS:
        assert gw.lmtp(H, [box], eml(name, box)).codes == [250], name
    exported = gw.export()
    emails = exported["emails"]
    assert len(emails) == len(FORWARDS)
    for email, (name, method, sender, customers, subject, note, new_text, message_id) in zip(emails, FORWARDS):
        assert (email["from"], email["subject"], email["date"], email["direction"], email["message_id"]) == (
            sender, subject, ORIGINAL_DATE, "inbound", message_id), name
        assert (email["forwarded_by"], email["forward_note"], email["new_text"]) == (H, note, new_text), name
        assert linked_people(exported, email) == customers, name
        forward = decision_of(gw, email["id"])["forward"]
        assert (forward["method"], forward["filed"], forward["reason"], forward["original_from"],
                forward["original_date"]) == (method, "original", "received", sender, ORIGINAL_DATE), name
    # hashimoto creates leads for customers nobody knows: the customers, never the forwarder.
    assert sorted(lead["email"] for lead in exported["leads"]) == [AMY, CHARLES, SATO, YAMADA]
    # The API shows the forwarder and the note with the email.
    with gw.api(gw.token()) as api:
        shown = api.get(f"/emails/{emails[0]['id']}").json()
        assert (shown["from"]["address"], shown["forwarded_by"], shown["forward_note"], shown["new_text"]) == (
            CHARLES, H, "Charles asked for a quote, filing it.", ORIGINAL_NEW_TEXT)


def test_forward_of_the_users_own_sent_mail_files_like_a_bcc(gw):
    box = gw.dropbox(H)
    raw = (b"From: Taro Hashimoto <hashimoto@zylker.example>\r\nTo: " + box.encode() + b"\r\n"
           b"Subject: Fwd: Your quote\r\nDate: Tue, 1 Dec 2026 09:00:00 +0900\r\nMessage-ID: <own-fwd@zylker.example>\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nfor the CRM\r\n\r\n"
           b"---------- Forwarded message ---------\r\nFrom: Taro Hashimoto <hashimoto@zylker.example>\r\n"
           b"Date: Mon, Nov 30, 2026 at 10:00 AM\r\nSubject: Your quote\r\nTo: Charles Stone <charless@zillum.com>\r\n"
           b"\r\n\r\nDear Charles, the quote is attached.\r\n")
    assert gw.lmtp(H, [box], raw).codes == [250]
    exported = gw.export()
    (email,) = exported["emails"]
    assert (email["from"], email["subject"], email["date"], email["forwarded_by"]) == (
        H, "Your quote", ORIGINAL_DATE, H)
    assert linked_people(exported, email) == [CHARLES]  # the recipient, as a BCC would file it
    forward = decision_of(gw, email["id"])["forward"]
    assert (forward["filed"], forward["reason"]) == ("original", "sent")


def test_forward_without_a_readable_original_is_filed_as_it_came_and_says_why(gw):
    box = gw.dropbox(H)
    before = metrics.parse_anomalies.labels(kind="forward_unreadable")._value.get()
    raw = eml("forward-outlook.eml", box).replace(b"From: Charles Stone <charless@zillum.com>", b"From: Charles Stone")
    assert gw.lmtp(H, [box], raw).codes == [250]
    exported = gw.export()
    (email,) = exported["emails"]
    assert (email["from"], email["subject"], email["forwarded_by"]) == (H, "FW: Quote request", None)
    assert exported["leads"] == []  # nobody guessed at
    forward = decision_of(gw, email["id"])["forward"]
    assert (forward["method"], forward["filed"], forward["reason"]) == (
        "outlook", "forward", "original sender not readable")
    assert metrics.parse_anomalies.labels(kind="forward_unreadable")._value.get() == before + 1


# file, envelope sender, new text
REPLIES = [
    ("reply-gmail.eml", CHARLES, "Thanks, the price works for us. Please go ahead with 40 units."),
    ("reply-gmail-ja.eml", YAMADA, "承知いたしました。40 台で発注いたします。\n\nよろしくお願いいたします。"),
    ("reply-outlook.eml", CHARLES, "We would like 40 units.\n\nCharles Stone\nPurchasing, Zillum"),
    ("reply-outlook-ja.eml", YAMADA, "北沢様\n\n承知しました。来週月曜日に伺います。"),
    ("reply-apple.eml", CHARLES, "Could you add the toner cartridges too?"),
    ("reply-thunderbird.eml", CHARLES, "Delivery to our Osaka office, please."),
    ("reply-html-only.eml", CHARLES, "Confirmed for Thursday.\n\nCharles"),
]


def test_new_text_of_replies_from_every_client(gw):
    for name, sender, _ in REPLIES:
        assert gw.lmtp(sender, [SERVICE], eml(name)).codes == [250], name
    emails = gw.export()["emails"]
    assert [(e["new_text"]) for e in emails] == [new for _, _, new in REPLIES]
    with gw.api(gw.token()) as api:
        one = api.get(f"/emails/{emails[0]['id']}").json()
        assert one["new_text"] == REPLIES[0][2]
        assert "On Mon, Nov 30, 2026 at 10:00 AM Zylker Support" in one["text_body"]  # the full body is kept
        listed = api.get("/emails", params={"include": "bodies"}).json()["items"]
        assert [item["new_text"] for item in listed] == [new for _, _, new in REPLIES]
        # `gateway record show` has it in the conversation
        record_id = next(link["id"] for link in emails[0]["links"] if link["kind"] == "record")
        assert gw.record(record_id)["conversation"][0]["new_text"] == REPLIES[0][2]


def test_cc_colleagues_reply_naming_the_token_joins_the_record_a_strangers_does_not(gw):
    first = message(frm=f"Charles Stone <{CHARLES}>", to=SERVICE, cc=f"Amy Lee <{AMY}>, Hanako <{K}>",
                    subject="Printer broken")
    assert gw.lmtp(CHARLES, [SERVICE], first).codes == [250]
    (record,) = gw.export()["records"]
    assert record["participants"] == [CHARLES, AMY]  # the organisation's own address is not one
    token = f"[#S-{record['id']}]"
    colleague = message(frm=f"Amy Lee <{AMY}>", to=SERVICE, subject=f"Re: Printer broken {token}")
    assert gw.lmtp(AMY, [SERVICE], colleague).codes == [250]
    stranger = message(frm="Bob <bob@other.example>", to=SERVICE, subject=f"Re: Printer broken {token}")
    assert gw.lmtp("bob@other.example", [SERVICE], stranger).codes == [250]
    records = gw.export()["records"]
    assert len(records) == 2  # the stranger's mail started its own
    shown = gw.record(record["id"])
    assert [c["from"] for c in shown["conversation"]] == [CHARLES, AMY]
    assert shown["decisions"][1]["thread"] == {"method": "token", "evidence": token, "record_id": record["id"]}
    assert records[1]["participants"] == ["bob@other.example"]
    with gw.api(gw.token()) as api:
        assert api.get(f"/records/{record['id']}").json()["participants"] == [CHARLES, AMY]


def test_recipients_of_mail_relayed_from_a_record_take_part(gwr, sink):
    first = message(frm=f"Charles Stone <{CHARLES}>", to=SERVICE, subject="Printer broken",
                    message_id="<pb-1@zillum.com>")
    assert gwr.lmtp(CHARLES, [SERVICE], first).codes == [250]
    (record,) = gwr.export()["records"]
    reply = message(frm=K, to=CHARLES, cc="Carol <carol@zillum.com>", subject="Re: Printer broken",
                    message_id=None, headers={"In-Reply-To": "<pb-1@zillum.com>"})
    assert gwr.submit(reply, [CHARLES, "carol@zillum.com"], mail_from=K).codes == [250]
    assert gwr.record(record["id"])["participants"] == [CHARLES, "carol@zillum.com"]
    token = f"[#S-{record['id']}]"
    carol = message(frm="carol@zillum.com", to=SERVICE, subject=f"Re: Printer broken {token}")
    assert gwr.lmtp("carol@zillum.com", [SERVICE], carol).codes == [250]
    assert len(gwr.export()["records"]) == 1
    assert [c["from"] for c in gwr.record(record["id"])["conversation"]][-1] == "carol@zillum.com"


def test_customer_answering_a_bcc_mail_to_the_alias_starts_a_record_with_that_mail(gw):
    box = gw.dropbox(H)
    offer = message(frm=f"Taro Hashimoto <{H}>", to=f"Charles Stone <{CHARLES}>", subject="Our offer",
                    message_id="<offer-1@zylker.example>", headers={"Reply-To": SALES})
    assert gw.lmtp(H, [box], offer).codes == [250]
    answer = message(frm=f"Charles Stone <{CHARLES}>", to=SALES, subject="Re: Our offer",
                     message_id="<answer-1@zillum.com>",
                     headers={"In-Reply-To": "<offer-1@zylker.example>", "References": "<offer-1@zylker.example>"})
    assert gw.lmtp(CHARLES, [SALES], answer).codes == [250]
    exported = gw.export()
    (record,) = exported["records"]
    shown = gw.record(record["id"])
    assert [(c["subject"], c["source"]) for c in shown["conversation"]] == [
        ("Our offer", "dropbox"), ("Re: Our offer", "alias")]
    assert shown["contact"]["email"] == CHARLES
    offer_id = shown["conversation"][0]["id"]
    thread = shown["decisions"][-1]["thread"]
    assert (thread["method"], thread["record_id"], thread["dropbox_email"]) == ("none", None, offer_id)
    # hashimoto's sharing is private: a colleague's token sees the record without his mail.
    with gw.api(gw.token(user=K)) as api:
        seen = api.get(f"/records/{record['id']}").json()
    assert [c["subject"] for c in seen["conversation"]] == ["Re: Our offer"]
    assert [d["email_id"] for d in seen["decisions"]] == [seen["conversation"][0]["id"]]
    with gw.api(gw.token(user=H)) as api:
        seen = api.get(f"/records/{record['id']}").json()
    assert [c["subject"] for c in seen["conversation"]] == ["Our offer", "Re: Our offer"]
    # A second answer to the same mail joins that record now.
    again = message(frm=CHARLES, to=SALES, subject="Re: Our offer", headers={"In-Reply-To": "<offer-1@zylker.example>"})
    assert gw.lmtp(CHARLES, [SALES], again).codes == [250]
    assert len(gw.export()["records"]) == 1
    assert len(gw.record(record["id"])["conversation"]) == 3


def test_customer_answering_a_bcc_mail_of_a_records_thread_joins_that_record(gw):
    box = gw.dropbox(H)
    ask = message(frm=f"Charles Stone <{CHARLES}>", to=SALES, subject="Need a quote", message_id="<ask-1@zillum.com>")
    assert gw.lmtp(CHARLES, [SALES], ask).codes == [250]
    (record,) = gw.export()["records"]
    # The salesperson answers from their own mail client, BCC to the dropbox.
    quote = message(frm=f"Taro Hashimoto <{H}>", to=CHARLES, subject="Re: Need a quote", message_id="<quote-1@zylker.example>",
                    headers={"In-Reply-To": "<ask-1@zillum.com>", "References": "<ask-1@zillum.com>", "Reply-To": SALES})
    assert gw.lmtp(H, [box], quote).codes == [250]
    answer = message(frm=CHARLES, to=SALES, subject="Re: Re: Need a quote",
                     headers={"In-Reply-To": "<quote-1@zylker.example>",
                              "References": "<ask-1@zillum.com> <quote-1@zylker.example>"})
    # References names the record's own message too: take it out, so only the dropbox mail leads there.
    answer = answer.replace(b"<ask-1@zillum.com> ", b"")
    assert gw.lmtp(CHARLES, [SALES], answer).codes == [250]
    assert len(gw.export()["records"]) == 1
    shown = gw.record(record["id"])
    assert [c["subject"] for c in shown["conversation"]] == ["Need a quote", "Re: Need a quote", "Re: Re: Need a quote"]
    thread = shown["decisions"][-1]["thread"]
    assert (thread["method"], thread["record_id"]) == ("dropbox", record["id"])
    assert "answers ask-1@zillum.com" in thread["evidence"]


def test_meeting_invitation_fields_are_stored_and_it_stays_an_attachment(gw):
    assert gw.lmtp(CHARLES, [SERVICE], eml("invitation-outlook.eml")).codes == [250]
    (email,) = gw.export()["emails"]
    invitation = {"method": "REQUEST", "summary": "X200 installation review", "start": "2026-12-03T05:00:00Z",
                  "end": "2026-12-03T06:00:00Z", "organizer": CHARLES, "location": "Zillum Osaka office",
                  "uid": "040000008200E00074C5B7101A82E00800000000B0C1D2E3F4A5B6010000000000000000100000001234567890ABCDEF",
                  "attendees": [{"address": SERVICE, "name": "Zylker Support", "status": "NEEDS-ACTION"},
                                {"address": AMY, "name": "Amy Lee", "status": "ACCEPTED"}]}
    assert email["invitation"] == invitation
    with gw.api(gw.token()) as api:
        shown = api.get(f"/emails/{email['id']}").json()
        assert shown["invitation"] == invitation
        (attachment,) = shown["attachments"]
        assert attachment["content_type"] == "text/calendar"
        ics = api.get(f"/emails/{email['id']}/attachments/0")
        assert ics.status_code == 200 and b"BEGIN:VEVENT" in ics.content
        record_id = next(link["id"] for link in email["links"] if link["kind"] == "record")
        assert gw.record(record_id)["conversation"][0]["invitation"] == invitation
        assert api.get(f"/records/{record_id}").json()["conversation"][0]["invitation"] == invitation


def test_explain_prints_the_forward_the_new_text_split_and_the_participants(gw, tmp_path):
    box = gw.dropbox(H)
    forward = tmp_path / "forward.eml"
    forward.write_bytes(eml("forward-gmail.eml", box))
    text = gw.cli("explain", str(forward), "--from", H, "--rcpt", box).stdout.decode()
    assert "forward: gmail, original from charless@zillum.com dated Mon, Nov 30, 2026 at 10:00 AM" in text
    assert "note: 'Charles asked for a quote, filing it.'" in text
    assert "quoted history from '---------- Forwarded message ---------'" in text
    assert f"forward (gmail): filed as the original, received from {CHARLES}, dated {ORIGINAL_DATE}" in text
    assert f"{AMY}: created lead" in text and f"{CHARLES}: created lead" in text
    reply = tmp_path / "reply.eml"
    reply.write_bytes(message(frm=CHARLES, to=SERVICE, cc=AMY, subject="Printer"))
    report = json.loads(gw.cli("explain", str(reply), "--from", CHARLES, "--rcpt", SERVICE, "--json").stdout)
    assert report["recipients"][0]["decision"]["participants"] == [CHARLES, AMY]
    assert report["message"]["understood"]["new_text"] == {"chars": 35, "of": 35, "quote_marker": None,
                                                           "signature": None}
    assert gw.count("emails") == 0  # explain wrote nothing
