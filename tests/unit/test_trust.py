"""Unit tests for gateway.trust: Authentication-Results (authres), our own DKIM
verification (dkimpy, DNS through a stub), the requirements, the spam headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import signing
from gateway.parse import parse_message
from gateway.trust import AuthResult, SpamVerdict, as_json, auth_results, meets, spam_verdict, verify_dkim

MTA = "mx.zylker.example"


def message(*headers: str, body: str = "Hello.\r\n") -> bytes:
    """A message with ``headers`` (each may hold folded lines) on top of a plain one."""
    head = list(headers) + [
        "From: Ann <ann@zylker.example>",
        "To: sales@dropbox.example",
        "Subject: Quote",
        "Date: Mon, 03 Mar 2025 10:00:00 +0900",
        "Message-ID: <q1@zylker.example>",
    ]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode("utf-8")


def results_of(*headers: str, ids: tuple[str, ...] = (MTA,)) -> tuple[AuthResult, ...]:
    return auth_results(parse_message(message(*headers)), ids)


# ---------------------------------------------------------------- Authentication-Results


def test_trusted_authserv_id_is_read_untrusted_ignored():
    found = results_of(
        "Authentication-Results: mx.zylker.example; dkim=fail header.d=zylker.example",
        "Authentication-Results: mx.forger.example; dkim=pass header.d=zylker.example",
    )
    assert found == (AuthResult("dkim", "fail", "zylker.example", MTA),)


def test_untrusted_only_gives_nothing():
    assert results_of("Authentication-Results: mx.forger.example; dkim=pass header.d=zylker.example") == ()
    # No trusted id configured: nothing is trusted.
    assert results_of("Authentication-Results: mx.zylker.example; dkim=pass header.d=zylker.example", ids=()) == ()


def test_authserv_id_compared_case_insensitively():
    found = results_of("Authentication-Results: MX.Zylker.Example; spf=pass smtp.mailfrom=ann@zylker.example",
                       ids=("mx.ZYLKER.example",))
    assert found == (AuthResult("spf", "pass", "zylker.example", "mx.zylker.example"),)


def test_several_results_in_one_header():
    found = results_of(
        "Authentication-Results: mx.zylker.example; dkim=pass header.d=Zylker.Example header.s=s1;"
        " dkim=pass header.i=@news.zylker.example; spf=softfail smtp.mailfrom=bounce@mail.zylker.example;"
        " spf=none smtp.helo=relay.other.example; dmarc=pass (p=NONE) header.from=zylker.example;"
        " arc=none; iprev=pass policy.iprev=192.0.2.1"
    )
    assert found == (
        AuthResult("dkim", "pass", "zylker.example", MTA),
        AuthResult("dkim", "pass", "news.zylker.example", MTA),
        AuthResult("spf", "softfail", "mail.zylker.example", MTA),
        AuthResult("spf", "none", "relay.other.example", MTA),
        AuthResult("dmarc", "pass", "zylker.example", MTA),
        AuthResult("arc", "none", "", MTA),
        AuthResult("iprev", "pass", "", MTA),
    )


def test_upper_case_method_and_result_are_lowered():
    found = results_of("Authentication-Results: mx.zylker.example; DKIM=PASS header.d=zylker.example")
    assert found == (AuthResult("dkim", "pass", "zylker.example", MTA),)


def test_first_of_a_repeated_property_wins():
    found = results_of("Authentication-Results: mx.zylker.example;"
                       " dkim=pass header.d=zylker.example header.d=x.example")
    assert found == (AuthResult("dkim", "pass", "zylker.example", MTA),)


def test_folded_header_with_comments():
    found = results_of(
        "Authentication-Results: mx.zylker.example (Postfix);\r\n"
        "\tdkim=pass (2048-bit key; unprotected) header.d=zylker.example header.b=\"AbC+/dE\";\r\n"
        "       spf=pass (mx.zylker.example: domain of ann@zylker.example designates 192.0.2.1 as permitted\r\n"
        "        sender) smtp.mailfrom=ann@zylker.example;\r\n"
        "  dmarc=fail header.from=zylker.example"
    )
    assert found == (
        AuthResult("dkim", "pass", "zylker.example", MTA),
        AuthResult("spf", "pass", "zylker.example", MTA),
        AuthResult("dmarc", "fail", "zylker.example", MTA),
    )


def test_malformed_header_skipped_others_kept_in_header_order():
    found = results_of(
        "Authentication-Results: mx.zylker.example; spf=pass smtp.mailfrom=ann@zylker.example",
        "Authentication-Results: mx.zylker.example; dkim=",  # no result
        "Authentication-Results: mx.zylker.example; dkim=pass header.d=zylker.example; ; spf=pass",  # empty resinfo
        "Authentication-Results: ; dkim=pass header.d=zylker.example",  # no authserv-id
        "Authentication-Results: mx.zylker.example",  # no resinfo
        "Authentication-Results: mx.zylker.example; dkim=fail header.d=zylker.example",
    )
    assert found == (
        AuthResult("spf", "pass", "zylker.example", MTA),
        AuthResult("dkim", "fail", "zylker.example", MTA),
    )


def test_none_gives_no_result():
    assert results_of("Authentication-Results: mx.zylker.example; none") == ()


def test_non_ascii_header_skipped():
    found = results_of("Authentication-Results: mx.zylker.example; dkim=pass header.d=zylker.example caf\u00e9",
                       "Authentication-Results: mx.zylker.example; spf=fail smtp.mailfrom=ann@zylker.example")
    assert found == (AuthResult("spf", "fail", "zylker.example", MTA),)


def test_as_json():
    found = (AuthResult("dkim", "pass", "zylker.example", MTA), AuthResult("spf", "fail", "", "dkimpy"))
    assert as_json(found) == [
        {"method": "dkim", "result": "pass", "domain": "zylker.example", "source": MTA},
        {"method": "spf", "result": "fail", "domain": "", "source": "dkimpy"},
    ]
    assert as_json(()) == []


# ---------------------------------------------------------------- meets

DKIM_PASS = AuthResult("dkim", "pass", "zylker.example", MTA)
DKIM_FAIL = AuthResult("dkim", "fail", "zylker.example", MTA)
SPF_PASS = AuthResult("spf", "pass", "zylker.example", MTA)
DMARC_PASS = AuthResult("dmarc", "pass", "zylker.example", MTA)
DMARC_FAIL = AuthResult("dmarc", "fail", "zylker.example", MTA)


def test_meets_none_always():
    assert meets((), "none", "zylker.example")[0] is True
    assert meets((DKIM_FAIL,), "none", "zylker.example")[0] is True


@pytest.mark.parametrize("domain, from_domain", [
    ("zylker.example", "zylker.example"),
    ("ZYLKER.example", "zylker.example."),
    ("mail.zylker.example", "zylker.example"),  # child
    ("zylker.example", "sales.zylker.example"),  # parent
])
def test_meets_dkim_or_spf_aligned(domain, from_domain):
    for method in ("dkim", "spf"):
        ok, reason = meets((AuthResult(method, "pass", domain.lower(), MTA),), "dkim_or_spf", from_domain)
        assert ok, reason
        assert reason == f"{method}=pass ({domain.lower()}) by {MTA}"


@pytest.mark.parametrize("domain", ["other.example", "notzylker.example", "zylker.example.evil", "example", ""])
def test_meets_dkim_or_spf_misaligned(domain):
    ok, reason = meets((AuthResult("dkim", "pass", domain, MTA), AuthResult("spf", "pass", domain, MTA)),
                       "dkim_or_spf", "zylker.example")
    assert not ok
    assert reason.startswith("no dkim or spf pass aligned with zylker.example (dkim=pass")


def test_meets_dkim_or_spf_reason_names_the_results_and_skips_failures():
    ok, reason = meets((DKIM_FAIL,), "dkim_or_spf", "zylker.example")
    assert (ok, reason) == (
        False, f"no dkim or spf pass aligned with zylker.example (dkim=fail (zylker.example) by {MTA})")
    ok, reason = meets((DKIM_FAIL, DMARC_PASS, SPF_PASS), "dkim_or_spf", "zylker.example")
    assert (ok, reason) == (True, f"spf=pass (zylker.example) by {MTA}")
    # dmarc alone does not count for dkim_or_spf.
    assert meets((DMARC_PASS,), "dkim_or_spf", "zylker.example")[0] is False


def test_meets_dkim_or_spf_no_results():
    assert meets((), "dkim_or_spf", "zylker.example") == (
        False, "no dkim or spf pass aligned with zylker.example (no results)")


def test_meets_dmarc_pass():
    assert meets((DKIM_FAIL, DMARC_PASS), "dmarc", "zylker.example") == (True, f"dmarc=pass (zylker.example) by {MTA}")


def test_meets_dmarc_pass_for_another_domain_is_not_enough():
    other = AuthResult("dmarc", "pass", "other.example", MTA)
    ok, reason = meets((other, DKIM_PASS), "dmarc", "zylker.example")
    assert not ok
    assert reason == f"no dmarc pass for zylker.example (dmarc=pass (other.example) by {MTA})"


def test_meets_dmarc_fail_is_not_rescued_by_dkim():
    ok, reason = meets((DKIM_PASS, DMARC_FAIL), "dmarc", "zylker.example")
    assert not ok
    assert "dmarc=fail (zylker.example)" in reason


def test_meets_dmarc_without_dmarc_result_falls_back_to_aligned_dkim():
    child = AuthResult("dkim", "pass", "mail.zylker.example", "dkimpy")
    assert meets((SPF_PASS, child), "dmarc", "zylker.example") == (
        True, "dkim=pass (mail.zylker.example) by dkimpy (no dmarc result)")
    # spf is no fallback, nor a misaligned dkim pass.
    misaligned = AuthResult("dkim", "pass", "other.example", MTA)
    ok, reason = meets((SPF_PASS, misaligned), "dmarc", "zylker.example")
    assert not ok
    assert reason == ("no dmarc result and no dkim pass aligned with zylker.example "
                      f"(dkim=pass (other.example) by {MTA})")


def test_meets_dmarc_no_results():
    ok, reason = meets((), "dmarc", "zylker.example")
    assert not ok
    assert reason.endswith("(no results)")


def test_meets_unknown_requirement_fails_closed():
    assert meets((DKIM_PASS, DMARC_PASS), "dkim", "zylker.example")[0] is False


def test_meets_no_from_domain():
    assert meets((DKIM_PASS,), "dkim_or_spf", "")[0] is False
    assert meets((DMARC_PASS,), "dmarc", "")[0] is False


# ---------------------------------------------------------------- verify_dkim

SELECTOR = "gw2026"
DOMAIN = "zylker.example"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return signing.generate_key(Path(tmp_path_factory.mktemp("dkim")) / "zylker.pem")


@pytest.fixture(scope="module")
def signed(key: bytes) -> bytes:
    raw = message()
    return signing.sign(raw, DOMAIN, SELECTOR, key) + raw


def dns_stub(key: bytes, asked: list[bytes] | None = None):
    record = signing.txt_record(key).encode("ascii")

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        if asked is not None:
            asked.append(name)
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode("ascii") else None

    return dnsfunc


def test_dkim_pass(key, signed):
    asked: list[bytes] = []
    assert verify_dkim(signed, dnsfunc=dns_stub(key, asked)) == (AuthResult("dkim", "pass", DOMAIN, "dkimpy"),)
    assert asked == [b"gw2026._domainkey.zylker.example."]


def test_dkim_body_changed_fails(key, signed):
    changed = signed.replace(b"Hello.", b"Hullo.")
    assert changed != signed
    assert verify_dkim(changed, dnsfunc=dns_stub(key)) == (AuthResult("dkim", "fail", DOMAIN, "dkimpy"),)


def test_dkim_signed_header_changed_fails(key, signed):
    changed = signed.replace(b"Subject: Quote", b"Subject: Invoice")
    assert verify_dkim(changed, dnsfunc=dns_stub(key)) == (AuthResult("dkim", "fail", DOMAIN, "dkimpy"),)


def test_dkim_other_key_fails(key, signed, tmp_path):
    other = signing.generate_key(tmp_path / "other.pem")
    assert verify_dkim(signed, dnsfunc=dns_stub(other)) == (AuthResult("dkim", "fail", DOMAIN, "dkimpy"),)


def test_dkim_dns_raises_is_temperror(signed):
    def broken(name: bytes, timeout: float = 5) -> bytes:
        raise TimeoutError("no answer")

    assert verify_dkim(signed, dnsfunc=broken) == (AuthResult("dkim", "temperror", DOMAIN, "dkimpy"),)


def test_dkim_no_key_record_is_permerror(signed):
    assert verify_dkim(signed, dnsfunc=lambda name, timeout=5: None) == (
        AuthResult("dkim", "permerror", DOMAIN, "dkimpy"),)
    assert verify_dkim(signed, dnsfunc=lambda name, timeout=5: b"v=DKIM1; k=rsa; p=bm90IGEga2V5") == (
        AuthResult("dkim", "permerror", DOMAIN, "dkimpy"),)


def test_dkim_unreadable_signature_is_permerror(key):
    raw = message("DKIM-Signature: v=1; a=rsa-sha256; d=zylker.example; s=gw2026; h=from; b=AAAA")  # no bh=
    assert verify_dkim(raw, dnsfunc=dns_stub(key)) == (AuthResult("dkim", "permerror", DOMAIN, "dkimpy"),)
    garbage = message("DKIM-Signature: this is not a tag list")
    assert verify_dkim(garbage, dnsfunc=dns_stub(key)) == (AuthResult("dkim", "permerror", "", "dkimpy"),)


def test_dkim_message_dkimpy_cannot_read(key):
    signed = b"DKIM-Signature: v=1; d=zylker.example\r\nnot a header line\r\nFrom: ann@zylker.example\r\n\r\nHi\r\n"
    assert verify_dkim(signed, dnsfunc=dns_stub(key)) == (AuthResult("dkim", "permerror", "", "dkimpy"),)
    # A "DKIM-Signature:" line in the body is no signature.
    unsigned = b"not a header line\r\nFrom: ann@zylker.example\r\n\r\nDKIM-Signature: x\r\n"
    assert verify_dkim(unsigned, dnsfunc=dns_stub(key)) == ()


def test_dkim_no_signature(key):
    assert verify_dkim(message(), dnsfunc=dns_stub(key)) == ()
    assert verify_dkim(b"", dnsfunc=dns_stub(key)) == ()


def test_dkim_several_signatures_topmost_first_and_capped(key, signed):
    bad = "DKIM-Signature: v=1; a=rsa-sha256; d=other.example; s=x; h=from; bh=AAAA; b=AAAA"
    raw = signing.sign(message(bad), DOMAIN, SELECTOR, key) + message(bad)
    assert verify_dkim(raw, dnsfunc=dns_stub(key)) == (
        AuthResult("dkim", "pass", DOMAIN, "dkimpy"),
        AuthResult("dkim", "permerror", "other.example", "dkimpy"),  # no key for other.example
    )
    assert verify_dkim(raw, dnsfunc=dns_stub(key), max_signatures=1) == (AuthResult("dkim", "pass", DOMAIN, "dkimpy"),)
    assert verify_dkim(raw, dnsfunc=dns_stub(key), max_signatures=0) == ()


# ---------------------------------------------------------------- spam_verdict


def spam(*headers: str, review: float | None = 5.0) -> SpamVerdict:
    return spam_verdict(parse_message(message(*headers)), review)


def test_spam_no_headers():
    assert spam() == SpamVerdict(False, None, "")
    assert spam(review=None) == SpamVerdict(False, None, "")


@pytest.mark.parametrize("value", ["YES", "yes", " Yes "])
def test_spam_flag_yes(value):
    assert spam(f"X-Spam-Flag: {value}", review=None) == SpamVerdict(True, None, "X-Spam-Flag: " + value.strip())


def test_spam_flag_no():
    assert spam("X-Spam-Flag: NO").flagged is False


def test_spam_score_above_and_below():
    assert spam("X-Spam-Score: 7.3") == SpamVerdict(True, 7.3, "X-Spam-Score: 7.3 > 5.0")
    assert spam("X-Spam-Score: 2.1") == SpamVerdict(False, 2.1, "X-Spam-Score: 2.1 <= 5.0")
    assert spam("X-Spam-Score: 5.0") == SpamVerdict(False, 5.0, "X-Spam-Score: 5.0 <= 5.0")  # above, not at
    assert spam("X-Spam-Score: 7.3 (+++++++)") == SpamVerdict(True, 7.3, "X-Spam-Score: 7.3 > 5.0")  # Exim


def test_spam_score_without_review_score_never_flags():
    assert spam("X-Spam-Score: 99.0", review=None) == SpamVerdict(False, 99.0, "X-Spam-Score: 99.0")


def test_spam_status():
    folded = "X-Spam-Status: No, score=7.3 required=9.0 tests=BAYES_99,\r\n\tURIBL_BLOCKED autolearn=no version=4.0.0"
    assert spam(folded) == SpamVerdict(True, 7.3, "X-Spam-Status: No, score=7.3 required=9.0 > 5.0")
    assert spam(folded, review=8.0) == SpamVerdict(False, 7.3, "X-Spam-Status: No, score=7.3 required=9.0 <= 8.0")
    # "Yes" is SpamAssassin's own verdict (it writes X-Spam-Flag: YES with it).
    assert spam("X-Spam-Status: Yes, score=3.0 required=2.0 tests=X", review=None) == SpamVerdict(
        True, 3.0, "X-Spam-Status: Yes, score=3.0 required=2.0")


def test_spamd_result():
    value = "X-Spamd-Result: default: False [12.40 / 15.00];\r\n\tBAYES_SPAM(5.10)[99.99%];\r\n\tR_SPF_FAIL(1.00)[-all]"
    assert spam(value) == SpamVerdict(True, 12.4, "X-Spamd-Result: default: False [12.40 / 15.00] > 5.0")
    assert spam(value, review=20.0).flagged is False
    assert spam(value, review=None) == SpamVerdict(False, 12.4, "X-Spamd-Result: default: False [12.40 / 15.00]")
    # True: rspamd's own action says spam, whatever our review score.
    flagged = "X-Spamd-Result: default: True [16.00 / 15.00]; GTUBE(0.00)[]"
    assert spam(flagged, review=None) == SpamVerdict(True, 16.0, "X-Spamd-Result: default: True [16.00 / 15.00]")


def test_rspamd_score():
    assert spam("X-Rspamd-Score: 12.4") == SpamVerdict(True, 12.4, "X-Rspamd-Score: 12.4 > 5.0")
    assert spam("X-Rspamd-Score: -0.5") == SpamVerdict(False, -0.5, "X-Rspamd-Score: -0.5 <= 5.0")


def test_spam_topmost_header_of_each_kind():
    assert spam("X-Spam-Score: 1.0", "X-Spam-Score: 9.0") == SpamVerdict(False, 1.0, "X-Spam-Score: 1.0 <= 5.0")
    assert spam("X-Spam-Flag: NO", "X-Spam-Flag: YES").flagged is False


def test_spam_any_score_above_flags():
    # SpamAssassin says little, rspamd says much: the rspamd score flags.
    verdict = spam("X-Spam-Score: 1.0", "X-Rspamd-Score: 8.0")
    assert verdict == SpamVerdict(True, 8.0, "X-Rspamd-Score: 8.0 > 5.0")


def test_spam_score_reported_is_the_first_kind_unless_another_flagged():
    assert spam("X-Rspamd-Score: 2.0", "X-Spam-Score: 1.0") == SpamVerdict(False, 1.0, "X-Spam-Score: 1.0 <= 5.0")
    assert spam("X-Rspamd-Score: 1.0", "X-Spam-Score: 7.3", "X-Spam-Flag: YES", review=None) == SpamVerdict(
        True, 7.3, "X-Spam-Flag: YES")


@pytest.mark.parametrize("header", [
    "X-Spam-Score: 1" + "0" * 400,  # inf as a float
    "X-Spam-Score: lots", "X-Spam-Score: nan", "X-Spam-Score: inf", "X-Spam-Score: 7.3.1",
    "X-Spam-Score: ", "X-Rspamd-Score: 1e400", "X-Spamd-Result: default: Maybe [12 / 15]",
    "X-Spam-Status: Perhaps, score=9", "X-Spamd-Result: default: False [x / 15.00]",
])
def test_spam_unparseable_numbers_ignored(header):
    assert spam(header, review=0.0) == SpamVerdict(False, None, "")


def test_dmarc_none_means_no_policy_and_an_aligned_dkim_pass_meets_dmarc() -> None:
    results = [AuthResult("dmarc", "none", "zylker.example", "mx.zylker.example"),
               AuthResult("dkim", "pass", "zylker.example", "mx.zylker.example")]
    assert meets(results, "dmarc", "zylker.example")[0] is True
    assert meets(results[:1], "dmarc", "zylker.example")[0] is False
