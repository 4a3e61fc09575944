"""Which mail no person wrote: bounces, auto-replies, our own mail coming back."""

from __future__ import annotations

import pytest

from gateway.filing import noise
from gateway.outcome import Noise
from gateway.parse import parse_message
from tests.helpers import message


def classify(rules, envelope_sender: str = "charless@zillum.com", **kw):  # type: ignore[no-untyped-def]
    parsed = parse_message(message(frm=kw.pop("frm", "Charles <charless@zillum.com>"), **kw))
    sender = parsed.from_.address.lower() if parsed.from_ else envelope_sender
    return noise.classify(parsed, envelope_sender, sender, rules)


def test_a_persons_mail_is_not_noise(rules):
    assert classify(rules) is None
    assert classify(rules, headers={"Auto-Submitted": "no"}) is None


def test_null_reverse_path_is_a_bounce_before_anything_else(rules):
    assert classify(rules, envelope_sender="", headers={"Auto-Submitted": "auto-replied"}) == \
        Noise("bounce", "null reverse-path")


def test_mailer_daemon_is_a_bounce(rules):
    assert classify(rules, frm="MAILER-DAEMON@zillum.com") == Noise("bounce", "sender mailer-daemon")


@pytest.mark.parametrize("headers, evidence", [
    ({"Auto-Submitted": "auto-replied; owner-email=x"}, "Auto-Submitted: auto-replied"),
    ({"X-Autoreply": "yes"}, "x-autoreply"),
    ({"Precedence": "bulk"}, "Precedence: bulk"),
])
def test_auto_replies(rules, headers, evidence):
    assert classify(rules, headers=headers) == Noise("auto_reply", evidence)


def test_mail_from_a_gateway_address_is_a_loop(rules):
    found = classify(rules, frm="sales@in.zylker.example")
    assert found == Noise("loop", "sender is a gateway address")
    assert str(found) == "loop: sender is a gateway address"
