"""Thread evidence order and record tokens (pure parts of gateway/filing/threads.py and
gateway/rules/index.py)."""

from __future__ import annotations

from gateway.filing.threads import first_evidence, header_evidence, tokens_in
from gateway.outcome import ThreadMatch
from gateway.parse import parse_message
from gateway.rules.index import default_token_prefix, format_token, record_token
from tests.helpers import message


def parsed_with(**headers: str):  # type: ignore[no-untyped-def]
    return parse_message(message(headers=headers))


def test_in_reply_to_first_then_references_newest_first():
    parsed = parsed_with(**{"In-Reply-To": "<c@x>", "References": "<a@x> <b@x> <c@x>"})
    candidates, ids = header_evidence(parsed)
    assert candidates == [("in-reply-to", "c@x"), ("references", "c@x"), ("references", "b@x"),
                          ("references", "a@x")]
    assert ids == ["c@x", "b@x", "a@x"]  # each id looked up once


def test_lookups_are_bounded():
    refs = " ".join(f"<m{i}@x>" for i in range(300))
    _, ids = header_evidence(parsed_with(References=refs))
    assert len(ids) == 100 and ids[0] == "m299@x"


def test_first_evidence_follows_the_order_not_the_lookup_result():
    candidates = [("in-reply-to", "c@x"), ("references", "b@x"), ("references", "a@x")]
    assert first_evidence(candidates, {"a@x": 1, "b@x": 2}) == ThreadMatch(2, "references", "b@x")
    assert first_evidence(candidates, {"c@x": 7, "a@x": 1}) == ThreadMatch(7, "in-reply-to", "c@x")
    assert first_evidence(candidates, {}) is None


def test_tokens_in_subjects():
    assert tokens_in("Re: your order [#S-42] and [#s-7]", "[#{prefix}-{id}]", "S") == [42, 7]
    assert tokens_in("Re: [#D-42]", "[#{prefix}-{id}]", "S") == []
    assert tokens_in("[#S-]", "[#{prefix}-{id}]", "S") == []
    assert tokens_in("[#S-1234567890123456789]", "[#{prefix}-{id}]", "S") == []  # 19 digits: not an id
    assert tokens_in("(ticket S/42)", "(ticket {prefix}/{id})", "S") == [42]  # the format's own punctuation


def test_record_token_uses_the_pipelines_prefix_or_derives_one(rules):
    org = rules.orgs["zylker"]
    name, pipe = next(iter(org.pipelines.items()))
    assert record_token(org, name, 42) == format_token(org.record_token, pipe.token_prefix, 42)
    # A pipeline no longer in the rules: the prefix derived from its name.
    assert record_token(org, "After sales 2", 5) == format_token(org.record_token, "AFTERSALES2", 5)
    assert default_token_prefix("--") == "R"
