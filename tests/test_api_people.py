"""/v1/contacts and /v1/leads over real HTTP against the running daemon: list, filters
and pagination, get, create-or-update, delete, the NDJSON import, bad input, tokens
across organisations, and what the imported people mean to filing."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

import pytest

from gateway.api.pagination import encode

from tests.helpers import message

PROBLEM = "application/problem+json"
NDJSON = {"Content-Type": "application/x-ndjson"}
H = "hashimoto@zylker.example"
K = "kitazawa@zylker.example"
ITEM_KEYS = {"id", "email", "first_name", "last_name", "external_id", "owner", "source", "created_at", "updated_at"}


def lines(*items) -> bytes:
    """An NDJSON body: dicts as JSON, str/bytes as written."""
    return b"".join((json.dumps(i) if isinstance(i, dict) else i).encode() + b"\n" for i in items)


@pytest.mark.parametrize("collection", ["contacts", "leads"])
def test_create_then_update_by_email_and_by_external_id(gw, collection):
    with gw.api(gw.token()) as api:
        r = api.post(f"/{collection}", json={"email": " Ann@Example.COM ", "first_name": "Ann", "owner": H})
        assert r.status_code == 201, r.text
        ann = r.json()
        assert set(ann) == ITEM_KEYS
        assert (ann["email"], ann["first_name"], ann["last_name"], ann["owner"], ann["source"], ann["external_id"]) \
            == ("ann@example.com", "Ann", "", H, "api", None)
        assert ann["created_at"].endswith("Z") and ann["updated_at"] == ann["created_at"]
        assert r.headers["location"] == f"/v1/{collection}/{ann['id']}"
        # By email: the same row, the fields given change, the others stay.
        r = api.post(f"/{collection}", json={"email": "ann@example.com", "last_name": "Lee"})
        assert r.status_code == 200
        assert (r.json()["id"], r.json()["first_name"], r.json()["last_name"], r.json()["owner"]) \
            == (ann["id"], "Ann", "Lee", H)
        assert r.json()["updated_at"] > ann["updated_at"]
        # The row found by email takes the CRM's id; from then on that id finds it, even
        # with a new address.
        r = api.post(f"/{collection}", json={"email": "ann@example.com", "external_id": "crm-1"})
        assert (r.status_code, r.json()["id"], r.json()["external_id"]) == (200, ann["id"], "crm-1")
        r = api.post(f"/{collection}", json={"email": "ann.lee@example.com", "external_id": "crm-1", "owner": None})
        assert r.status_code == 200
        moved = r.json()
        assert (moved["id"], moved["email"], moved["owner"], moved["last_name"]) \
            == (ann["id"], "ann.lee@example.com", None, "Lee")
        # Nothing changed: 200, updated_at stays.
        r = api.post(f"/{collection}", json={"email": "ann.lee@example.com", "external_id": "crm-1"})
        assert (r.status_code, r.json()["updated_at"]) == (200, moved["updated_at"])
        # A new external_id with a new address is a new person.
        r = api.post(f"/{collection}", json={"email": "bob@example.com", "external_id": "crm-2"})
        assert r.status_code == 201
        # An address that is another person's (with its own external_id): 409, nothing written.
        r = api.post(f"/{collection}", json={"email": "bob@example.com", "external_id": "crm-1"})
        assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
        assert "bob@example.com is already" in r.json()["detail"]
        r = api.post(f"/{collection}", json={"email": "bob@example.com", "external_id": "crm-9"})
        assert r.status_code == 409 and "another external_id" in r.json()["detail"]
        assert api.get(f"/{collection}/{ann['id']}").json()["email"] == "ann.lee@example.com"
    assert gw.count(collection) == 2


def test_the_same_create_twice_makes_one_row_even_at_once(gw):
    body = {"email": "twice@example.com", "first_name": "Tw", "last_name": "Ice", "external_id": "x-1"}
    with gw.api(gw.token()) as api:
        first, second = api.post("/contacts", json=body), api.post("/contacts", json=body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"] and gw.count("contacts") == 1

    statuses: list[int] = []
    token = gw.token()

    def create(n: int) -> None:
        with gw.api(token) as api:
            statuses.append(api.post("/contacts", json={"email": f"race{n % 2}@example.com"}).status_code)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 6 + [201] * 2
    assert gw.count("contacts") == 3


def test_get_list_filters_and_pages(gw):
    with gw.api(gw.token()) as api:
        ids = [api.post("/leads", json={"email": f"p{n}@example.com", "first_name": f"P{n}"}).json()["id"]
               for n in range(7)]
        # Pages of 3 in id order, next_cursor passed back as cursor=, null on the last.
        seen, cursor, pages = [], None, 0
        while True:
            r = api.get("/leads", params={"limit": 3, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200
            body = r.json()
            pages += 1
            seen += [item["id"] for item in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == ids and pages == 3
        # One by id.
        r = api.get(f"/leads/{ids[2]}")
        assert r.status_code == 200 and r.json()["email"] == "p2@example.com" and set(r.json()) == ITEM_KEYS
        # email= (normalised like the stored address).
        r = api.get("/leads", params={"email": "P4@EXAMPLE.com"})
        assert [i["id"] for i in r.json()["items"]] == [ids[4]]
        assert api.get("/leads", params={"email": "nobody@example.com"}).json() == {"items": [], "next_cursor": None}
        # updated_since=: only what was created or changed at or after it.
        time.sleep(0.01)
        since = datetime.now(timezone.utc)
        time.sleep(0.01)
        api.post("/leads", json={"email": "p5@example.com", "last_name": "Changed"})
        api.post("/leads", json={"email": "p6@example.com", "first_name": "P6"})  # unchanged: not listed
        new = api.post("/leads", json={"email": "p7@example.com"}).json()["id"]
        r = api.get("/leads", params={"updated_since": since.isoformat().replace("+00:00", "Z")})
        assert [i["id"] for i in r.json()["items"]] == [ids[5], new]
        # Another offset, the same instant.
        local = since.astimezone(timezone.utc).replace(tzinfo=None).isoformat() + "+00:00"
        r2 = api.get("/leads", params={"updated_since": local, "limit": 1})
        assert [i["id"] for i in r2.json()["items"]] == [ids[5]] and r2.json()["next_cursor"]
        r3 = api.get("/leads", params={"updated_since": local, "limit": 1, "cursor": r2.json()["next_cursor"]})
        assert [i["id"] for i in r3.json()["items"]] == [new] and r3.json()["next_cursor"] is None
        # Contacts and leads are apart.
        assert api.get("/contacts").json()["items"] == []


def test_filed_people_have_updated_at_and_are_listed(gw):
    box = gw.dropbox(H)
    assert gw.lmtp(H, [box], message(to="filed@customer.example")).codes == [250]
    with gw.api(gw.token(scope="read")) as api:
        (lead,) = api.get("/leads").json()["items"]
    assert (lead["email"], lead["source"], lead["owner"]) == ("filed@customer.example", "dropbox", H)
    assert lead["updated_at"] == lead["created_at"]


def test_delete_keeps_the_mail_and_its_links(gw):
    # A contact made by email-in: a record has it, the mail links to it.
    customer = "charles@zillum.com"
    assert gw.lmtp(customer, ["service@in.zylker.example"],
                   message(frm=f"Charles <{customer}>", to="service@in.zylker.example")).codes == [250]
    ex = gw.export()
    (contact,), (record,), (mail,) = ex["contacts"], ex["records"], ex["emails"]
    assert record["contact_id"] == contact["id"]
    with gw.api(gw.token(scope="read")) as api:
        r = api.delete(f"/contacts/{contact['id']}")
        assert r.status_code == 403 and r.headers["content-type"] == PROBLEM
    with gw.api(gw.token()) as api:
        r = api.delete(f"/contacts/{contact['id']}")
        assert r.status_code == 204 and r.content == b""
        assert api.get(f"/contacts/{contact['id']}").status_code == 404
        assert api.delete(f"/contacts/{contact['id']}").status_code == 404
    ex = gw.export()
    assert ex["contacts"] == [] and ex["records"][0]["contact_id"] is None
    assert ex["emails"][0]["id"] == mail["id"]
    assert {"kind": "contact", "id": contact["id"]} in ex["emails"][0]["links"]  # kept as history
    assert gw.record(record["id"])["contact"] is None and gw.count("emails") == 1
    # The next mail from the address makes a new contact.
    assert gw.lmtp(customer, ["service@in.zylker.example"],
                   message(frm=f"Charles <{customer}>", to="service@in.zylker.example", subject="Again")).codes == [250]
    (again,) = gw.export()["contacts"]
    assert again["email"] == customer
    # A new id (SQLite would hand out the deleted, highest one again without
    # AUTOINCREMENT): the old mail stays the deleted contact's history only.
    assert again["id"] > contact["id"]
    with gw.api(gw.token()) as api:
        assert [e["subject"] for e in api.get("/emails", params={"contact_id": again["id"]}).json()["items"]] \
            == ["Again"]
        assert api.get("/emails", params={"contact_id": contact["id"]}).json()["items"][0]["id"] == mail["id"]
    with gw.api(gw.token()) as api:
        lead = api.post("/leads", json={"email": "newest@example.com"}).json()["id"]
        assert api.delete(f"/leads/{lead}").status_code == 204
        assert api.post("/leads", json={"email": "newest@example.com"}).json()["id"] > lead


def test_migration_to_autoincrement_keeps_people_and_their_records(database_url):
    """0008 rebuilds leads and contacts on SQLite (ids never reused): every row keeps
    its id, a record keeps its contact, and the ids handed out so far stay used."""
    import sqlalchemy as sa
    from alembic import command

    from gateway.store import db, models as m

    engine = db.make_engine(database_url)
    stamp = datetime(2026, 12, 1, 9, tzinfo=timezone.utc)
    try:
        with engine.connect().execution_options(write=True) as conn:
            command.upgrade(db._alembic_config(conn), "0007")
            conn.commit()
        with engine.begin() as conn:
            conn.execute(sa.insert(m.Organisation.__table__).values(id="zylker", name="Zylker", timezone="UTC",
                                                                     active=True))
            pipeline = conn.execute(sa.insert(m.Pipeline.__table__).values(org_id="zylker", name="Service",
                                                                           active=True)).inserted_primary_key[0]
            people = {}
            for table in (m.Lead.__table__, m.Contact.__table__):
                people[table.name] = [conn.execute(sa.insert(table).values(
                    org_id="zylker", email=f"p{i}@example.com", first_name="", last_name="", owner_id=None,
                    source="api", created_at=stamp, updated_at=stamp, external_id=f"x{i}")).inserted_primary_key[0]
                    for i in range(3)]
            conn.execute(sa.insert(m.Record.__table__).values(
                org_id="zylker", pipeline_id=pipeline, stage="Open", title="t", owner_id=None, tags=[],
                contact_id=people["contacts"][0], created_at=stamp, updated_at=stamp))
        assert db.upgrade(engine)[0] == "0008"
        with engine.begin() as conn:
            for table in (m.Lead.__table__, m.Contact.__table__):
                rows = conn.execute(sa.select(table.c.id, table.c.external_id).order_by(table.c.id)).all()
                assert rows == [(pid, f"x{i}") for i, pid in enumerate(people[table.name])]
                conn.execute(sa.delete(table).where(table.c.id == people[table.name][2]))
                # The unique indexes came through the rebuild.
                with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
                    conn.execute(sa.insert(table).values(org_id="zylker", email="p0@example.com", source="api",
                                                         created_at=stamp))
                newest = conn.execute(sa.insert(table).values(org_id="zylker", email="new@example.com",
                                                              source="api", created_at=stamp)).inserted_primary_key[0]
                assert newest > people[table.name][2]
            assert conn.execute(sa.select(m.Record.__table__.c.contact_id)).scalar_one() == people["contacts"][0]
    finally:
        engine.dispose()


def test_tokens_401_403_and_other_organisations_404(gw):
    with gw.api(gw.token()) as api:
        zid = api.post("/contacts", json={"email": "z@example.com"}).json()["id"]
    with gw.api() as api:
        for r in (api.get("/contacts"), api.get(f"/contacts/{zid}"),
                  api.post("/contacts", json={"email": "a@b.example"}), api.delete(f"/leads/{zid}"),
                  api.post("/leads/import", content=b"", headers=NDJSON)):
            assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
    with gw.api(gw.token(scope="read")) as api:
        assert api.get("/contacts").status_code == 200
        assert api.get(f"/contacts/{zid}").status_code == 200
        for r in (api.post("/contacts", json={"email": "a@b.example"}), api.delete(f"/contacts/{zid}"),
                  api.post("/contacts/import", content=lines({"email": "a@b.example"}), headers=NDJSON)):
            assert r.status_code == 403 and "read scope" in r.json()["detail"]
    with gw.api(gw.token("lumen")) as api:
        r = api.get(f"/contacts/{zid}")
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
        assert api.delete(f"/contacts/{zid}").status_code == 404
        assert api.get("/contacts").json()["items"] == []
        assert api.get("/contacts", params={"email": "z@example.com"}).json()["items"] == []
        # The same address in lumen is lumen's own contact.
        r = api.post("/contacts", json={"email": "z@example.com", "owner": "owner@lumen.example"})
        assert r.status_code == 201 and r.json()["id"] != zid
        # zylker's users are not lumen's.
        r = api.post("/contacts", json={"email": "y@example.com", "owner": H})
        assert r.status_code == 422 and H in r.json()["detail"]
    assert gw.count("contacts") == 2


def test_malformed_json_is_400_after_the_token_is_judged(gw):
    """Malformed JSON is a 400 problem; but the token is judged first: none is 401,
    a read token on a write route 403 -- whatever the body."""
    bad = b'{"email": "a@example.com",'
    headers = {"Content-Type": "application/json"}
    with gw.api(gw.token()) as api:
        r = api.post("/contacts", content=bad, headers=headers)
        assert r.status_code == 400 and r.headers["content-type"] == PROBLEM, r.text
        assert r.json()["errors"][0]["location"].startswith("body") and "JSON" in r.json()["detail"]
        r = api.patch("/records/1", content=b"{", headers=headers)
        assert r.status_code == 400 and r.headers["content-type"] == PROBLEM, r.text
    with gw.api() as api:
        r = api.post("/contacts", content=bad, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
        r = api.post("/contacts", content=b'{"email": 1}', headers=headers)
        assert r.status_code == 401, r.text
    with gw.api("not-a-token") as api:
        assert api.patch("/records/1", content=b"{", headers=headers).status_code == 401
    with gw.api(gw.token(scope="read")) as api:
        r = api.post("/contacts", content=bad, headers=headers)
        assert r.status_code == 403 and r.headers["content-type"] == PROBLEM, r.text
        assert api.post("/contacts", content=b'{"email": 1}', headers=headers).status_code == 403
        # A read token may still be told its query is malformed on a read route.
        assert api.get("/contacts", params={"limit": 0}).status_code == 422
    assert gw.count("contacts") == 0


@pytest.mark.parametrize("body, where", [
    (b'["a@example.com"]', "body"),                                    # not an object
    (b'{"email": 42}', "body.email"),                                  # wrong type
    (b'{"email": "a@example.com", "first_name": ["A"]}', "body.first_name"),
    (b'{"email": "a@example.com", "external_id": 7}', "body.external_id"),
    (b'{"first_name": "A"}', "body.email"),                            # missing email
    (b'{"email": "not-an-address"}', "body.email"),
    (b'{"email": "a@b@example.com"}', "body.email"),
    (b'{"email": "a@example.com, b@example.com"}', "body.email"),
    (b'{"email": "a@example.com", "phone": "1"}', "body.phone"),        # unknown field
    (json.dumps({"email": "a@example.com", "first_name": "x" * 201}).encode(), "body.first_name"),
    (json.dumps({"email": "a@example.com", "external_id": "x" * 256}).encode(), "body.external_id"),
    (json.dumps({"email": "a" * 65 + "@example.com"}).encode(), "body.email"),
    (b'{"email": "a@example.com", "last_name": "nul\\u0000"}', "body.last_name"),
    (b'{"email": "a@example.com", "last_name": "\\ud800"}', "body.last_name"),
])
def test_bad_input_is_a_422_problem_and_writes_nothing(gw, body, where):
    with gw.api(gw.token()) as api:
        r = api.post("/contacts", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    assert any(e["location"].startswith(where) for e in r.json()["errors"]), r.json()
    assert gw.count("contacts") == 0


def test_bad_queries_and_unknown_owner(gw):
    with gw.api(gw.token()) as api:
        for params in ({"limit": 0}, {"limit": 501}, {"limit": "many"}, {"cursor": "bogus"},
                       {"updated_since": "yesterday"}, {"updated_since": "9999-12-31T23:00:00-05:00"},
                       {"email": "x" * 400}, {"email": "a\x00@example.com"}, {"email": "not an address"}):
            r = api.get("/contacts", params=params)
            assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, (params, r.text)
        assert api.get("/contacts", params={"limit": 500}).status_code == 200
        # A forged cursor beyond any 64-bit id: refused as not ours (422), never a 500.
        r = api.get("/contacts", params={"cursor": encode(int("9" * 19))})
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
        for path in ("/contacts/abc", "/contacts/0", "/contacts/" + "9" * 20):
            assert api.get(path).status_code == 422 and api.delete(path).status_code == 422
        assert api.get("/contacts/999999").status_code == 404
        r = api.post("/contacts", json={"email": "a@example.com", "owner": "ghost@zylker.example"})
        assert r.status_code == 422 and "ghost@zylker.example" in r.json()["detail"]
    assert gw.count("contacts") == 0


def test_ndjson_import_counts_and_rejects_lines_by_number(gw):
    with gw.api(gw.token()) as api:
        api.post("/contacts", json={"email": "old@example.com", "first_name": "Old"})
        api.post("/contacts", json={"email": "same@example.com", "first_name": "Same"})
        body = lines(
            {"email": "new1@example.com", "first_name": "New", "owner": K},        # 1 created
            {"email": "old@example.com", "first_name": "Older"},                  # 2 updated
            {"email": "same@example.com", "first_name": "Same"},                  # 3 unchanged
            "{not json",                                                          # 4
            {"email": "broken"},                                                  # 5 bad address
            {"first_name": "No address"},                                         # 6 missing email
            {"email": "x@example.com", "owner": "ghost@zylker.example"},          # 7 unknown owner
            {"email": "NEW1@example.com"},                                        # 8 duplicate in file
            "",                                                                   # 9 blank: skipped
            {"email": "y@example.com", "colour": "red"},                          # 10 unknown field
            {"email": "new2@example.com", "external_id": "e-2"},                  # 11 created
            {"email": "new3@example.com", "external_id": "e-2"},                  # 12 duplicate external_id
        )
        r = api.post("/contacts/import", content=body, headers=NDJSON)
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["created"], out["updated"], out["unchanged"]) == (2, 1, 1)
        assert [e["line"] for e in out["errors"]] == [4, 5, 6, 7, 8, 10, 12]
        errors = {e["line"]: e["error"] for e in out["errors"]}
        assert errors[4].startswith("not JSON") and "bad address" in errors[5] and errors[6] == "missing email"
        assert "unknown owner" in errors[7] and "duplicate in file: same email as line 1" == errors[8]
        assert "colour" in errors[10] and errors[12] == "duplicate in file: same external_id as line 11"
        # Again: all unchanged.
        again = api.post("/contacts/import", content=body, headers=NDJSON).json()
        assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 4)
        listed = {i["email"]: i for i in api.get("/contacts").json()["items"]}
        assert listed["new1@example.com"]["owner"] == K and listed["new1@example.com"]["source"] == "import"
        assert listed["old@example.com"]["first_name"] == "Older"
        # An empty body imports nothing; CRLF line ends are fine.
        assert api.post("/contacts/import", content=b"", headers=NDJSON).json() == \
            {"created": 0, "updated": 0, "unchanged": 0, "errors": []}
        r = api.post("/leads/import", content=b'{"email": "crlf@example.com"}\r\n{"email": "b@"}\r\n',
                     headers=NDJSON)
        assert (r.json()["created"], [e["line"] for e in r.json()["errors"]]) == (1, [2])
    assert (gw.count("contacts"), gw.count("leads")) == (4, 1)


def test_ndjson_import_limits(gw):
    ok = b"".join(b'{"email": "n%d@example.com"}\n' % n for n in range(10_000))
    with gw.api(gw.token()) as api:
        r = api.post("/leads/import", content=ok + b'{"email": "one-more@example.com"}', headers=NDJSON)
        assert r.status_code == 413 and r.headers["content-type"] == PROBLEM and "10,000" in r.json()["detail"]
        assert gw.count("leads") == 0
        r = api.post("/leads/import", content=ok, headers={"Content-Type": "application/json"})
        assert r.status_code == 415 and r.headers["content-type"] == PROBLEM
        r = api.post("/leads/import", content=b"x" * (8 * 1024 * 1024 + 1), headers=NDJSON)
        assert r.status_code == 413
        assert gw.count("leads") == 0
        r = api.post("/leads/import", content=ok, headers={"Content-Type": "application/x-ndjson; charset=utf-8"})
        assert r.status_code == 200 and r.json()["created"] == 10_000
    assert gw.count("leads") == 10_000


def test_dropbox_mail_to_an_imported_contact_links_it_and_creates_no_lead(gw):
    with gw.api(gw.token()) as api:
        r = api.post("/contacts/import", content=lines({"email": "Imported@Customer.example", "first_name": "Imp",
                                                        "external_id": "c-77"}), headers=NDJSON)
        assert r.json()["created"] == 1
        (contact,) = api.get("/contacts").json()["items"]
    box = gw.dropbox(H)  # searches contacts, then leads; creates a lead
    assert gw.lmtp(H, [box], message(to="IMPORTED@customer.example")).codes == [250]
    ex = gw.export()
    assert ex["leads"] == [] and [c["id"] for c in ex["contacts"]] == [contact["id"]]
    assert ex["emails"][0]["links"] == [{"kind": "contact", "id": contact["id"]}]


def test_concurrent_import_and_filing_of_new_addresses_make_one_row_each(gw):
    """kitazawa's dropbox searches and creates contacts: whichever of the import and
    the filing comes first creates the contact, the other finds it."""
    addresses = [f"race{n}@customer.example" for n in range(20)]
    box = gw.dropbox(K)
    token = gw.token()
    results: dict[str, object] = {}

    def importing() -> None:
        with gw.api(token) as api:
            results["import"] = api.post("/contacts/import", headers=NDJSON,
                                         content=lines(*({"email": a, "first_name": "R"} for a in addresses))).json()

    def filing(address: str) -> None:
        results[address] = gw.lmtp(K, [box], message(frm=K, to=address)).codes

    threads = [threading.Thread(target=importing)] + [threading.Thread(target=filing, args=(a,)) for a in addresses]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[a] == [250] for a in addresses)
    report: dict = results["import"]  # type: ignore[assignment]
    assert report["errors"] == [] and report["created"] + report["updated"] + report["unchanged"] == 20
    ex = gw.export()
    assert sorted(c["email"] for c in ex["contacts"]) == sorted(addresses) and ex["leads"] == []
    ids = {c["email"]: c["id"] for c in ex["contacts"]}
    for mail in ex["emails"]:
        assert mail["links"] == [{"kind": "contact", "id": ids[mail["to"][0]]}]


def test_openapi_documents_the_people_endpoints(gw):
    with gw.api() as api:
        doc = api.get("/openapi.json").json()
    for collection in ("contacts", "leads"):
        assert {"get", "post"} <= set(doc["paths"][f"/v1/{collection}"])
        assert {"get", "delete"} <= set(doc["paths"][f"/v1/{collection}/{{person_id}}"])
        assert "application/x-ndjson" in doc["paths"][f"/v1/{collection}/import"]["post"]["requestBody"]["content"]
