"""Protocol edge (issue 11): relaying denied for domains we do not serve, NUL octets
in command lines, DATA's own replies and the end of a transaction, on SMTP, LMTP and
submission."""

from __future__ import annotations

import smtplib
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

from tests.helpers import message

SENDER = "hashimoto@zylker.example"
CRM = "crm@zylker.example"
K = "kitazawa@zylker.example"
CUSTOMER = "charles@zillum.com"
LISTENERS = ["smtp", "lmtp", "submission"]


@contextmanager
def client(gw, listener: str, *, login: bool = True) -> Iterator[smtplib.SMTP]:
    """A session past its greeting on ``listener``; submission sessions AUTH first."""
    if listener == "lmtp":
        c: smtplib.SMTP = smtplib.LMTP("127.0.0.1", gw.lmtp_port, timeout=30)
    else:
        c = smtplib.SMTP("127.0.0.1", gw.smtp_port if listener == "smtp" else gw.submission_port, timeout=30)
    with c:
        c.ehlo()
        if listener == "submission" and login:
            c.login(CRM, "demo-only")
        yield c


def sender_for(listener: str) -> str:
    return K if listener == "submission" else SENDER


def recipient_for(gw, listener: str) -> str:
    return CUSTOMER if listener == "submission" else gw.dropbox(SENDER)


# --- RCPT: relaying denied (5.7.1) vs unknown user (5.1.1) ---------------------------


@pytest.mark.parametrize("listener", ["smtp", "lmtp"])
def test_rcpt_to_a_domain_not_served_is_relaying_denied(gw, listener):
    from gateway import metrics

    denied = metrics.recipient_decisions.labels(listener=listener, stage="rcpt", outcome="rejected",
                                                reason="relay_denied")
    before = denied._value.get()
    with client(gw, listener) as c:
        assert c.mail(SENDER)[0] == 250
        replies = [c.rcpt(r) for r in ("someone@elsewhere.example",   # no organisation's domain
                                       "hashimoto@zylker.example",    # an organisation's own mail domain
                                       "x@in.zylker.example.evil.example",
                                       "nobody@in.zylker.example",    # served domain, unknown user
                                       "NOBODY@IN.ZYLKER.EXAMPLE")]
        assert [(code, text[:5]) for code, text in replies] == [
            (550, b"5.7.1"), (550, b"5.7.1"), (550, b"5.7.1"), (550, b"5.1.1"), (550, b"5.1.1")]
        assert b"Relaying denied" in replies[0][1]
        # The session goes on: a served recipient after the refusals is accepted.
        assert c.rcpt(gw.dropbox(SENDER))[0] == 250
    assert denied._value.get() == before + 3


def test_explain_agrees_relaying_denied_and_unknown_user(gw, tmp_path):
    import json

    eml = tmp_path / "m.eml"
    eml.write_bytes(message(to="someone@elsewhere.example"))
    out = json.loads(gw.cli("explain", str(eml), "--from", SENDER, "--rcpt", "someone@elsewhere.example",
                            "--rcpt", "nobody@in.zylker.example", "--json").stdout)
    assert [r["reply"][:9] for r in out["recipients"]] == ["550 5.7.1", "550 5.1.1"]


def test_lmtp_relay_denied_gets_no_data_reply(gw):
    """RFC 2033 4.2: a recipient refused at RCPT has no reply after DATA."""
    box = gw.dropbox(SENDER)
    tx = gw.lmtp(SENDER, ["someone@elsewhere.example", box], message())
    assert [(c, m[:5]) for c, m in tx.rcpts] == [(550, b"5.7.1"), (250, b"2.1.5")]
    assert tx.codes == [250] and tx.noop[0] == 250
    assert gw.count("emails") == 1


def test_submission_relays_to_any_domain_only_after_auth(gwr, sink):
    """Submission is the relay: any recipient domain, once authenticated."""
    with client(gwr, "submission", login=False) as c:
        code, text = c.docmd("RCPT TO:<someone@elsewhere.example>")
        assert (code, text[:5]) == (530, b"5.7.0")
        c.login(CRM, "demo-only")
        assert c.mail(K)[0] == 250
        assert c.rcpt("someone@elsewhere.example")[0] == 250
        assert c.data(message(frm=K, to="someone@elsewhere.example"))[0] == 250
    assert [rcpts for _, rcpts, _ in sink.messages] == [["someone@elsewhere.example"]]


# --- DATA: our replacement of aiosmtpd's, its replies from the catalogue ---------------


@pytest.mark.parametrize("listener", LISTENERS)
def test_data_replies_before_the_message(gwr, sink, listener):
    with client(gwr, listener) as c:
        assert c.mail(sender_for(listener))[0] == 250
        assert c.docmd("DATA") == (503, b"5.5.1 Error: need RCPT command")
        assert c.rcpt(recipient_for(gwr, listener))[0] == 250
        assert c.docmd("DATA", "now") == (501, b"5.5.4 Syntax: DATA")
        # RFC 2034 4: no enhanced status code on the intermediate 354.
        assert c.docmd("DATA") == (354, b"End data with <CR><LF>.<CR><LF>")
        c.send(message(frm=sender_for(listener), to=CUSTOMER) + b".\r\n")
        code, text = c.getreply()
        assert code == 250 and b"(queue id " in text, (code, text)
        assert c.noop()[0] == 250


def test_a_new_ehlo_ends_the_submission_transaction_and_its_tokens_go_back(gwr):
    """RFC 5321 4.1.4: EHLO in a transaction clears it, as RSET does."""
    from gateway import quota

    def used() -> int:
        return quota.status(gwr.engine, gwr.app.deliveries.rules.orgs["zylker"])["classes"]["individual"]["used"]

    with client(gwr, "submission") as c:
        assert c.mail(K)[0] == 250
        assert c.rcpt(CUSTOMER)[0] == 250
        assert used() == 1
        assert c.ehlo()[0] == 250
        for _ in range(50):  # given back in a task
            if used() == 0:
                break
            time.sleep(0.05)
        assert used() == 0
        code, _ = c.docmd("DATA")  # the recipient went with the transaction
        assert code == 503
        assert c.mail(K)[0] == 250  # and a new one can begin: no "nested MAIL"


# --- NUL octets ------------------------------------------------------------------------


@pytest.mark.parametrize("listener", LISTENERS)
def test_nul_in_mail_from_is_501_and_the_session_goes_on(gw, listener):
    with client(gw, listener) as c:
        code, text = c.docmd(f"MAIL FROM:<a\0b@{sender_for(listener).split('@')[1]}>")
        assert (code, text[:5]) == (501, b"5.5.2")
        code, text = c.docmd(f"MAIL FROM:<{sender_for(listener)}\0>")
        assert (code, text[:5]) == (501, b"5.5.2")
        # Not taken as a sender: a clean MAIL now is no "nested MAIL".
        assert c.mail(sender_for(listener))[0] == 250
    assert gw.count("emails") == 0


@pytest.mark.parametrize("listener", LISTENERS)
def test_nul_in_rcpt_to_is_501_and_not_a_recipient(gw, listener):
    rcpt = recipient_for(gw, listener)
    local, domain = rcpt.split("@")
    with client(gw, listener) as c:
        assert c.mail(sender_for(listener))[0] == 250
        for bad in (f"{local}\0@{domain}", f"{local}@{domain}\0.example", f"{local}\0x@{domain}"):
            code, text = c.docmd(f"RCPT TO:<{bad}>")
            assert (code, text[:5]) == (501, b"5.5.2"), bad
        # No recipient was taken: DATA has none.
        code, _ = c.docmd("DATA")
        assert code == 503
        assert c.rcpt(rcpt)[0] == 250


@pytest.mark.parametrize("listener", LISTENERS)
def test_nul_anywhere_in_a_command_line_is_501(gw, listener):
    with client(gw, listener) as c:
        greeting = "LHLO" if listener == "lmtp" else "EHLO"
        for line in (f"{greeting} client\0.example", "NOOP \0", "MA\0IL FROM:<x@zylker.example>",
                     f"MAIL FROM:<{sender_for(listener)}> SIZE=10\0", "\0", "VRFY a\0b"):
            code, text = c.docmd(line)
            assert (code, text[:5]) == (501, b"5.5.2"), repr(line)
        assert c.noop()[0] == 250


def test_nul_on_submission_is_501_before_auth_too(gw):
    with client(gw, "submission", login=False) as c:
        code, text = c.docmd(f"MAIL FROM:<{K}\0>")
        assert (code, text[:5]) == (501, b"5.5.2")
        code, text = c.docmd("AUTH PLAIN AGNybUB6eWxrZXIuZXhhbXBsZQBkZW1vLW9ubHk=\0")
        assert (code, text[:5]) == (501, b"5.5.2")
        # Without the NUL the same AUTH succeeds: the refusal was the NUL's.
        code, _ = c.docmd("AUTH PLAIN AGNybUB6eWxrZXIuZXhhbXBsZQBkZW1vLW9ubHk=")
        assert code == 235


@pytest.mark.parametrize("arg", ["<a\0b@zylker.example>", "<ab@zylker.example> SIZE=1\0", "a\0b@zylker.example",
                                 '<"a\0b"@zylker.example>', "<ab@zylker.example>\0"])
def test_path_parser_never_returns_a_nul(arg):
    """Fast path (plain <local@domain>) and aiosmtpd's parser behind it: neither lets a
    NUL through, whatever reaches them."""
    from gateway.smtp.server import GatewaySMTP

    parser = GatewaySMTP.__new__(GatewaySMTP)
    parser.local_part_limit = 0
    assert parser._getaddr(arg) == (None, None)
    clean = arg.replace("\0", "")
    address, _ = parser._getaddr(clean)
    assert address and "\0" not in address  # the same path without the NUL parses
