"""`gateway import contacts|leads FILE --org ORG`: the real command against the running
daemon's database -- CSV and JSON lines, rejected rows by line number, --dry-run,
re-runs -- and the parsing it shares with the API's import."""

from __future__ import annotations

import io
import json

import pytest

from gateway.cli.imports import _Progress
from gateway.errors import UserError
from gateway.people_import import csv_rows, ndjson

from tests.helpers import message

H = "hashimoto@zylker.example"
K = "kitazawa@zylker.example"

CSV = (
    "Email,First_Name,last_name,external_id,owner,phone,company\n"   # 1 (header; phone, company ignored)
    "ann@example.com,Ann,Lee,crm-1,kitazawa@zylker.example,123,Acme\n"  # 2
    "not-an-address,Bad,Address,,,,\n"                                 # 3 bad address
    ",No,Email,crm-3,,,\n"                                             # 4 missing email
    "bob@example.com,Bob,,crm-4,ghost@zylker.example,,\n"              # 5 unknown owner
    "\n"                                                               # 6 blank: skipped
    '"ANN@example.com",Ann,Again,,,,\n'                                 # 7 duplicate in file
    'cat@example.com,Cat,"Multi\n'                                     # 8-9 one record on two lines
    'line",,,,\n'
    "dan@example.com,Dan,Doe,crm-1,,,\n"                               # 10 duplicate external_id
    "eve@example.com,,,,,,\n"                                          # 11
)


def run_import(gw, *args, check=False):
    proc = gw.cli("import", *args, check=check)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def contacts(gw):
    """Every contact of zylker as the API lists them, by address."""
    out, cursor = {}, None
    with gw.api(gw.token(scope="read")) as api:
        while True:
            body = api.get("/contacts", params={"limit": 500, **({"cursor": cursor} if cursor else {})}).json()
            out.update({c["email"]: c for c in body["items"]})
            cursor = body["next_cursor"]
            if cursor is None:
                return out


def test_csv_import_names_rejected_rows_by_line_and_exits_1(gw, tmp_path):
    f = tmp_path / "people.csv"
    f.write_text(CSV, encoding="utf-8")
    code, out, err = run_import(gw, "contacts", str(f), "--org", "zylker", "--owner", H)
    assert code == 1, err
    lines = out.splitlines()
    assert lines[0].endswith("contacts of zylker from " + str(f) + ": 2 created, 0 updated, 0 unchanged, 6 rejected")
    assert [ln.split(":")[0].strip() for ln in lines[1:]] == [f"line {n}" for n in (3, 4, 5, 7, 8, 10)]
    assert "line 3: bad address 'not-an-address'" in out and "line 4: missing email" in out
    assert "line 5: unknown owner 'ghost@zylker.example'" in out
    assert "line 7: duplicate in file: same email as line 2" in out
    assert "line 10: duplicate in file: same external_id as line 2" in out
    assert "line 8: last_name: control characters are not allowed" in out
    # Other columns are named once, on stderr; no progress bar when stderr is no terminal.
    assert err.count("ignoring columns phone, company") == 1 and "\r" not in err
    stored = contacts(gw)
    assert set(stored) == {"ann@example.com", "eve@example.com"}
    ann, eve = stored["ann@example.com"], stored["eve@example.com"]
    assert (ann["first_name"], ann["last_name"], ann["external_id"], ann["owner"], ann["source"]) \
        == ("Ann", "Lee", "crm-1", K, "import")
    assert (eve["first_name"], eve["last_name"], eve["owner"]) == ("", "", H)  # --owner: rows that name none


def test_jsonl_import_and_json_output(gw, tmp_path):
    f = tmp_path / "leads.jsonl"
    f.write_bytes(b"\n".join([
        json.dumps({"email": "a@example.com", "first_name": "A", "owner": H}).encode(),
        b'{"email": "b@example.com", "last_name": "B", "external_id": "L-2"}',
        b'{"email": "c@example.com", "age": 40}',
        b"not json",
        b"",
        b'{"email": "A@EXAMPLE.COM"}',
        b'{"email": "\xff"}',
    ]) + b"\n")
    code, out, err = run_import(gw, "leads", str(f), "--org", "zylker", "--json")
    assert code == 1, err
    report = json.loads(out)
    assert (report["created"], report["updated"], report["unchanged"]) == (2, 0, 0)
    assert [e["line"] for e in report["errors"]] == [3, 4, 6, 7]
    assert "unknown field 'age'" in report["errors"][0]["error"] and report["errors"][1]["error"].startswith("not JSON")
    assert report["dry_run"] is False and report["ignored_columns"] == []
    leads = {p["email"]: p for p in gw.export()["leads"]}
    assert set(leads) == {"a@example.com", "b@example.com"} and leads["a@example.com"]["owner"] == H


def test_dry_run_writes_nothing_and_a_rerun_finds_everything_unchanged(gw, tmp_path):
    f = tmp_path / "people.csv"
    f.write_text("email,first_name,external_id\n" + "".join(f"p{n}@example.com,P{n},id-{n}\n" for n in range(1200)))
    before = gw.count("contacts")
    code, out, err = run_import(gw, "contacts", str(f), "--org", "zylker", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out) == {"created": 1200, "updated": 0, "unchanged": 0, "errors": [], "ignored_columns": [],
                               "dry_run": True}
    assert gw.count("contacts") == before == 0
    code, out, err = run_import(gw, "contacts", str(f), "--org", "zylker")
    assert code == 0 and "1,200 created, 0 updated, 0 unchanged, 0 rejected" in out
    stamps = {e: c["updated_at"] for e, c in contacts(gw).items()}
    assert len(stamps) == 1200
    # Again: nothing changes, not even updated_at.
    code, out, _ = run_import(gw, "contacts", str(f), "--org", "zylker", "--json")
    assert code == 0 and json.loads(out)["unchanged"] == 1200 and json.loads(out)["created"] == 0
    assert {e: c["updated_at"] for e, c in contacts(gw).items()} == stamps
    assert gw.count("contacts") == 1200
    # A changed file: the rows that differ are updated (found by external_id, new address too).
    f.write_text("email,first_name,external_id\np0@example.com,Changed,id-0\nmoved@example.com,P1,id-1\n"
                 "p2@example.com,P2,id-2\n")
    code, out, _ = run_import(gw, "contacts", str(f), "--org", "zylker", "--dry-run")
    assert out.startswith("dry run, nothing written: ") and "0 created, 2 updated, 1 unchanged" in out
    assert "moved@example.com" not in contacts(gw)
    code, out, _ = run_import(gw, "contacts", str(f), "--org", "zylker", "--json")
    assert (json.loads(out)["updated"], json.loads(out)["unchanged"]) == (2, 1)
    assert contacts(gw)["moved@example.com"]["external_id"] == "id-1" and gw.count("contacts") == 1200


def test_imported_contacts_are_what_the_dropbox_matches(gw, tmp_path):
    f = tmp_path / "people.csv"
    f.write_text("email,first_name,last_name\ncustomer@example.com,Chris,Tomer\n")
    assert run_import(gw, "contacts", str(f), "--org", "zylker")[0] == 0
    box = gw.dropbox(H)  # contacts, then leads; creates a lead
    assert gw.lmtp(H, [box], message(to="Customer@Example.com")).codes == [250]
    ex = gw.export()
    (contact,) = ex["contacts"]
    assert ex["leads"] == [] and ex["emails"][0]["links"] == [{"kind": "contact", "id": contact["id"]}]


@pytest.mark.parametrize("args, content, message", [
    (["--org", "nowhere"], "email\na@example.com\n", "gateway: no organisation nowhere in the rules"),
    (["--org", "zylker", "--owner", "ghost@zylker.example"], "email\na@example.com\n",
     "gateway: --owner: unknown owner 'ghost@zylker.example'"),
    (["--org", "zylker"], "name,phone\nA,1\n", "gateway: no email column in the header row"),
    (["--org", "zylker"], "", "gateway: no header row"),
    (["--org", "zylker"], b"email\nb\xe4d@example.com\n", "not UTF-8 (line 2"),
])
def test_command_errors_are_one_line_and_exit_1(gw, tmp_path, args, content, message):
    f = tmp_path / "people.csv"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, out, err = run_import(gw, "contacts", str(f), *args)
    assert code == 1 and out == "" and message in err and len(err.splitlines()) == 1, err
    assert gw.count("contacts") == 0


def test_file_kind_and_usage(gw, tmp_path):
    f = tmp_path / "people.xlsx"
    f.write_bytes(b"PK")
    code, _, err = run_import(gw, "contacts", str(f), "--org", "zylker")
    assert code == 1 and "name it .csv" in err
    code, _, err = run_import(gw, "contacts", str(tmp_path / "missing.csv"), "--org", "zylker")
    assert code == 1 and "cannot read" in err
    code, _, err = run_import(gw, "people", str(f), "--org", "zylker")
    assert code == 2


# --- the parsing the API and the command share (no server) ------------------------------


def test_csv_line_numbers_count_the_header_and_multiline_records():
    rows, ignored = csv_rows('\ufeffEMAIL,Owner,notes\n"a@example.com",,"two\nlines"\n\nb@example.com,,\n')
    assert ignored == ["notes"]
    assert [(line, p.email) for line, p in rows] == [(2, "a@example.com"), (5, "b@example.com")]


def test_ndjson_blank_lines_keep_their_numbers():
    parsed = list(ndjson([b'{"email": "a@example.com"}', b"  ", b'{"email": "b@example.com"}', b"[]"]))
    assert [line for line, _ in parsed] == [1, 3, 4] and parsed[2][1] == "not a JSON object"


def test_csv_needs_an_email_column():
    with pytest.raises(UserError, match="no email column"):
        csv_rows("first_name\nA\n")


def test_progress_bar_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown, hidden = Terminal(), io.StringIO()
    for stream in (shown, hidden):
        bar = _Progress(1000, stream)
        bar.show(500, final=True)
        bar.show(1000, final=True)
        bar.close()
    assert hidden.getvalue() == ""
    assert "\r[###############...............] line 500 of 1,000" in shown.getvalue()
    assert shown.getvalue().endswith("line 1,000 of 1,000\n")


def test_one_batch_never_writes_one_row_twice(gw):
    """The store's upsert on its own: items of one batch that land on the same row
    (the importer rejects such duplicates before; a direct caller may not)."""
    from gateway.store import people
    from gateway.store.people import Upsert

    items = [Upsert("a@example.com", "e-1"), Upsert("b@example.com", "e-1"), Upsert("a@example.com"),
             Upsert("c@example.com", values={"first_name": "C"})]
    results = gw.app.database.writing(people.upsert, "zylker", "contact", items, "import")
    assert [r.action for r in results] == ["created", "conflict", "conflict", "created"]
    assert "another item of this batch" in results[1].detail and gw.count("contacts") == 2
