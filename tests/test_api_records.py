"""/v1/records over real HTTP against the running daemon: pages and filters, one
record as `gateway record show --json`, PATCH of stage, owner and tags (the actor in
the history, 422 naming what is allowed, nothing half-written), reopen after an API
move, tokens and organisations (401/403/404), bad input."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.helpers import message

PROBLEM = "application/problem+json"
SERVICE = "service@in.zylker.example"
SALES = "sales@in.zylker.example"
HELP = "help@in.lumen.example"
CUSTOMER = "charles@zillum.com"
H = "hashimoto@zylker.example"
K = "kitazawa@zylker.example"


def new_record(gw, alias=SERVICE, subject="Printer is broken", message_id=None):
    """A record made as customers make them: mail to a pipeline alias.  Its id."""
    before = {r["id"] for r in gw.export()["records"]}
    data = message(frm=f"Charles Smith <{CUSTOMER}>", to=alias, subject=subject, message_id=message_id or True)
    assert gw.lmtp(CUSTOMER, [alias], data).codes == [250]
    (made,) = [r["id"] for r in gw.export()["records"] if r["id"] not in before]
    return made


def all_pages(api, **params):
    """Every item of /records with ``params``, following next_cursor; (items, pages)."""
    items, pages, cursor = [], 0, None
    while True:
        r = api.get("/records", params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages


def test_list_pages_through_the_organisations_records_only(gw):
    service = [new_record(gw, SERVICE, f"ticket {i}") for i in range(3)]
    sales = [new_record(gw, SALES, f"deal {i}") for i in range(2)]
    lumen = new_record(gw, HELP, "lumen's")
    with gw.api(gw.token(scope="read")) as api:
        items, pages = all_pages(api, limit=2)
        assert [r["id"] for r in items] == sorted(service + sales) and pages == 3
        first = api.get("/records", params={"limit": 500}).json()
        assert first["next_cursor"] is None and len(first["items"]) == 5
    shown = gw.record(service[0])
    summary = next(r for r in items if r["id"] == service[0])
    assert summary == {
        "id": service[0], "org": "zylker", "pipeline": "Service", "stage": "Open", "title": "ticket 0",
        "token": f"[#S-{service[0]}]", "owner": K, "tags": ["support"], "contact_id": shown["contact"]["id"],
        "created_at": shown["created_at"], "updated_at": shown["updated_at"],
    }
    with gw.api(gw.token("lumen", scope="read")) as api:
        assert [r["id"] for r in api.get("/records").json()["items"]] == [lumen]


def test_filters_by_pipeline_stage_and_updated_since(gw):
    service = [new_record(gw, SERVICE, f"ticket {i}") for i in range(3)]
    sales = [new_record(gw, SALES, f"deal {i}") for i in range(3)]
    with gw.api(gw.token()) as api:
        assert api.patch(f"/records/{service[1]}", json={"stage": "In Progress"}).status_code == 200
        moved = api.patch(f"/records/{sales[2]}", json={"stage": "Proposal"}).json()

        def ids(**params):
            return [r["id"] for r in all_pages(api, limit=1, **params)[0]]

        assert ids(pipeline="Service") == service
        assert ids(pipeline="Sales") == sales
        assert ids(stage="Open") == [service[0], service[2]]
        assert ids(pipeline="Sales", stage="Qualification") == sales[:2]
        assert ids(pipeline="Service", stage="In Progress") == [service[1]]
        # updated_since is inclusive; the same instant in another zone, or without one (UTC), alike.
        since = datetime.fromisoformat(moved["updated_at"].replace("Z", "+00:00"))
        assert ids(updated_since=moved["updated_at"]) == [sales[2]]
        assert ids(updated_since=since.astimezone(timezone(timedelta(hours=9))).isoformat()) == [sales[2]]
        assert ids(updated_since=since.replace(tzinfo=None).isoformat()) == [sales[2]]
        assert ids(updated_since=(since + timedelta(microseconds=1)).isoformat()) == []
        assert ids(updated_since="2000-01-01T00:00:00Z") == service + sales
        assert ids(updated_since=moved["updated_at"], pipeline="Service") == []
        # A pipeline or stage the rules do not know is a mistake, not "no records".
        r = api.get("/records", params={"pipeline": "Sale"})
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
        assert r.json()["allowed"] == ["Sales", "Service"] and "Sales, Service" in r.json()["detail"]
        r = api.get("/records", params={"pipeline": "Service", "stage": "Qualification"})
        assert r.status_code == 422
        assert r.json()["allowed"] == ["Open", "In Progress", "Reopened", "Resolved", "Closed"]
        r = api.get("/records", params={"stage": "Nope"})
        assert r.status_code == 422 and "Qualification" in r.json()["detail"] and "Reopened" in r.json()["detail"]


def test_get_is_what_record_show_prints(gw):
    first = new_record(gw, SERVICE, "Broken", "<g1@zillum.com>")
    reply = message(frm=CUSTOMER, to=SERVICE, subject="Re: Broken", headers={"In-Reply-To": "<g1@zillum.com>"})
    assert gw.lmtp(CUSTOMER, [SERVICE], reply).codes == [250]
    with gw.api(gw.token(scope="read")) as api:
        r = api.get(f"/records/{first}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body == gw.record(first) == json.loads(gw.cli("record", "show", str(first), "--json").stdout)
    assert body["token"] == f"[#S-{first}]" and len(body["conversation"]) == 2 and len(body["decisions"]) == 2
    assert body["conversation"][0]["message_id"] == "g1@zillum.com"
    # Entries nobody moved keep today's shape: no "actor".
    (created,) = body["stage_history"]
    assert created == {"from": None, "to": "Open", "at": created["at"], "cause": "created",
                       "email_id": body["conversation"][0]["id"]}


def test_patch_stage_owner_and_tags(gw):
    rid = new_record(gw)
    before = gw.record(rid)
    with gw.api(gw.token(name="crm-sync")) as api:
        r = api.patch(f"/records/{rid}", json={"stage": "In Progress"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body == gw.record(rid)
        assert body["stage"] == "In Progress" and body["updated_at"] > before["updated_at"]
        created, moved = body["stage_history"]
        assert "actor" not in created
        assert (moved["from"], moved["to"], moved["cause"], moved["actor"], moved["email_id"]) == (
            "Open", "In Progress", "manual", "crm-sync", None)

        body = api.patch(f"/records/{rid}", json={"owner": "Hashimoto@Zylker.example",
                                                  "tags": ["vip", "support", "vip", "日本語"]}).json()
        assert (body["owner"], body["tags"]) == (H, ["vip", "support", "日本語"])
        assert body["stage"] == "In Progress" and len(body["stage_history"]) == 2
        stamp = body["updated_at"]

        # The same values again change nothing: no history entry, updated_at stays.
        body = api.patch(f"/records/{rid}", json={"stage": "In Progress", "owner": H,
                                                  "tags": ["vip", "support", "日本語"]}).json()
        assert len(body["stage_history"]) == 2 and body["updated_at"] == stamp

        body = api.patch(f"/records/{rid}", json={"owner": None, "tags": []}).json()
        assert (body["owner"], body["tags"]) == (None, []) and body["updated_at"] > stamp

        tags = [f"t{i:02}-" + "x" * 96 for i in range(50)]  # the limits: 50 tags of 100 characters
        assert api.patch(f"/records/{rid}", json={"tags": tags}).json()["tags"] == tags
    listed = gw.export()["records"][0]
    assert (listed["stage"], listed["owner"], listed["tags"]) == ("In Progress", None, tags)
    assert "(manual by crm-sync)" in gw.cli("record", "show", str(rid)).stdout.decode()
    # The CLI's moves have no actor.
    gw.cli("record", "stage", str(rid), "Resolved")
    assert "actor" not in gw.record(rid)["stage_history"][-1]


def test_unknown_stage_or_owner_is_422_naming_the_allowed_values_and_writes_nothing(gw):
    rid = new_record(gw)
    before = gw.record(rid)
    with gw.api(gw.token()) as api:
        r = api.patch(f"/records/{rid}", json={"stage": "Qualification", "tags": ["changed"]})
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
        problem = r.json()
        assert problem["allowed"] == ["Open", "In Progress", "Reopened", "Resolved", "Closed"]
        assert "not a stage of Service" in problem["detail"] and "Open, In Progress" in problem["detail"]

        for owner in ("nobody@zylker.example", "owner@lumen.example"):
            r = api.patch(f"/records/{rid}", json={"stage": "In Progress", "owner": owner, "tags": ["x"]})
            assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
            assert r.json()["allowed"] == [H, K, "suzuki@zylker.example"]
            assert r.json()["detail"].startswith("owner: ") and H in r.json()["detail"]
    assert gw.record(rid) == before  # nothing of the rejected changes was written


def test_reply_reopens_a_record_closed_through_the_api(gw):
    rid = new_record(gw, SERVICE, "Broken", "<r1@zillum.com>")
    with gw.api(gw.token(name="helpdesk")) as api:
        assert api.patch(f"/records/{rid}", json={"stage": "Resolved"}).json()["stage"] == "Resolved"
    reply = message(frm=CUSTOMER, to=SERVICE, subject="Re: Broken", headers={"In-Reply-To": "<r1@zillum.com>"})
    assert gw.lmtp(CUSTOMER, [SERVICE], reply).codes == [250]
    shown = gw.record(rid)
    assert shown["stage"] == "Reopened"
    assert [(h["from"], h["to"], h["cause"], h.get("actor")) for h in shown["stage_history"]] == [
        (None, "Open", "created", None), ("Open", "Resolved", "manual", "helpdesk"),
        ("Resolved", "Reopened", "reply", None)]


def test_tokens_and_organisations(gw):
    rid = new_record(gw)
    other = new_record(gw, HELP, "lumen's")
    before = gw.record(rid)
    with gw.api() as api:
        for r in (api.get("/records"), api.get(f"/records/{rid}"), api.patch(f"/records/{rid}", json={"tags": []})):
            assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
    with gw.api(gw.token(scope="read")) as api:
        assert api.get(f"/records/{rid}").status_code == 200
        r = api.patch(f"/records/{rid}", json={"tags": []})
        assert r.status_code == 403 and r.headers["content-type"] == PROBLEM and "read scope" in r.json()["detail"]
    with gw.api(gw.token("lumen")) as api:
        for r in (api.get(f"/records/{rid}"), api.patch(f"/records/{rid}", json={"tags": []})):
            assert r.status_code == 404 and r.json()["detail"] == f"no record {rid}"
        assert api.get(f"/records/{other}").json()["org"] == "lumen"
        # lumen's stages and users are not zylker's.
        r = api.patch(f"/records/{other}", json={"stage": "Resolved"})
        assert r.status_code == 422 and r.json()["allowed"] == ["New", "Working", "Reopened", "Solved"]
        r = api.patch(f"/records/{other}", json={"owner": K})
        assert r.status_code == 422 and r.json()["allowed"] == ["owner@lumen.example"]
    with gw.api(gw.token()) as api:
        assert api.get(f"/records/{other}").status_code == 404
        assert api.get("/records/999999").status_code == 404
    assert gw.record(rid) == before


BAD_BODIES = [
    b"{not json",
    b'{"stage": "In Progress"',
    b"",
    b"[]",
    b'"In Progress"',
    b"{}",
    b'{"stage": null}',
    b'{"tags": null}',
    b'{"stage": 5}',
    b'{"stage": ["In Progress"]}',
    b'{"stage": ""}',
    json.dumps({"stage": "x" * 101}).encode(),
    b'{"owner": 1}',
    b'{"owner": ""}',
    json.dumps({"owner": "a" * 310 + "@zylker.example"}).encode(),
    b'{"tags": "vip"}',
    b'{"tags": [1]}',
    b'{"tags": [""]}',
    b'{"tags": [null]}',
    json.dumps({"tags": ["x" * 101]}).encode(),
    json.dumps({"tags": [f"t{i}" for i in range(51)]}).encode(),
    json.dumps({"tags": ["bad\u0000tag"]}).encode(),
    json.dumps({"tags": ["line\nbreak"]}).encode(),
    json.dumps({"tags": [" padded"]}).encode(),
    b'{"stage": "In Progress", "title": "renamed"}',
    b'{"stage": "In Progress", "owner_id": 1}',
    b'{"stage": "In Progress", "tags": ["ok"], "extra": {}}',
]


@pytest.mark.parametrize("body", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_bad_patch_bodies_are_4xx_problems_and_write_nothing(gw, body):
    rid = new_record(gw)
    before = gw.record(rid)
    with gw.api(gw.token()) as api:
        r = api.patch(f"/records/{rid}", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 and r.headers["content-type"] == PROBLEM, (r.status_code, r.text)
    problem = r.json()
    assert problem["status"] == r.status_code and problem["detail"]
    assert gw.record(rid) == before


def test_bad_paths_and_queries_are_4xx_problems(gw):
    rid = new_record(gw)
    before = gw.record(rid)
    with gw.api(gw.token()) as api:
        responses = [
            api.get("/records/abc"), api.get("/records/0"), api.get(f"/records/{2**63}"),
            api.get(f"/records/{10**30}"), api.patch(f"/records/{2**63}", json={"tags": []}),
            api.patch(f"/records/{rid}", content=b"stage=Closed",
                      headers={"Content-Type": "application/x-www-form-urlencoded"}),
            api.patch(f"/records/{rid}", content=b'{"stage": "Closed"}', headers={"Content-Type": "text/plain"}),
        ]
        for params in ({"limit": 0}, {"limit": 501}, {"limit": "ten"}, {"cursor": "garbage"},
                       {"cursor": "x" * 101}, {"updated_since": "yesterday"}, {"updated_since": "2026-13-01"},
                       {"updated_since": "0001-01-01T00:00:00+01:00"}, {"pipeline": "x" * 101},
                       {"stage": "x" * 101}, {"pipeline": ""}):
            responses.append(api.get("/records", params=params))
    for r in responses:
        assert 400 <= r.status_code < 500 and r.headers["content-type"] == PROBLEM, (r.request.url, r.text)
        assert r.json()["detail"]
    assert gw.record(rid) == before
