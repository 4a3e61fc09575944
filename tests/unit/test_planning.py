"""Planning and committing a filing, and the stored decision it becomes.

The dropbox plan reads nothing; the alias plan reads the thread, the record's
contact and stage (here from a SQLite file with the demo rules, no server).  The
plan is immutable data; committing it returns the Filing whose JSON is the stored
decision."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.errors import PermanentFailure
from gateway.filing import alias, dropbox, file
from gateway.outcome import (
    AliasDecision,
    DropboxPlan,
    DropNoise,
    JoinRecord,
    Link,
    NewRecord,
    Noise,
    PersonWanted,
    RawDecision,
    RelayDecision,
    StageChange,
    decision_from_json,
    decision_json,
)
from gateway.parse import parse_message
from gateway.routing import AliasRoute, DropboxRoute
from tests.helpers import message

H = "hashimoto@zylker.example"


def dropbox_route(rules, email=H):  # type: ignore[no-untyped-def]
    return DropboxRoute("zylker", rules.orgs["zylker"].users[email])


def alias_route(rules, address):  # type: ignore[no-untyped-def]
    return AliasRoute(rules.aliases[address].org_id, rules.aliases[address])


# --- dropbox ----------------------------------------------------------------------------


def test_dropbox_plan_names_the_customers_and_how_to_find_them(rules):
    parsed = parse_message(message(
        frm=f"Taro <{H}>", to="Charles <Charless@Zillum.com>, kitazawa@zylker.example, sales@in.zylker.example",
        cc="b@customer.example, charless@zillum.com"))
    plan = dropbox.plan(rules, dropbox_route(rules), parsed, H)
    assert isinstance(plan, DropboxPlan)
    # The sender, the organisation's own people and gateway addresses are not customers.
    assert plan.customers == ("charless@zillum.com", "b@customer.example")
    # Sorted by address: concurrent filings lock rows in one order.
    assert plan.wanted == (PersonWanted("b@customer.example", ("contact", "lead"), "lead"),
                           PersonWanted("charless@zillum.com", ("contact", "lead"), "lead"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.sender = "x@y"  # type: ignore[misc]


def test_dropbox_plan_refuses_an_unregistered_sender(rules):
    parsed = parse_message(message(frm="someone@zylker.example"))
    with pytest.raises(PermanentFailure) as refused:
        dropbox.plan(rules, dropbox_route(rules), parsed, "someone@zylker.example")
    assert refused.value.reply.code == 550 and "not registered" in refused.value.detail


# --- alias ------------------------------------------------------------------------------


def test_alias_plan_new_record_then_a_reply_joins_and_reopens(database, bound):
    route = alias_route(bound, "service@in.zylker.example")
    first = parse_message(message(frm="Charles Stone <charles@zillum.com>", to="service@in.zylker.example",
                                  subject="Printer jam", message_id="<first@zillum.com>"))
    with database.read() as conn:
        plan = alias.plan(conn, bound, route, first, "charles@zillum.com")
    assert plan.thread.method == "none" and plan.noise is None
    assert isinstance(plan.action, NewRecord)
    assert (plan.action.title, plan.action.first_name, plan.action.last_name) == ("Printer jam", "Charles", "Stone")
    assert plan.action.contact == PersonWanted("charles@zillum.com", ("contact",), "contact")

    filing = database.writing(file, bound, route, first, "charles@zillum.com")
    decision = filing.decision
    assert isinstance(decision, AliasDecision) and decision.new_record and filing.result == "filed"
    assert decision.record is not None and decision.record.action == "created"
    record_id = decision.record.id
    assert decision.contact is not None and decision.contact.action == "created"
    first_stage = bound.orgs["zylker"].pipelines[route.alias.pipeline].first_stage
    assert decision.stage_change == StageChange(None, first_stage, "created")

    # The record is resolved: a reply from its contact reopens it.
    from gateway.store import records

    resolved = next(iter(route.alias.reopen_from))
    database.writing(records.set_stage, record_id, resolved)
    reply = parse_message(message(frm="charles@zillum.com", to="service@in.zylker.example", subject="Re: Printer jam",
                                  headers={"In-Reply-To": "<first@zillum.com>"}))
    with database.write() as conn:
        plan = alias.plan(conn, bound, route, reply, "charles@zillum.com")
    assert plan.thread.method == "in-reply-to" and plan.thread.record_id == record_id
    assert plan.action == JoinRecord(record_id, link_contact=decision.contact.id, participants=("charles@zillum.com",),
                                     stage_change=StageChange(resolved, route.alias.reopen_to, "reply"))


def test_alias_plan_drops_noise_outside_a_thread_and_joins_without_reopen_inside(database, bound):
    route = alias_route(bound, "service@in.zylker.example")
    bounce = parse_message(message(frm="MAILER-DAEMON@zillum.com", to="service@in.zylker.example"))
    with database.read() as conn:
        plan = alias.plan(conn, bound, route, bounce, "")
    assert plan.noise == Noise("bounce", "null reverse-path") and plan.action == DropNoise()
    filing = database.writing(file, bound, route, bounce, "")
    assert filing.result == "dropped" and filing.email_id is None
    assert decision_json(filing.decision)["outcome"] == "dropped"


def test_the_same_message_again_is_a_duplicate(database, bound):
    route = dropbox_route(bound)
    parsed = parse_message(message(frm=H, to="c@customer.example", message_id="<once@zylker.example>"))
    first = database.writing(file, bound, route, parsed, H)
    again = database.writing(file, bound, route, parsed, H)
    assert first.result == "filed" and first.email_id is not None
    assert again.result == "duplicate" and again.decision is None


# --- the stored decision ------------------------------------------------------------------


def test_decisions_round_trip_through_their_json(database, bound):
    route = dropbox_route(bound)
    parsed = parse_message(message(frm=H, to="c@customer.example"))
    filed = database.writing(file, bound, route, parsed, H)
    stored = decision_json(filed.decision)
    assert stored["route"] == "dropbox" and stored["people"][0]["action"] == "created"
    assert decision_from_json(stored) == filed.decision
    # Ids of creations that were rolled back are not shown (gateway explain).
    shown = decision_json(filed.without_new_ids().decision)
    assert "id" not in shown["people"][0] and "id" in stored["people"][0]


def test_relay_decisions_round_trip():
    stored = {"route": "relay", "login": "crm@zylker.example", "class": "bulk",
              "thread": {"method": "header", "evidence": "X-Gateway-Record: 3", "record_id": 3},
              "token_added": True, "smarthost": "smtp://127.0.0.1:2525", "accepted": 1,
              "refused": {"b@x.example": "550 no"}, "links": [{"kind": "record", "id": 3}]}
    decision = decision_from_json(stored)
    assert isinstance(decision, RelayDecision) and decision.links == (Link("record", 3),)
    assert decision_json(decision) == stored


def test_unknown_decision_shapes_are_kept_as_stored():
    relay = {"route": "relay", "login": "crm@zylker.example", "links": [{"kind": "record", "id": 3}]}
    assert decision_from_json(relay) == RawDecision(relay)
    assert decision_json(decision_from_json(relay)) == relay
    odd = {"route": "alias", "outcome": "filed", "alias": "x"}  # missing parts: kept, not guessed
    assert decision_json(decision_from_json(odd)) == odd


def test_issue_15_and_16_decision_parts_round_trip():
    """Forward, authentication check and hold of a dropbox decision; participants, the
    answered dropbox mail, a hold and a spam verdict of an alias decision: each read back
    as the typed outcome it was stored from."""
    from gateway.outcome import AliasDecision, AuthCheck, DropboxDecision, ForwardSeen, Hold, ThreadMatch, Touched

    dropbox_held = DropboxDecision(
        "h@zylker.example", "h@zylker.example", "contacts_then_leads", "lead", ("c@zillum.com",), (),
        ForwardSeen("gmail", "original", "received", "c@zillum.com", "2026-11-30T01:00:00Z"),
        AuthCheck("dmarc", False, "no dmarc pass", (("dmarc", "fail", "zylker.example", "mx.zylker.example"),)),
        Hold("authentication", "no dmarc pass", "h@zylker.example", "h@zylker.example", 7))
    alias_held = AliasDecision("service@in.zylker.example", "Service", "c@zillum.com", None,
                               ThreadMatch(None, "none", dropbox_email=4), "held",
                               held=Hold("new_record_cap", "21 new records", "service@in.zylker.example",
                                         "c@zillum.com", 8))
    alias_filed = AliasDecision("service@in.zylker.example", "Service", "c@zillum.com", None,
                                ThreadMatch(3, "dropbox", "a@x (dropbox email 4) answers b@y", dropbox_email=4),
                                "filed", record=Touched(3, "joined"), participants=("c@zillum.com", "d@zillum.com"),
                                spam="X-Spam-Score: 6.5 > 5.0")
    for decision in (dropbox_held, alias_held, alias_filed):
        stored = decision_json(decision)
        assert decision_from_json(stored) == decision
        assert decision_json(decision_from_json(stored)) == stored
