"""Recipient address -> route: pure, from the compiled rules."""

from __future__ import annotations

import pytest

from gateway.routing import AliasRoute, DropboxCandidate, classify, dropbox_address, serves_domain


def test_alias_address_is_its_pipeline_route(rules):
    route = classify(rules, "Service@IN.Zylker.example")
    assert isinstance(route, AliasRoute)
    assert (route.org_id, route.alias.pipeline, route.key) == ("zylker", route.alias.pipeline, f"alias:{route.alias.pipeline}")


def test_dropbox_address_is_a_candidate_to_check_in_the_database(rules):
    token = "a" * 32
    found = classify(rules, dropbox_address(token, "in.lumen.example"))
    assert found == DropboxCandidate("lumen", token)


@pytest.mark.parametrize("address", [
    "nobody@in.zylker.example",            # unknown local part
    "bcc-short@in.zylker.example",         # not a token
    "bcc-" + "1" * 32 + "@in.zylker.example",  # 0, 1, 8, 9 are not base32
    "sales@zylker.example",                # the organisation's own domain, not the gateway's
    "sales@in.elsewhere.example",
])
def test_anything_else_is_unknown(rules, address):
    assert classify(rules, address) is None


def test_served_domains_are_the_gateway_domains_only(rules):
    assert serves_domain(rules, "in.zylker.example") and serves_domain(rules, "in.lumen.example")
    assert not serves_domain(rules, "zylker.example")
    assert not serves_domain(rules, "example.com")
