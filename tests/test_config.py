"""gateway.toml and rule files: validation with file, key and line; overrides; paths."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import edit_config

from gateway import settings
from gateway.errors import ConfigError
from gateway.rules.loader import load_rules

REPO = Path(__file__).resolve().parent.parent


def check(config: Path, *extra: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(config), *extra],
                          capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=60)


def test_shipped_configuration_is_valid(tmp_path):
    # Its own (absent) database: a var/gateway.db left in the checkout must not matter.
    proc = check(REPO / "gateway.toml", "--json", env={"GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}"})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["errors"] == []
    assert set(doc["organisations"]) == {"zylker", "lumen"}
    assert doc["organisations"]["zylker"]["aliases"] == ["sales@in.zylker.example", "service@in.zylker.example"]


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    "old, new, key, message",
    [
        ('search = "contacts"', 'search = "everything"', "users[1].dropbox.search", "contacts"),
        ('role = "assistant"', 'role = "intern"', "users[2].role", "unknown role"),
        ('timezone = "Asia/Tokyo"', 'timezone = "Mars/Olympus"', "organisation.timezone", "unknown time zone"),
        ('owner = "kitazawa@zylker.example"', 'owner = "ghost@zylker.example"', "pipelines[1].alias.owner", "not a user"),
        ('reopen_to = "Reopened"', 'reopen_to = "Closed"', "pipelines[1].alias.reopen_to", "not an open stage"),
        ('address = "sales@in.zylker.example"', 'address = "sales@zylker.example"', "pipelines[0].alias.address", "gateway domain"),
        ('sharing = "private"', 'sharing = "private"\ncolour = "red"', "users[0].dropbox.colour", "unknown key"),
        ('senders = ["hashimoto@zylker.example", "h.hashimoto@zylker.example"]',
         'senders = ["a@x.example", "b@x.example", "c@x.example", "d@x.example", "e@x.example", "f@x.example"]',
         "users[0].dropbox.senders", "at most 5"),
    ],
)
def test_rule_errors_name_file_key_and_line(config_dir, old, new, key, message):
    path = config_dir / "rules" / "zylker.toml"
    edit_config(path, old, new)
    first = new.splitlines()[-1].split("=")[0].strip()
    line = _line_of(path, new.splitlines()[-1]) if "\n" in new else _line_of(path, new)
    proc = check(config_dir / "gateway.toml")
    assert proc.returncode == 1
    assert f"{path}:{line}: [{key}]" in proc.stderr, (proc.stderr, first)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_toml_syntax_error_names_line(config_dir):
    path = config_dir / "rules" / "lumen.toml"
    lines = path.read_text().splitlines()
    assert lines[5] == 'name = "Lumen"'  # line 6, made invalid TOML (a bare word) below
    lines[5] = "name = Lumen"
    path.write_text("\n".join(lines) + "\n")
    proc = check(config_dir / "gateway.toml")
    assert proc.returncode == 1
    assert f"{path}:6:" in proc.stderr and "invalid TOML" in proc.stderr


def test_errors_across_files(config_dir):
    shutil.copy(config_dir / "rules" / "lumen.toml", config_dir / "rules" / "lumen2.toml")
    with pytest.raises(ConfigError) as err:
        load_rules(config_dir / "rules")
    text = str(err.value)
    assert "lumen2.toml" in text and "organisation 'lumen' is also defined" in text
    assert "gateway domain in.lumen.example is also used" in text
    assert "alias help@in.lumen.example is also used" in text


def test_gateway_toml_errors(config_dir):
    path = config_dir / "gateway.toml"
    edit_config(path, "max_recipients = 100", "max_recipients = 0")
    proc = check(path)
    assert proc.returncode == 1
    assert f"{path}:{_line_of(path, 'max_recipients = 0')}: [limits.max_recipients]" in proc.stderr


def test_environment_overrides(config_dir):
    env = {"GATEWAY_DATABASE_URL": "postgresql://u@db.example/gw", "GATEWAY_LMTP_LISTEN": "0.0.0.0:24",
           "GATEWAY_SMTP_LISTEN": "[::1]:2525"}
    s = settings.load(config_dir / "gateway.toml", environ=env)
    assert s.database_url == "postgresql://u@db.example/gw"
    assert s.listeners.lmtp == "0.0.0.0:24" and s.listeners.smtp == "[::1]:2525"
    with pytest.raises(ConfigError) as err:
        settings.load(config_dir / "gateway.toml", environ={"GATEWAY_LMTP_LISTEN": "nope"})
    assert "GATEWAY_LMTP_LISTEN" in str(err.value)


def test_relative_paths_resolve_against_the_config_folder(config_dir, tmp_path):
    s = settings.load(config_dir / "gateway.toml", environ={})
    assert s.rules_dir == config_dir / "rules"
    assert s.database_url == f"sqlite:///{(config_dir / 'var' / 'gateway.db').resolve()}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = check(Path("..") / "conf" / "gateway.toml", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr


def test_missing_config_file(tmp_path):
    proc = check(tmp_path / "nope.toml")
    assert proc.returncode == 1 and "cannot read" in proc.stderr


def test_cli_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, timeout=60)
    for command in ("serve", "check", "db", "dropbox", "export", "email"):
        assert command in proc.stdout
    assert "GATEWAY_DATABASE_URL" in proc.stdout


def test_one_alias_per_pipeline(config_dir):
    path = config_dir / "rules" / "lumen.toml"
    edit_config(path, "[pipelines.alias]", "[[pipelines.alias]]")
    with path.open("a") as f:
        f.write('\n[[pipelines.alias]]\naddress = "help2@in.lumen.example"\nowner = "owner@lumen.example"\n')
    proc = check(config_dir / "gateway.toml")
    assert proc.returncode == 1
    assert "[pipelines[0].alias]" in proc.stderr


def test_reopen_stages_must_be_closed_and_open(config_dir):
    path = config_dir / "rules" / "zylker.toml"
    edit_config(path, 'reopen_from = ["Resolved", "Closed"]', 'reopen_from = ["Open", "Gone"]')
    proc = check(config_dir / "gateway.toml")
    assert proc.returncode == 1
    assert "'Open' is not a closed stage of Service" in proc.stderr
    assert "'Gone' is not a closed stage of Service" in proc.stderr
    assert f":{_line_of(path, 'reopen_from = [')}: [pipelines[1].alias.reopen_from]" in proc.stderr


def test_token_prefixes_unique(config_dir):
    path = config_dir / "rules" / "zylker.toml"
    edit_config(path, 'token_prefix = "D"', 'token_prefix = "S"')
    proc = check(config_dir / "gateway.toml")
    assert proc.returncode == 1 and "token prefix 'S' is also used" in proc.stderr
