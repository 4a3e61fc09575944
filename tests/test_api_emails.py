"""/v1/emails over real HTTP against the running daemon: the list (filters, pagination,
bodies), one email, its raw bytes, its attachments, and sharing (SPEC 2.12) enforced
for tokens bound to a user.  The rule itself: tests/unit/test_sharing.py."""

from __future__ import annotations

from typing import Any, Iterator
from urllib.parse import quote

import pytest

from tests.conftest import RunningGateway
from tests.helpers import edit_config, message

PROBLEM = "application/problem+json"
H = "hashimoto@zylker.example"   # sharing private
K = "kitazawa@zylker.example"    # sharing public
O = "ono@zylker.example"         # sharing custom (added below)
S = "suzuki@zylker.example"      # no dropbox: files nothing, only looks
PDF = b"%PDF-1.4 " + bytes(range(256)) * 4
JA_NAME = "見積書 résumé.pdf"


@pytest.fixture
def shared(config_dir, database_url, sink) -> Iterator[tuple[RunningGateway, dict[str, Any]]]:
    """The demo organisation with a user who shares custom (an address and a domain),
    partner.example excluded from sharing, and mail of every kind filed:
    (the gateway, {subject: the bytes filed}), in the order of their ids."""
    rules = config_dir / "rules" / "zylker.toml"
    edit_config(rules, '# sharing_excluded_domains = ["partner.example"]', 'sharing_excluded_domains = ["partner.example"]')
    with rules.open("a") as f:
        f.write('\n[[users]]\nemail = "ono@zylker.example"\nrole = "standard"\n[users.dropbox]\n'
                'sharing = "custom"\nshare = ["Ann@ACME.example", "globex.example"]\n')
    gw = RunningGateway(config_dir, database_url, relay_url=f"smtp://127.0.0.1:{sink.port}").start()
    try:
        sent: dict[str, bytes] = {}

        def dropbox(user: str, subject: str, to: str, **kw: Any) -> None:
            data = message(frm=user, to=to, subject=subject, body=f"Body of {subject}.", **kw)
            assert gw.lmtp(user, [gw.dropbox(user)], data).codes == [250]
            sent[subject] = data

        dropbox(H, "private", "carl@initech.example", attachments=[("quote.pdf", "application/pdf", PDF)])
        dropbox(O, "custom not shared", "zed@acme.example")
        dropbox(K, "public excluded", "eve@partner.example", attachments=[("x.txt", "text/plain", b"secret")])
        dropbox(O, "custom by address", "ann@acme.example",
                attachments=[(JA_NAME, "application/pdf", PDF), ("notes.txt", "text/plain", b"plain notes\n")])
        dropbox(O, "custom by domain", "bob@globex.example")
        dropbox(K, "public", "dan@hooli.example")
        data = message(frm="Frank <frank@customer.example>", to="service@in.zylker.example", subject="alias")
        assert gw.lmtp("frank@customer.example", ["service@in.zylker.example"], data).codes == [250]
        sent["alias"] = data
        dropbox(H, "own excluded", "gina@partner.example")
        data = message(frm=K, to="dan@hooli.example", subject="outbound")
        assert gw.submit(data, ["dan@hooli.example"], mail_from=K).codes == [250]
        sent["outbound"] = sink.messages[-1][2]  # as relayed (signed) and stored
        yield gw, sent
    finally:
        gw.stop()


EVERYONE_SEES = ["custom by address", "custom by domain", "public", "alias", "outbound"]


def listing(api, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = api.get("/emails", params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def ids_by_subject(gw) -> dict[str, int]:
    with gw.api(gw.token()) as api:
        return {e["subject"]: e["id"] for e in listing(api)}


def test_organisation_token_sees_everything_with_visibility_and_filed_by(shared):
    gw, sent = shared
    with gw.api(gw.token(scope="read")) as api:
        items = listing(api)
    assert [e["subject"] for e in items] == list(sent)  # newest last
    assert [e["id"] for e in items] == sorted(e["id"] for e in items)
    seen = {e["subject"]: (e["visibility"], e["filed_by"], e["source"], e["direction"]) for e in items}
    assert seen == {
        "private": ("private", H, "dropbox", "inbound"),
        "custom not shared": ("custom", O, "dropbox", "inbound"),
        "public excluded": ("public", K, "dropbox", "inbound"),
        "custom by address": ("custom", O, "dropbox", "inbound"),
        "custom by domain": ("custom", O, "dropbox", "inbound"),
        "public": ("public", K, "dropbox", "inbound"),
        "alias": ("public", None, "alias", "inbound"),
        "own excluded": ("private", H, "dropbox", "inbound"),
        "outbound": ("public", K, "outbound", "outbound"),
    }
    first = items[0]
    assert set(first) == {"id", "message_id", "subject", "from", "to", "cc", "date", "received_at", "kind",
                          "direction", "source", "filed_by", "visibility", "size", "links", "attachments",
                          "forwarded_by", "forward_note", "invitation"}
    assert first["from"] == {"name": "", "address": H} and first["to"] == ["carl@initech.example"]
    assert first["cc"] == [] and first["kind"] == "message" and first["size"] == len(sent["private"])
    assert first["date"].endswith("Z") and first["received_at"].endswith("Z")
    assert first["message_id"] and "<" not in first["message_id"]
    leads = {p["email"]: p["id"] for p in gw.export()["leads"]}
    assert first["links"] == [{"kind": "lead", "id": leads["carl@initech.example"]}]
    assert first["attachments"] == [{"index": 0, "filename": "quote.pdf", "content_type": "application/pdf",
                                     "size": len(PDF)}]
    # `gateway export` carries the visibility too.
    assert {e["subject"]: e["visibility"] for e in gw.export("zylker")["emails"]} == {s: v[0] for s, v in seen.items()}


@pytest.mark.parametrize("viewer, sees", [
    # Sees public and shared custom mail, never private, unshared or excluded-domain mail.
    (S, EVERYONE_SEES),
    # Its own mail, even private and at an excluded domain.
    (H, ["private"] + EVERYONE_SEES + ["own excluded"]),
    # Its own custom mail, shared or not; not another user's excluded-domain mail.
    (O, ["custom not shared", "custom by address", "custom by domain", "public", "alias", "outbound"]),
    # kitazawa's own excluded-domain mail.
    (K, ["public excluded"] + EVERYONE_SEES),
])
def test_a_user_token_sees_what_sharing_allows_in_lists_reads_raw_and_attachments(shared, viewer, sees):
    gw, sent = shared
    ids = ids_by_subject(gw)
    with gw.api(gw.token(scope="read", user=viewer)) as api:
        shown = [e["subject"] for e in listing(api)]
        assert sorted(shown, key=ids.get) == shown and set(shown) == set(sees)
        assert [e["subject"] for e in listing(api, include="bodies", limit=2)] == shown
        for subject, email_id in ids.items():
            one, raw, att = (api.get(f"/emails/{email_id}"), api.get(f"/emails/{email_id}/raw"),
                             api.get(f"/emails/{email_id}/attachments/0"))
            if subject in sees:
                assert one.status_code == 200 and one.json()["subject"] == subject
                assert raw.status_code == 200 and raw.content == sent[subject]
            else:
                # Exactly as if it did not exist: nothing is revealed.
                for r in (one, raw, att):
                    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, (subject, r.text)
                assert one.json()["detail"] == f"no email {email_id}" == att.json()["detail"]
        if "private" in sees:
            assert api.get(f"/emails/{ids['private']}/attachments/0").content == PDF
        if "custom by address" in sees:
            assert api.get(f"/emails/{ids['custom by address']}/attachments/1").content == b"plain notes\n"


def test_list_filters(shared):
    gw, _ = shared
    ex = gw.export("zylker")
    leads = {p["email"]: p["id"] for p in ex["leads"]}
    contacts = {p["email"]: p["id"] for p in ex["contacts"]}
    (record,) = ex["records"]
    ids = ids_by_subject(gw)

    def subjects(api, **params: Any) -> list[str]:
        return [e["subject"] for e in listing(api, **params)]

    with gw.api(gw.token(scope="read")) as org, gw.api(gw.token(scope="read", user=S)) as user:
        assert subjects(org, source="dropbox") == [s for s in ids if s not in ("alias", "outbound")]
        assert subjects(org, source="alias") == ["alias"]
        assert subjects(org, source="outbound") == ["outbound"]
        # dan is kitazawa's contact: her dropbox mail and the outbound mail to him.
        assert subjects(org, contact_id=contacts["dan@hooli.example"]) == ["public", "outbound"]
        assert subjects(org, lead_id=leads["ann@acme.example"]) == ["custom by address"]
        assert subjects(org, record_id=record["id"]) == ["alias"]
        assert subjects(org, since_id=ids["alias"]) == ["own excluded", "outbound"]
        assert subjects(org, since_id=ids["alias"], source="dropbox") == ["own excluded"]
        # Filters and sharing together.
        assert subjects(user, source="dropbox") == ["custom by address", "custom by domain", "public"]
        assert subjects(user, contact_id=contacts["eve@partner.example"]) == []
        assert subjects(user, lead_id=leads["carl@initech.example"]) == []
        assert subjects(org, contact_id=999999) == [] and subjects(org, record_id=999999) == []


def test_pagination_across_pages(shared, monkeypatch):
    gw, sent = shared
    with gw.api(gw.token(scope="read")) as api:
        pages, cursor = [], None
        while True:
            body = api.get("/emails", params={"limit": 4, **({"cursor": cursor} if cursor else {})}).json()
            pages.append([e["subject"] for e in body["items"]])
            cursor = body["next_cursor"]
            if cursor is None:
                break
    assert pages == [list(sent)[:4], list(sent)[4:8], list(sent)[8:]]
    # A user's pages are full although hidden mail lies between the items.
    with gw.api(gw.token(scope="read", user=S)) as api:
        first = api.get("/emails", params={"limit": 2}).json()
        assert [e["subject"] for e in first["items"]] == ["custom by address", "custom by domain"]
        second = api.get("/emails", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        assert [e["subject"] for e in second["items"]] == ["public", "alias"]
        third = api.get("/emails", params={"limit": 2, "cursor": second["next_cursor"]}).json()
        assert [e["subject"] for e in third["items"]] == ["outbound"] and third["next_cursor"] is None
        # A request reads a bounded number of candidates: then the page ends early,
        # possibly empty, and the cursor goes on from where it stopped.
        from gateway.api.routes import emails as routes

        monkeypatch.setattr(routes, "MAX_SCAN", 2)
        body = api.get("/emails", params={"limit": 1}).json()
        assert body["items"] == [] and body["next_cursor"] is not None
        assert [e["subject"] for e in listing(api, limit=1)] == EVERYONE_SEES


def test_bodies_in_the_email_and_in_lists_on_request(shared):
    gw, _ = shared
    ids = ids_by_subject(gw)
    with gw.api(gw.token(scope="read")) as api:
        one = api.get(f"/emails/{ids['public']}").json()
        assert one["text_body"].strip() == "Body of public." and one["html_body"] == ""
        plain = api.get("/emails").json()["items"]
        assert all("text_body" not in e and "html_body" not in e for e in plain)
        full = api.get("/emails", params={"include": "bodies"}).json()["items"]
        assert [e["text_body"].strip() for e in full if e["subject"] == "public"] == ["Body of public."]
        assert all(set(e) == set(one) for e in full)


def test_raw_is_the_stored_message_byte_for_byte(shared):
    gw, sent = shared
    ids = ids_by_subject(gw)
    with gw.api(gw.token(scope="read")) as api:
        for subject, data in sent.items():
            r = api.get(f"/emails/{ids[subject]}/raw")
            assert r.status_code == 200 and r.headers["content-type"] == "message/rfc822"
            assert r.content == data


def test_attachments_decoded_with_type_and_file_name(shared):
    gw, _ = shared
    ids = ids_by_subject(gw)
    with gw.api(gw.token(scope="read")) as api:
        r = api.get(f"/emails/{ids['private']}/attachments/0")
        assert r.status_code == 200 and r.content == PDF
        assert r.headers["content-type"] == "application/pdf"
        assert r.headers["content-disposition"] == 'attachment; filename="quote.pdf"'
        assert r.headers["x-content-type-options"] == "nosniff"
        # A non-ASCII name: an ASCII fallback and the name itself (RFC 6266, RFC 8187).
        r = api.get(f"/emails/{ids['custom by address']}/attachments/0")
        assert r.status_code == 200 and r.content == PDF
        assert r.headers["content-disposition"] == \
            f"attachment; filename=\"___ resume.pdf\"; filename*=UTF-8''{quote(JA_NAME)}"
        listed = api.get(f"/emails/{ids['custom by address']}").json()["attachments"]
        assert [a["filename"] for a in listed] == [JA_NAME, "notes.txt"]
        # No charset is invented for a text part.
        r = api.get(f"/emails/{ids['custom by address']}/attachments/1")
        assert r.headers["content-type"] == "text/plain" and r.content == b"plain notes\n"
        for path in (f"/emails/{ids['private']}/attachments/1", f"/emails/{ids['public']}/attachments/0"):
            r = api.get(path)
            assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
            assert r.json()["detail"].startswith("no attachment")


def test_another_organisations_email_does_not_exist(shared):
    gw, _ = shared
    ids = ids_by_subject(gw)
    with gw.api(gw.token("lumen", scope="write")) as api:
        assert api.get("/emails").json() == {"items": [], "next_cursor": None}
        for path in (f"/emails/{ids['public']}", f"/emails/{ids['public']}/raw", f"/emails/{ids['private']}/attachments/0"):
            r = api.get(path)
            assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
        assert api.get("/emails/999999").status_code == 404


@pytest.mark.parametrize("path, params", [
    ("/emails", {"source": "smtp"}),
    ("/emails", {"source": "relay"}),
    ("/emails", {"include": "everything"}),
    ("/emails", {"limit": "0"}),
    ("/emails", {"limit": "501"}),
    ("/emails", {"limit": "ten"}),
    ("/emails", {"since_id": "-1"}),
    ("/emails", {"contact_id": "abc"}),
    ("/emails", {"lead_id": "0"}),
    ("/emails", {"record_id": str(2**63)}),
    ("/emails", {"cursor": "not-a-cursor"}),
    ("/emails/abc", {}),
    ("/emails/0", {}),
    (f"/emails/{2**64}", {}),
    ("/emails/1/attachments/-1", {}),
    ("/emails/1/attachments/x", {}),
    (f"/emails/1/attachments/{2**64}", {}),
])
def test_bad_input_is_a_4xx_problem(gw, path, params):
    with gw.api(gw.token(scope="read", user=S)) as api:
        r = api.get(path, params=params)
    assert 400 <= r.status_code < 500 and r.headers["content-type"] == PROBLEM, (r.status_code, r.text)
