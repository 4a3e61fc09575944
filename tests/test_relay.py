"""Outbound relay: authenticated submission, DKIM, quota tokens, smarthost outcomes,
outbound mail on records (SPEC 3.7, 3.8, 4)."""

from __future__ import annotations

import json
import smtplib

import dkim
import pytest

from tests.helpers import edit_config, message

CRM = "crm@zylker.example"
LUMEN_CRM = "crm@lumen.example"
K = "kitazawa@zylker.example"
CUSTOMER = "charles@zillum.com"


def quota_used(gw, org, cls="individual"):
    from gateway import quota

    return quota.status(gw.engine, gw.app.deliveries.rules.orgs[org])["classes"][cls]["used"]


def outbound(**kw):
    kw.setdefault("frm", "Hanako Kitazawa <kitazawa@zylker.example>")
    kw.setdefault("to", CUSTOMER)
    return message(**kw)


def test_mail_without_auth_is_refused(gwr, sink):
    with smtplib.SMTP("127.0.0.1", gwr.submission_port, timeout=30) as client:
        client.ehlo()
        assert "auth" in client.esmtp_features  # loopback may AUTH without TLS here (demo config)
        code, msg = client.mail(CRM)
        assert (code, msg[:5]) == (530, b"5.7.0")
    assert sink.messages == []


def test_wrong_password_is_refused(gwr):
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        gwr.submit(outbound(), [CUSTOMER], password="wrong")
    assert err.value.smtp_code == 535


def test_auth_before_tls_is_refused_unless_allowed_on_loopback(config_dir, database_url, sink, tmp_path):
    import ssl

    import trustme

    from tests.conftest import RunningGateway

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    conf = config_dir / "gateway.toml"
    edit_config(conf, "auth_without_tls_on_loopback = true", "auth_without_tls_on_loopback = false")
    edit_config(conf, '# tls_cert = "/etc/gateway/tls/fullchain.pem"', f'tls_cert = "{tmp_path / "server.pem"}"')
    edit_config(conf, '# tls_key = "/etc/gateway/tls/privkey.pem"', f'tls_key = "{tmp_path / "server.pem"}"')
    g = RunningGateway(config_dir, database_url, relay_url=f"smtp://127.0.0.1:{sink.port}").start()
    try:
        with smtplib.SMTP("127.0.0.1", g.submission_port, timeout=30) as client:
            client.ehlo()
            assert "auth" not in client.esmtp_features and "starttls" in client.esmtp_features
            code, msg = client.docmd("AUTH", "PLAIN AGNybUB6eWxrZXIuZXhhbXBsZQBkZW1vLW9ubHk=")
            assert (code, msg[:6]) == (538, b"5.7.11")
            context = ssl.create_default_context()
            ca.configure_trust(context)
            client.starttls(context=context)
            client.ehlo()
            client.login(CRM, "demo-only")  # AUTH PLAIN/LOGIN over TLS
            assert client.mail(K)[0] == 250
            assert client.rcpt(CUSTOMER)[0] == 250
            assert client.data(outbound())[0] == 250
    finally:
        g.stop()
    assert len(sink.messages) == 1


def test_loopback_only_account_refused_from_elsewhere(gwr):
    import asyncio

    from aiosmtpd.smtp import LoginPassword, Session

    handler = gwr.app.submission

    def authenticate(peer):  # on the daemon's loop, as a session would
        session = Session(loop=None)  # type: ignore[arg-type]
        session.peer = peer
        check = handler.authenticate(None, session, "PLAIN", LoginPassword(CRM.encode(), b"demo-only"))
        return asyncio.run_coroutine_threadsafe(check, gwr.thread.loop).result(30).success

    assert not authenticate(("192.0.2.7", 40000))
    assert authenticate(("127.0.0.1", 40000))


def test_relayed_mail_is_signed_and_cleaned(gwr, sink, config_dir):
    data = outbound(subject="Your quote", message_id=None, date=None,
                    headers={"X-Gateway-Class": "individual"})
    tx = gwr.submit(data, [CUSTOMER, "cc@zillum.com"], mail_from=K)
    assert tx.codes == [250], tx.data
    assert b"Relayed" in tx.data[0][1]
    ((mail_from, rcpts, relayed),) = sink.messages
    assert mail_from == K and rcpts == [CUSTOMER, "cc@zillum.com"]
    assert relayed.startswith(b"DKIM-Signature:")
    assert b"X-Gateway-Class" not in relayed
    assert b"\r\nMessage-ID: <" in relayed and b"\r\nDate: " in relayed
    # Verified by dkimpy against the TXT record the CLI prints.
    txt = json.loads(gwr.cli("dkim", "dns", "zylker.example", "--json").stdout)
    assert txt["name"] == "gw2026._domainkey.zylker.example"
    looked_up = []

    def dns(name, timeout=5):
        looked_up.append(name)
        return txt["value"].encode() if name == b"gw2026._domainkey.zylker.example." else None

    assert dkim.verify(relayed, dnsfunc=dns)
    signature = relayed.split(b"\r\n\r\n")[0]
    for header in (b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"):
        assert header in signature.split(b"h=")[1].split(b";")[0].lower()
    assert b"c=relaxed/relaxed" in signature
    assert quota_used(gwr, "zylker") == 2


def _published_key(gw):
    """dkimpy's DNS lookup, answered with the TXT record `gateway dkim dns` prints."""
    txt = json.loads(gw.cli("dkim", "dns", "zylker.example", "--json").stdout)

    def dns(name, timeout=5):
        return txt["value"].encode() if name == f"{txt['name']}.".encode() else None

    return dns


def _signed_headers(relayed: bytes) -> list[str]:
    """The h= tag of the DKIM-Signature field the message starts with, lower case."""
    lines = relayed.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    assert lines[0].startswith("DKIM-Signature:")
    field = lines[0]
    for line in lines[1:]:
        if line[:1] not in (" ", "\t"):
            break
        field += line
    tags = dict(t.split("=", 1) for t in "".join(field.split(":", 1)[1].split()).split(";") if t)
    return tags["h"].lower().split(":")


def test_dkim_signs_reply_to_and_sender_and_oversigns_from(gwr, sink):
    """dkimpy's default selection (issue 11): Reply-To and Sender signed, From signed once
    more than it occurs; so changing Reply-To, or adding a From, in transit breaks it."""
    data = outbound(headers={"Reply-To": "service@in.zylker.example", "Sender": "support@zylker.example"})
    assert gwr.submit(data, [CUSTOMER], mail_from=K).codes == [250]
    ((_, _, relayed),) = sink.messages
    signed = _signed_headers(relayed)
    assert {"reply-to", "sender", "subject", "date", "message-id", "to"} <= set(signed)
    assert signed.count("from") == 2  # one From in the message, oversigned
    dns = _published_key(gwr)
    assert dkim.verify(relayed, dnsfunc=dns)
    redirected = relayed.replace(b"\r\nReply-To: service@in.zylker.example\r\n",
                                 b"\r\nReply-To: collector@evil.example\r\n")
    assert redirected != relayed
    assert not dkim.verify(redirected, dnsfunc=dns)
    head, body = relayed.split(b"\r\n\r\n", 1)
    assert not dkim.verify(head + b"\r\nFrom: ceo@evil.example\r\n\r\n" + body, dnsfunc=dns)


def test_from_must_be_allowed_and_verified(gwr, sink, config_dir):
    # Not a user or an organisation address of zylker.
    tx = gwr.submit(outbound(frm="ceo@zylker.example"), [CUSTOMER], mail_from=K)
    assert tx.codes == [550] and tx.data[0][1].startswith(b"5.7.1")
    # The organisation address is allowed.
    assert gwr.submit(outbound(frm="support@zylker.example"), [CUSTOMER], mail_from="support@zylker.example").codes == [250]
    # Another organisation's address, already at MAIL.
    tx = gwr.submit(outbound(frm="owner@lumen.example"), [CUSTOMER], mail_from="owner@lumen.example")
    assert tx.mail[0] == 550 and tx.mail[1].startswith(b"5.7.1")
    assert quota_used(gwr, "zylker") == 1
    # A domain with no DKIM key is not verified.
    rules = config_dir / "rules" / "zylker.toml"
    text = rules.read_text()
    rules.write_text(text[: text.index("[[dkim]]")] + text[text.index("[[accounts]]"):])
    gwr.restart()
    tx = gwr.submit(outbound(), [CUSTOMER], mail_from=K)
    assert tx.codes == [550] and b"not verified" in tx.data[0][1]
    assert len(sink.messages) == 1
    assert quota_used(gwr, "zylker") == 1


def test_quota_limit_at_rcpt_with_local_reset_time(gwr, sink):
    # lumen: free plan, one active user: 50 individual mails a day.
    rcpts = [f"r{i}@customer.example" for i in range(52)]
    with smtplib.SMTP("127.0.0.1", gwr.submission_port, timeout=30) as client:
        client.ehlo()
        client.login(LUMEN_CRM, "demo-only")
        assert client.mail("owner@lumen.example")[0] == 250
        codes = [client.rcpt(r) for r in rcpts]
        assert [c for c, _ in codes[:50]] == [250] * 50
        code, text = codes[50]
        assert code == 451 and text.startswith(b"4.7.1")
        from gateway import metrics

        assert metrics.quota_refusals.labels(org="lumen", **{"class": "individual"})._value.get() >= 2
        assert b"limit of 50 reached for lumen" in text and b"Europe/Berlin" in text and b"00:00 CE" in text
        assert client.data(message(frm="owner@lumen.example", to="r0@customer.example"))[0] == 250
    assert len(sink.messages) == 1 and len(sink.messages[0][1]) == 50
    assert quota_used(gwr, "lumen") == 50
    # Bulk is a separate bucket, chosen by header (removed before relay).
    tx = gwr.submit(message(frm="owner@lumen.example", to="x@customer.example", headers={"X-Gateway-Class": "workflow"}),
                    ["x@customer.example"], login=LUMEN_CRM, mail_from="owner@lumen.example")
    # RCPT reserves an individual token first: none left, so 451 before the header is seen.
    assert tx.rcpt_codes == [451]
    status = json.loads(gwr.cli("quota", "status", "--org", "lumen", "--json").stdout)
    assert status["classes"]["individual"] == {"limit": 50, "used": 50, "remaining": 0}
    assert status["next_reset_local"].endswith("T00:00:00+01:00")
    assert status["next_reset_utc"].endswith("T23:00:00Z")


def test_header_moves_tokens_to_bulk(gwr, sink):
    tx = gwr.submit(outbound(headers={"X-Gateway-Class": "macro"}), [CUSTOMER, "b@zillum.com"], mail_from=K)
    assert tx.codes == [250]
    assert quota_used(gwr, "zylker", "bulk") == 2 and quota_used(gwr, "zylker", "individual") == 0
    assert b"X-Gateway-Class" not in sink.messages[0][2]


@pytest.mark.parametrize("mode, code, status", [("tempfail", 451, b"4.4.1"), ("permfail", 554, b"5.7.1"),
                                                ("down", 451, b"4.4.1")])
def test_smarthost_failures_return_tokens(gwr, sink, mode, code, status):
    from gateway import metrics

    outcome = "deferred" if code == 451 else "refused"
    before = metrics.relay_attempts.labels(outcome=outcome)._value.get()
    if mode == "down":
        sink.stop()
    else:
        sink.mode = mode
    tx = gwr.submit(outbound(), [CUSTOMER, "b@zillum.com"], mail_from=K)
    assert tx.codes == [code] and tx.data[0][1].startswith(status)
    assert quota_used(gwr, "zylker") == 0
    assert gwr.export()["emails"] == []
    assert metrics.relay_attempts.labels(outcome=outcome)._value.get() == before + 1
    if mode == "down":
        sink.start()


def test_smarthost_refusing_some_recipients(gwr, sink):
    sink.refuse = {"gone@zillum.com"}
    tx = gwr.submit(outbound(), [CUSTOMER, "gone@zillum.com"], mail_from=K)
    assert tx.codes == [250]
    assert sink.messages[0][1] == [CUSTOMER]
    assert quota_used(gwr, "zylker") == 1
    sink.refuse = {CUSTOMER}
    tx = gwr.submit(outbound(), [CUSTOMER], mail_from=K)
    assert tx.codes == [550] and tx.data[0][1].startswith(b"5.1.1")
    assert quota_used(gwr, "zylker") == 1


def test_abandoned_transactions_return_tokens(gwr):
    with smtplib.SMTP("127.0.0.1", gwr.submission_port, timeout=30) as client:
        client.ehlo()
        client.login(CRM, "demo-only")
        client.mail(K)
        client.rcpt(CUSTOMER)
        client.rcpt("b@zillum.com")
        assert quota_used(gwr, "zylker") == 2
        client.rset()
        client.mail(K)
        client.rcpt(CUSTOMER)
    # QUIT with a transaction open, then the connection is gone.
    import time

    for _ in range(50):
        if quota_used(gwr, "zylker") == 0:
            break
        time.sleep(0.05)
    assert quota_used(gwr, "zylker") == 0


def test_reply_from_a_record_is_threaded_both_ways(gwr, sink):
    """Customer mail to service@ -> record; the reply submitted through the gateway is
    relayed signed with the token; the customer's answer joins the record and reopens it."""
    first = message(frm=f"Charles Smith <{CUSTOMER}>", to="service@in.zylker.example", subject="Printer broken",
                    message_id="<p1@zillum.com>")
    assert gwr.lmtp(CUSTOMER, ["service@in.zylker.example"], first).codes == [250]
    (record,) = gwr.export()["records"]
    token = f"[#S-{record['id']}]"
    reply = outbound(subject="Re: Printer broken", message_id=None,
                     headers={"In-Reply-To": "<p1@zillum.com>", "References": "<p1@zillum.com>",
                              "Reply-To": "service@in.zylker.example"})
    assert gwr.submit(reply, [CUSTOMER], mail_from=K).codes == [250]
    relayed = sink.messages[0][2]
    assert f"Subject: Re: Printer broken {token}".encode() in relayed
    shown = gwr.record(record["id"])
    assert [(c["direction"], c["subject"]) for c in shown["conversation"]] == [
        ("inbound", "Printer broken"), ("outbound", f"Re: Printer broken {token}")]
    sent_id = shown["conversation"][1]["message_id"]
    assert sent_id and sent_id.encode() in relayed
    gwr.move(record["id"], "Resolved")
    answer = message(frm=CUSTOMER, to="service@in.zylker.example", subject=f"Re: Re: Printer broken {token}",
                     headers={"In-Reply-To": f"<{sent_id}>"})
    assert gwr.lmtp(CUSTOMER, ["service@in.zylker.example"], answer).codes == [250]
    shown = gwr.record(record["id"])
    assert shown["stage"] == "Reopened"
    assert [c["direction"] for c in shown["conversation"]] == ["inbound", "outbound", "inbound"]
    assert shown["decisions"][-1]["thread"]["method"] == "in-reply-to"


def test_explicit_record_header(gwr, sink):
    assert gwr.lmtp(CUSTOMER, ["sales@in.zylker.example"],
                    message(frm=CUSTOMER, to="sales@in.zylker.example", subject="Need a quote")).codes == [250]
    rid = gwr.export()["records"][0]["id"]
    tx = gwr.submit(outbound(subject=f"Quote [#D-{rid}]", headers={"X-Gateway-Record": str(rid)}), [CUSTOMER], mail_from=K)
    assert tx.codes == [250]
    relayed = sink.messages[0][2]
    assert b"X-Gateway-Record" not in relayed
    assert relayed.count(f"[#D-{rid}]".encode()) == 1  # not added twice
    assert len(gwr.record(rid)["conversation"]) == 2
    tx = gwr.submit(outbound(headers={"X-Gateway-Record": "999999"}), [CUSTOMER], mail_from=K)
    assert tx.codes == [550]
    assert quota_used(gwr, "zylker") == 1


def test_mail_to_a_contact_without_record_is_stored_on_the_contact(gwr, sink):
    box = gwr.dropbox(K)
    assert gwr.lmtp(K, [box], message(frm=K, to=CUSTOMER)).codes == [250]  # creates the contact
    assert gwr.submit(outbound(subject="Hello"), [CUSTOMER], mail_from=K).codes == [250]
    ex = gwr.export()
    contact = ex["contacts"][0]
    sent = [e for e in ex["emails"] if e["direction"] == "outbound"]
    assert len(sent) == 1 and sent[0]["links"] == [{"kind": "contact", "id": contact["id"]}]
    assert sent[0]["source"] == "relay" and sent[0]["filed_by"] == K


def test_resubmission_is_not_relayed_twice(gwr, sink):
    data = outbound(message_id="<once@zylker.example>")
    assert gwr.submit(data, [CUSTOMER], mail_from=K).codes == [250]
    tx = gwr.submit(data, [CUSTOMER], mail_from=K)
    assert tx.codes == [250] and b"Already relayed" in tx.data[0][1]
    assert len(sink.messages) == 1 and quota_used(gwr, "zylker") == 1


def test_dkim_keygen_and_dns_commands(gw, tmp_path):
    out = tmp_path / "k.pem"
    proc = gw.cli("dkim", "keygen", "example.org", "--selector", "s1", "--out", str(out))
    assert out.stat().st_mode & 0o777 == 0o600
    assert proc.stdout.decode().startswith('s1._domainkey.example.org. IN TXT ( "v=DKIM1; k=rsa; p=')
    again = gw.cli("dkim", "keygen", "example.org", "--selector", "s1", "--out", str(out), check=False)
    assert again.returncode == 1 and b"exists" in again.stderr
    wrong = gw.cli("dkim", "keygen", "zylker.example", "--selector", "other", check=False)
    assert wrong.returncode == 1 and b"gw2026" in wrong.stderr
    assert gw.cli("dkim", "dns", "zylker.example").stdout.startswith(b"gw2026._domainkey.zylker.example.")


def test_passwd_command(gw):
    from gateway.passwords import verify

    out = gw.cli("passwd", input=b"s3cret\n").stdout.decode().strip()
    assert out.startswith("scrypt$") and verify(b"s3cret", out)
