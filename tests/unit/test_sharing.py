"""SPEC 2.12 sharing: who sees a filed email (gateway/sharing.py), and the rule-file
settings it reads (share, sharing_excluded_domains).  Pure: no database, no server."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest
from pydantic import ValidationError

from gateway import sharing
from gateway.rules.index import OrgEntry, RuleIndex
from gateway.rules.schema import Dropbox, Organisation

H, K, S = "hashimoto@zylker.example", "kitazawa@zylker.example", "suzuki@zylker.example"
HID, KID, SID = 1, 2, 3


def org(rules: RuleIndex, share: tuple[str, ...] = (), excluded: tuple[str, ...] = ()) -> OrgEntry:
    """The demo organisation with ids: hashimoto shares ``share`` (custom)."""
    base = rules.orgs["zylker"]
    users = {
        HID: replace(base.users[H], id=HID, sharing="custom", share=frozenset(share)),
        KID: replace(base.users[K], id=KID),
        SID: replace(base.users[S], id=SID),
    }
    return replace(base, users_by_id=MappingProxyType(users), sharing_excluded_domains=frozenset(excluded))


def decide(o: OrgEntry, viewer: int | None, visibility: str, customers: list[str], filed_by: int | None = HID):
    return sharing.decide(o, viewer, filed_by, visibility, customers)


@pytest.mark.parametrize("visibility", ["private", "custom", "public"])
def test_the_filer_and_organisation_tokens_see_everything(rules, visibility):
    o = org(rules, excluded=("zillum.com",))
    assert decide(o, HID, visibility, ["charless@zillum.com"]) == sharing.Decision(True, "filer")
    assert decide(o, None, visibility, ["charless@zillum.com"]) == sharing.Decision(True, "organisation")


def test_private_mail_is_the_filers_only(rules):
    assert decide(org(rules, share=("zillum.com",)), KID, "private", ["charless@zillum.com"]) == \
        sharing.Decision(False, "private")


def test_public_mail_is_everyones(rules):
    assert decide(org(rules), KID, "public", ["charless@zillum.com"]) == sharing.Decision(True, "public")
    # Mail no user filed (alias) is public too.
    assert decide(org(rules), KID, "public", [], filed_by=None).visible


def test_custom_shares_the_mail_of_chosen_addresses(rules):
    o = org(rules, share=("charless@zillum.com",))
    assert decide(o, KID, "custom", ["charless@zillum.com"]) == sharing.Decision(True, "shared:charless@zillum.com")
    # The address only: not the rest of its domain.
    assert decide(o, KID, "custom", ["other@zillum.com"]) == sharing.Decision(False, "not-shared")


def test_custom_shares_the_mail_of_chosen_domains(rules):
    o = org(rules, share=("zillum.com",))
    assert decide(o, SID, "custom", ["anyone@zillum.com"]) == sharing.Decision(True, "shared:zillum.com")
    # The domain itself, not its subdomains or look-alikes.
    assert not decide(o, SID, "custom", ["a@sales.zillum.com"]).visible
    assert not decide(o, SID, "custom", ["a@notzillum.com"]).visible


def test_custom_mail_of_one_chosen_customer_among_others_is_shared(rules):
    o = org(rules, share=("charless@zillum.com",))
    assert decide(o, KID, "custom", ["boss@acme.example", "charless@zillum.com"]).visible


def test_custom_mail_without_customers_or_filer_is_not_shared(rules):
    o = org(rules, share=("zillum.com",))
    assert not decide(o, KID, "custom", []).visible
    # A filer gone from the rules has no share list any more.
    assert decide(o, KID, "custom", ["a@zillum.com"], filed_by=99) == sharing.Decision(False, "custom-no-filer")
    assert not decide(o, KID, "custom", ["a@zillum.com"], filed_by=None).visible


def test_an_excluded_domain_hides_mail_from_everyone_but_its_filer(rules):
    o = org(rules, share=("zillum.com",), excluded=("partner.example",))
    for visibility in ("public", "custom", "private"):
        assert decide(o, KID, visibility, ["a@zillum.com", "b@partner.example"]) == \
            sharing.Decision(False, "excluded:partner.example")
    assert decide(o, HID, "public", ["b@partner.example"]).visible
    # Mail no user filed has no filer to see it: only organisation tokens do.
    assert not decide(o, KID, "public", ["b@partner.example"], filed_by=None).visible
    assert decide(o, None, "public", ["b@partner.example"], filed_by=None).visible


def test_prefilter_names_the_users_who_share(rules):
    assert sharing.prefilter(org(rules), None) is None
    assert sharing.prefilter(org(rules), KID) == sharing.Prefilter(KID, frozenset())
    assert sharing.prefilter(org(rules, share=("zillum.com",)), KID) == sharing.Prefilter(KID, frozenset({HID}))


def test_share_entries_are_addresses_or_domains_normalised(rules):
    box = Dropbox(sharing="custom", share=["CharlesS@Zillum.COM", "Zillum.com.", "bücher.example"])
    assert box.share == ["charless@zillum.com", "zillum.com", "xn--bcher-kva.example"]
    assert rules.orgs["zylker"].users[H].share == frozenset()  # the shipped example is commented out


@pytest.mark.parametrize("share, error", [
    (["not a domain"], "not a domain name"),
    (["@zillum.com"], "not an e-mail address"),
    (["zillum.com", "ZILLUM.com"], "share entries repeat"),
    ([f"u{i}@zillum.com" for i in range(101)], "at most 100"),
    ("zillum.com", "valid list"),
])
def test_bad_share_lists_are_refused(share, error):
    with pytest.raises(ValidationError) as exc:
        Dropbox(sharing="custom", share=share)
    assert error in str(exc.value)


def test_sharing_excluded_domains_are_validated_and_normalised():
    base = {"id": "x", "gateway_domain": "in.x.example"}
    org_ = Organisation(**base, sharing_excluded_domains=["Partner.Example", "bücher.example"])
    assert org_.sharing_excluded_domains == ["partner.example", "xn--bcher-kva.example"]
    for bad, error in ((["partner"], "not a domain name"), (["a.example", "A.example"], "domains repeat"),
                       (["a@b.example"], "not a domain name")):
        with pytest.raises(ValidationError) as exc:
            Organisation(**base, sharing_excluded_domains=bad)
        assert error in str(exc.value)
