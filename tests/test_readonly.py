"""Commands that only look never write (issue 11).

`export`, `record show`, `quota status`, `email raw`, `explain`, `check` and
`quarantine list`, `review list` run as real CLI processes against a database the real daemon
filed mail into; afterwards every row is as it was (both backends) and, on SQLite,
the database file is byte for byte the same -- also with a rules folder that lacks
an organisation the database has (which the old code marked inactive), and for
`explain`, which runs the real filers in transactions that are rolled back.
Against a missing, empty or older schema they exit 1 telling to run
`gateway db upgrade`, and migrate nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from gateway.store import db
from tests.helpers import message

H = "hashimoto@zylker.example"
UPGRADE_HINT = "run `gateway db upgrade`"


def cli(config: Path, database_url: str, *args: str, stdin: bytes | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(config)], env=env,
                          capture_output=True, input=stdin, timeout=120, cwd=cwd)


def _plain_engine(database_url: str) -> sa.Engine:
    """An engine without any of the gateway's hooks, to look from outside."""
    return sa.create_engine(db.normalise_url(database_url), poolclass=sa.pool.NullPool)


def dump(database_url: str) -> dict[str, list[str]]:
    """Every row of every table, in a stable order."""
    engine = _plain_engine(database_url)
    try:
        with engine.connect() as conn:
            names = sorted(sa.inspect(conn).get_table_names())
            return {name: sorted(repr(tuple(row)) for row in conn.execute(sa.text(f'SELECT * FROM "{name}"')))
                    for name in names}
    finally:
        engine.dispose()


def active_flags(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = _plain_engine(database_url)
    try:
        with engine.connect() as conn:
            return {
                "organisations": sorted(conn.execute(sa.text("SELECT id, active FROM organisations")).all()),
                "users": sorted(conn.execute(sa.text("SELECT org_id, email, active FROM users")).all()),
                "pipelines": sorted(conn.execute(sa.text("SELECT org_id, name, active FROM pipelines")).all()),
            }
    finally:
        engine.dispose()


def sqlite_path(database_url: str) -> Path | None:
    url = make_url(database_url)
    return Path(url.database) if url.get_backend_name() == "sqlite" else None


def settle(path: Path) -> None:
    """Move every committed WAL frame into the database file (and empty the WAL), so
    the file's bytes are the database's whole content."""
    conn = sqlite3.connect(path)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
    finally:
        conn.close()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Unchanged:
    """Asserts that a command left the database as it found it."""

    def __init__(self, database_url: str):
        self.url = database_url
        self.path = sqlite_path(database_url)
        if self.path is not None:
            settle(self.path)
            self.file = sha(self.path)
        self.rows = dump(database_url)
        self.flags = active_flags(database_url)

    def check(self, what: str) -> None:
        if self.path is not None:
            # The file itself untouched, and no commit waiting in the WAL either:
            # moved into the file by a checkpoint, it would change the file.
            assert sha(self.path) == self.file, f"{what} wrote to {self.path}"
            settle(self.path)
            assert sha(self.path) == self.file, f"{what} committed to the WAL of {self.path}"
        assert active_flags(self.url) == self.flags, f"{what} changed active flags"
        assert dump(self.url) == self.rows, f"{what} changed rows"


@pytest.fixture
def filed(gw, tmp_path: Path) -> dict[str, Any]:
    """A database the real daemon filed mail into (dropbox, both organisations'
    aliases, so leads, contacts and records exist), then the daemon stopped."""
    box = gw.dropbox(H)
    assert gw.lmtp(H, [box], message(to="Charles <charless@zillum.com>")).codes == [250]
    assert gw.lmtp("charles@zillum.com", ["service@in.zylker.example"],
                   message(frm="Charles Smith <charles@zillum.com>", to="service@in.zylker.example",
                           subject="Printer is broken")).codes == [250]
    assert gw.lmtp("ann@customer.example", ["help@in.lumen.example"],
                   message(frm="Ann <ann@customer.example>", to="help@in.lumen.example",
                           subject="Help")).codes == [250]
    exported = gw.export()
    engine = gw.engine
    gw.stop()
    engine.dispose()
    # The same configuration, but its rules lack the organisation lumen.
    other = tmp_path / "other"
    shutil.copytree(gw.config_dir, other)
    (other / "rules" / "lumen.toml").unlink()
    return {"config": gw.config, "other": other / "gateway.toml", "url": gw.database_url, "box": box,
            "record": exported["records"][0]["id"], "email": exported["emails"][0]["id"]}


def read_only_commands(f: dict[str, Any], eml: Path) -> list[tuple[str, ...]]:
    return [
        ("export",),
        ("record", "show", str(f["record"])),
        ("quota", "status"),
        ("email", "raw", str(f["email"])),
        ("explain", str(eml), "--from", H, "--rcpt", f["box"], "--rcpt", "service@in.zylker.example",
         "--rcpt", "help@in.lumen.example"),
        ("check",),
        ("quarantine", "list"),
        ("review", "list", "--all"),
    ]


def test_read_only_commands_leave_the_database_unchanged(filed, tmp_path):
    eml = tmp_path / "new.eml"
    eml.write_bytes(message(to="New Customer <new@customer.example>", subject="Offer"))
    # One snapshot for all: each command is checked against it, so the one before it
    # changed nothing either.
    before = Unchanged(filed["url"])
    for config in (filed["config"], filed["other"]):
        for args in read_only_commands(filed, eml):
            proc = cli(config, filed["url"], *args)
            assert proc.returncode == 0, (config, args, proc.stderr.decode())
            before.check(f"gateway {' '.join(args)} -c {config}")


def test_export_with_rules_lacking_an_organisation_keeps_it_active(filed):
    # The report of issue 11: `gateway export -c other.toml` against production.
    proc = cli(filed["other"], filed["url"], "export")
    assert proc.returncode == 0, proc.stderr.decode()
    flags = active_flags(filed["url"])
    assert ("lumen", True) in [(o, bool(a)) for o, a in flags["organisations"]]
    assert all(active for org, _, active in flags["users"] if org == "lumen")
    assert all(active for org, _, active in flags["pipelines"] if org == "lumen")
    import json

    assert any(e["org"] == "lumen" for e in json.loads(proc.stdout)["emails"])  # it still shows everything


def test_explain_runs_the_filers_and_writes_nothing(filed, tmp_path):
    """explain files for real inside transactions that are rolled back; with a 4 MB
    message SQLite spills the uncommitted pages to the WAL, which must still leave
    the database as it was."""
    import json

    eml = tmp_path / "big.eml"
    eml.write_bytes(message(to="Fresh <fresh@customer.example>", subject="Big offer",
                            attachments=[("offer.pdf", "application/pdf", os.urandom(4 * 1024 * 1024))]))
    before = Unchanged(filed["url"])
    proc = cli(filed["config"], filed["url"], "explain", str(eml), "--from", H, "--rcpt", filed["box"],
               "--rcpt", "service@in.zylker.example", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    report = {r["rcpt"]: r for r in json.loads(proc.stdout)["recipients"]}
    # The filers did run: a lead and a record would be created.
    assert report[filed["box"]]["reply"].startswith("250 2.0.0")
    assert {(p["address"], p["action"]) for p in report[filed["box"]]["decision"]["people"]} == {
        ("fresh@customer.example", "created")}
    assert report["service@in.zylker.example"]["decision"]["record"] == {"action": "created"}
    before.check("gateway explain")


def test_explain_names_rules_the_database_has_not_seen(filed, tmp_path):
    rules = filed["config"].parent / "rules" / "zylker.toml"
    rules.write_text(rules.read_text() + '\n[[pipelines]]\nname = "Claims"\ntoken_prefix = "C"\n'
                     'stages = ["Open", "Closed"]\nclosed_stages = ["Closed"]\n[pipelines.alias]\n'
                     'address = "claims@in.zylker.example"\nowner = "kitazawa@zylker.example"\n')
    eml = tmp_path / "claim.eml"
    eml.write_bytes(message(frm="Ann <ann@customer.example>", to="claims@in.zylker.example", subject="Claim"))
    before = Unchanged(filed["url"])
    proc = cli(filed["config"], filed["url"], "explain", str(eml), "--rcpt", "claims@in.zylker.example")
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "pipeline Claims of zylker is not in the database yet" in out and "reply: unknown" in out
    assert "pipeline Claims (zylker)" in proc.stderr.decode()
    before.check("gateway explain")
    assert ("zylker", "Claims") not in {(o, n) for o, n, _ in active_flags(filed["url"])["pipelines"]}


def _schema_at(database_url: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    engine = db.make_engine(database_url)
    try:
        with engine.connect() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(Path(db.__file__).with_name("migrations")))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
    finally:
        engine.dispose()


def _previous_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).with_name("migrations")))
    previous = ScriptDirectory.from_config(cfg).get_revision(db.head_revision()).down_revision
    assert isinstance(previous, str)
    return previous


LOOKING = [("export",), ("record", "show", "1"), ("quota", "status"), ("email", "raw", "1"),
           ("quarantine", "list"), ("explain", "-", "--rcpt", "service@in.zylker.example")]


def test_read_only_commands_refuse_an_older_schema_and_do_not_migrate(config_dir, database_url):
    previous = _previous_revision()
    _schema_at(database_url, previous)
    before = Unchanged(database_url)
    config = config_dir / "gateway.toml"
    for args in LOOKING:
        proc = cli(config, database_url, *args, stdin=message())
        assert proc.returncode == 1, (args, proc.stderr.decode())
        err = proc.stderr.decode()
        assert UPGRADE_HINT in err and f"revision {previous}" in err and "Traceback" not in err, (args, err)
        before.check(f"gateway {' '.join(args)}")
    engine = _plain_engine(database_url)
    assert db.current_revision(engine) == previous
    engine.dispose()
    # check: a warning (serve upgrades it at start), an error with --strict.
    proc = cli(config, database_url, "check")
    assert proc.returncode == 0 and UPGRADE_HINT in proc.stderr.decode()
    assert cli(config, database_url, "check", "--strict").returncode == 1
    before.check("gateway check")


def test_read_only_commands_on_a_missing_database_create_nothing(config_dir, database_url, tmp_path):
    path = sqlite_path(database_url)
    if path is not None:
        database_url = f"sqlite:///{tmp_path / 'nowhere' / 'gateway.db'}"
    config = config_dir / "gateway.toml"
    for args in LOOKING:
        proc = cli(config, database_url, *args, stdin=message())
        err = proc.stderr.decode()
        assert proc.returncode == 1 and UPGRADE_HINT in err and "Traceback" not in err, (args, err)
    if path is not None:
        assert not (tmp_path / "nowhere").exists()
    else:
        assert dump(database_url) == {}  # no table created, not even alembic_version


def test_readonly_engine_refuses_writes(database_url):
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    engine.dispose()
    readonly = db.make_readonly_engine(database_url)
    try:
        with pytest.raises(sa.exc.DBAPIError) as err:
            with readonly.begin() as conn:
                conn.execute(sa.text("INSERT INTO organisations (id, name, timezone, active) "
                                     "VALUES ('x', 'x', 'UTC', true)"))
        assert "read-only" in str(err.value) or "readonly" in str(err.value)
    finally:
        readonly.dispose()
    assert dump(database_url)["organisations"] == []


def test_config_option_before_the_command(filed, tmp_path):
    """`gateway -c X export` reads X's database, like `gateway export -c X`."""
    env = {**os.environ, "GATEWAY_DATABASE_URL": filed["url"]}
    proc = subprocess.run([sys.executable, "-m", "gateway", "-c", str(filed["config"]), "export", "--org", "lumen"],
                          env=env, capture_output=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    import json

    assert [e["org"] for e in json.loads(proc.stdout)["emails"]] == ["lumen"]
