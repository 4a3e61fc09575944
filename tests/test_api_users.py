"""/v1/users/{email}/dropbox over real HTTP against the running daemon: the address,
regenerate (the old address refused at once over LMTP), the vCard, and who may see
which dropbox (401/403/404)."""

from __future__ import annotations

import json

import pytest
import vobject

from tests.helpers import message

PROBLEM = "application/problem+json"
H = "hashimoto@zylker.example"
K = "kitazawa@zylker.example"
SUZUKI = "suzuki@zylker.example"
LENA = "owner@lumen.example"


def test_address_is_the_users_dropbox(gw):
    with gw.api(gw.token(scope="read")) as api:
        r = api.get(f"/users/{H}/dropbox")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.json() == {"address": gw.dropbox(H)}
        assert api.get(f"/users/{K}/dropbox").json() == {"address": gw.dropbox(K)}
        assert api.get("/users/Hashimoto@ZYLKER.example/dropbox").json() == {"address": gw.dropbox(H)}
    assert json.loads(gw.cli("dropbox", "address", H, "--json").stdout)["address"] == gw.dropbox(H)
    with gw.api(gw.token("lumen", scope="read")) as api:
        assert api.get(f"/users/{LENA}/dropbox").json() == {"address": gw.dropbox(LENA)}


@pytest.mark.parametrize("path", ["/dropbox", "/dropbox.vcf"])
def test_no_dropbox_is_404(gw, path):
    with gw.api(gw.token(scope="read")) as api:
        for user in (SUZUKI, LENA, "nobody@zylker.example", "not-an-address"):  # no permission, other org, unknown
            r = api.get(f"/users/{user}{path}")
            assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, (user, r.text)
            assert r.json()["detail"] == f"no dropbox for {user}"
        r = api.post(f"/users/{SUZUKI}/dropbox/regenerate")
        assert r.status_code == 403  # a read token: refused before anything is looked up
    with gw.api(gw.token()) as api:
        for user in (SUZUKI, LENA, "nobody@zylker.example"):
            assert api.post(f"/users/{user}/dropbox/regenerate").status_code == 404
    with gw.api(gw.token("lumen")) as api:
        assert api.get(f"/users/{H}{path}").status_code == 404
        assert api.post(f"/users/{H}/dropbox/regenerate").status_code == 404


def test_regenerate_refuses_the_old_address_at_once(gw):
    old = gw.dropbox(H)
    untouched = gw.dropbox(K)
    with gw.api(gw.token(name="crm")) as api:
        r = api.post(f"/users/{H}/dropbox/regenerate")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        new = r.json()["address"]
        assert new != old and new.startswith("bcc-") and new.endswith("@in.zylker.example")
        # The running daemon refuses the old address at once and files into the new one.
        tx = gw.lmtp(H, [old, new], message())
        assert tx.rcpt_codes == [550, 250] and tx.rcpts[0][1].startswith(b"5.1.1")
        assert tx.codes == [250] and gw.count("emails") == 1
        assert api.get(f"/users/{H}/dropbox").json() == {"address": new}
        assert gw.cli("dropbox", "address", H).stdout.decode().strip() == new
        assert api.get(f"/users/{K}/dropbox").json() == {"address": untouched}
        # Again: another new address, the second one dead too.
        newer = api.post(f"/users/{H}/dropbox/regenerate").json()["address"]
    assert newer not in (old, new)
    assert gw.lmtp(H, [new, newer], message()).rcpt_codes == [550, 250]
    # Postfix's recipient map was rewritten too: it refuses the old addresses itself.
    recipients = (gw.config_dir / "var" / "postfix-recipients").read_text()
    assert f"{newer} OK" in recipients and old not in recipients and new not in recipients


def test_regenerate_needs_a_write_token(gw):
    old = gw.dropbox(H)
    with gw.api() as api:
        for r in (api.get(f"/users/{H}/dropbox"), api.get(f"/users/{H}/dropbox.vcf"),
                  api.post(f"/users/{H}/dropbox/regenerate")):
            assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
    with gw.api(gw.token(scope="read")) as api:
        r = api.post(f"/users/{H}/dropbox/regenerate")
        assert r.status_code == 403 and r.headers["content-type"] == PROBLEM and "read scope" in r.json()["detail"]
        assert api.get(f"/users/{H}/dropbox").json() == {"address": old}
    assert gw.dropbox(H) == old
    assert gw.lmtp(H, [old], message()).codes == [250]


def test_vcard_is_the_clis(gw):
    box = gw.dropbox(H)
    with gw.api(gw.token(scope="read")) as api:
        r = api.get(f"/users/{H}/dropbox.vcf")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/vcard; charset=utf-8"
    assert r.headers["content-disposition"] == 'attachment; filename="dropbox.vcf"'
    assert r.text == gw.cli("dropbox", "vcard", H).stdout.decode()
    card = vobject.readOne(r.text)
    assert card.email.value == box and H in card.fn.value and card.org.value == ["Zylker Corp."]
    assert card.n.value.given == "Taro Hashimoto"


def test_a_token_bound_to_a_user_sees_only_that_users_dropbox(gw):
    with gw.api(gw.token(user=H)) as api:
        assert api.get(f"/users/{H}/dropbox").json() == {"address": gw.dropbox(H)}
        assert api.get(f"/users/{H}/dropbox.vcf").status_code == 200
        for r in (api.get(f"/users/{K}/dropbox"), api.get(f"/users/{K}/dropbox.vcf"),
                  api.post(f"/users/{K}/dropbox/regenerate")):
            assert r.status_code == 404 and r.json()["detail"] == f"no dropbox for {K}"
        assert api.post(f"/users/{H}/dropbox/regenerate").status_code == 200


def test_bad_paths_are_4xx_problems(gw):
    old = gw.dropbox(H)
    with gw.api(gw.token()) as api:
        responses = [
            api.get(f"/users/{'a' * 320}@zylker.example/dropbox"),
            api.post(f"/users/{'a' * 320}@zylker.example/dropbox/regenerate"),
            api.get("/users/a%00b@zylker.example/dropbox"),
            api.get("/users/%F0%9F%93%AE@zylker.example/dropbox"),
            api.put(f"/users/{H}/dropbox"),
            api.get(f"/users/{H}/dropbox/regenerate"),
            api.post(f"/users/{H}/dropbox/regenerate", content=b"{not json",
                     headers={"Content-Type": "application/json"}),
        ]
    for r in responses[:-1]:
        assert 400 <= r.status_code < 500 and r.headers["content-type"] == PROBLEM, (r.request.url, r.text)
    assert gw.dropbox(H) != old  # the last: regenerate takes no body, so one is ignored
    assert responses[-1].status_code == 200
