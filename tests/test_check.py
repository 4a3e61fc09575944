"""`gateway check` opens every file the configuration names and names each problem
with the setting, the file and the fix (issue 11): DKIM keys, the STARTTLS
certificate and key, the places serve writes to, the database's schema.  Real CLI
processes, real files (certificates made with trustme), real databases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import edit_config
import sqlalchemy as sa

from gateway.store import db

REPO = Path(__file__).resolve().parent.parent
ROOT = os.geteuid() == 0


def gateway(*args: str, db_url: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    if db_url:
        env["GATEWAY_DATABASE_URL"] = db_url
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def check_json(config: Path, *extra: str, db_url: str | None = None) -> tuple[int, dict[str, Any]]:
    proc = gateway("check", "--config", str(config), "--json", *extra, db_url=db_url)
    return proc.returncode, json.loads(proc.stdout)


def messages(items: list[dict[str, Any]]) -> str:
    return "\n".join(f"{p['file']}:{p['line']}: [{p['key']}] {p['message']}" for p in items)


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.fixture
def conf(config_dir: Path, tmp_path: Path) -> Path:
    """The demo configuration with its DKIM keys, on an up-to-date SQLite database."""
    config = config_dir / "gateway.toml"
    engine = db.make_engine(f"sqlite:///{config_dir / 'var' / 'gateway.db'}")
    db.upgrade(engine)
    engine.dispose()
    return config


def with_tls(config: Path, cert: Path, key: Path) -> None:
    edit_config(config, '# tls_cert = "/etc/gateway/tls/fullchain.pem"', f'tls_cert = "{cert}"')
    edit_config(config, '# tls_key = "/etc/gateway/tls/privkey.pem"', f'tls_key = "{key}"')


# --- the demo and DKIM keys -----------------------------------------------------------


def test_shipped_demo_warns_about_missing_dkim_keys_and_strict_fails(tmp_path):
    url = f"sqlite:///{tmp_path / 'none.db'}"
    code, doc = check_json(REPO / "gateway.toml", db_url=url)
    assert code == 0 and doc["ok"] is True and doc["errors"] == []
    keys = [w for w in doc["warnings"] if w["key"] == "dkim[0].key_file"]
    zylker = next(w for w in keys if w["file"].endswith("zylker.toml"))
    assert zylker["line"] == line_of(REPO / "rules" / "zylker.toml", "key_file =")
    assert "does not exist" in zylker["message"]
    assert "`gateway dkim keygen zylker.example --selector gw2026`" in zylker["message"]
    assert any("gateway dkim keygen lumen.example --selector gw2026" in w["message"] for w in keys)
    # check writes nothing: the missing database is reported, not created.
    assert not (tmp_path / "none.db").exists()
    text = gateway("check", "--config", str(REPO / "gateway.toml"), db_url=url)
    assert text.returncode == 0 and "warning:" in text.stderr and "OK" in text.stdout
    code, doc = check_json(REPO / "gateway.toml", "--strict", db_url=url)
    assert code == 1 and doc["ok"] is False and doc["warnings"] == []
    assert "gateway dkim keygen zylker.example --selector gw2026" in messages(doc["errors"])


def test_present_dkim_keys_pass(conf):
    code, doc = check_json(conf, "--strict")
    assert (code, doc["ok"], doc["errors"]) == (0, True, [])
    assert doc["database"]["state"] == "current"


def test_dkim_key_readable_by_others_is_an_error(conf):
    key = conf.parent / "keys" / "zylker.example.gw2026.pem"
    key.chmod(0o644)
    code, doc = check_json(conf)
    assert code == 1 and doc["ok"] is False
    assert "has mode 0644" in messages(doc["errors"]) and f"chmod 600 {key}" in messages(doc["errors"])
    key.chmod(0o400)  # stricter than 0600 is fine
    assert check_json(conf)[0] == 0


@pytest.mark.parametrize("content, expected", [
    (b"not a key\n", "is not a PEM private key"),
    ("ec", "is not an RSA key"),
    ("encrypted", "is encrypted with a passphrase"),
])
def test_dkim_key_that_is_not_a_usable_private_key_is_an_error(conf, content, expected):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if content == "ec":
        content = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    elif content == "encrypted":
        content = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"))
    key = conf.parent / "keys" / "zylker.example.gw2026.pem"
    key.write_bytes(content)  # type: ignore[arg-type]
    proc = gateway("check", "--config", str(conf))
    assert proc.returncode == 1
    rules = conf.parent / "rules" / "zylker.toml"
    assert f"{rules}:{line_of(rules, 'key_file =')}: [dkim[0].key_file] DKIM key {key} {expected}" in proc.stderr
    assert "gateway dkim keygen zylker.example --selector gw2026 --force" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(ROOT, reason="root reads any file; run as a normal user")
def test_unreadable_dkim_key_is_an_error(conf):
    key = conf.parent / "keys" / "zylker.example.gw2026.pem"
    key.chmod(0o000)
    code, doc = check_json(conf)
    assert code == 1 and f"cannot read DKIM key {key}: Permission denied" in messages(doc["errors"])


# --- STARTTLS certificate and key ---------------------------------------------------------


@pytest.fixture
def ca():  # type: ignore[no-untyped-def]
    import trustme

    return trustme.CA()


def write_cert(ca, directory: Path, name: str, **kw: Any) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    leaf = ca.issue_cert("gateway.zylker.example", **kw)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def tls_errors(conf: Path) -> tuple[int, str]:
    code, doc = check_json(conf)
    return code, messages([e for e in doc["errors"] if e["key"].startswith("submission.")])


def test_matching_certificate_and_key_pass(conf, ca, tmp_path):
    cert, key = write_cert(ca, tmp_path, "good")
    with_tls(conf, cert, key)
    assert tls_errors(conf) == (0, "")


def test_certificate_and_key_that_do_not_match_are_an_error(conf, ca, tmp_path):
    cert, _ = write_cert(ca, tmp_path, "one")
    _, other_key = write_cert(ca, tmp_path, "two")
    with_tls(conf, cert, other_key)
    code, errors = tls_errors(conf)
    assert code == 1
    assert f"[submission.tls_key] the TLS key {other_key} does not match the certificate {cert}" in errors
    assert f"{conf}:{line_of(conf, 'tls_key =')}:" in errors


def test_missing_or_garbled_tls_files_are_errors(conf, ca, tmp_path):
    cert, key = write_cert(ca, tmp_path, "good")
    with_tls(conf, tmp_path / "absent.crt", key)
    code, errors = tls_errors(conf)
    assert code == 1 and f"[submission.tls_cert] TLS certificate {tmp_path / 'absent.crt'} does not exist" in errors
    garbled = tmp_path / "garbled.pem"
    garbled.write_text("hello\n")
    edit_config(conf, str(tmp_path / "absent.crt"), str(garbled))
    code, errors = tls_errors(conf)
    assert code == 1 and f"TLS certificate {garbled} holds no PEM certificate" in errors
    edit_config(conf, f'tls_cert = "{garbled}"', f'tls_cert = "{cert}"')
    edit_config(conf, f'tls_key = "{key}"', f'tls_key = "{garbled}"')
    code, errors = tls_errors(conf)
    assert code == 1 and f"[submission.tls_key] TLS key {garbled} is not a PEM private key" in errors


def test_expired_certificate_is_an_error(conf, ca, tmp_path):
    past = datetime.now(timezone.utc) - timedelta(days=1)
    cert, key = write_cert(ca, tmp_path, "old", not_before=past - timedelta(days=90), not_after=past)
    with_tls(conf, cert, key)
    code, errors = tls_errors(conf)
    assert code == 1 and f"TLS certificate {cert} expired on {past:%Y-%m-%d}" in errors


def test_certificate_without_key_is_an_error(conf, ca, tmp_path):
    cert, _ = write_cert(ca, tmp_path, "good")
    edit_config(conf, '# tls_cert = "/etc/gateway/tls/fullchain.pem"', f'tls_cert = "{cert}"')
    code, errors = tls_errors(conf)
    assert code == 1 and "submission.tls_cert is set without submission.tls_key" in errors


@pytest.mark.skipif(ROOT, reason="root reads any file; run as a normal user")
def test_unreadable_tls_key_is_an_error(conf, ca, tmp_path):
    cert, key = write_cert(ca, tmp_path, "good")
    key.chmod(0o000)
    with_tls(conf, cert, key)
    code, errors = tls_errors(conf)
    assert code == 1 and f"cannot read TLS key {key}: Permission denied" in errors


def test_serve_refuses_to_start_with_a_named_tls_problem(conf, ca, tmp_path):
    cert, _ = write_cert(ca, tmp_path, "one")
    _, other_key = write_cert(ca, tmp_path, "two")
    with_tls(conf, cert, other_key)
    proc = gateway("serve", "--config", str(conf))
    assert proc.returncode == 1
    assert f"the TLS key {other_key} does not match the certificate {cert}" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- places serve writes to, the database -----------------------------------------------------


def test_pid_file_under_a_file_is_a_warning(conf, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    edit_config(conf, 'pid_file = "var/gateway.pid"', f'pid_file = "{blocker}/gateway.pid"')
    code, doc = check_json(conf)
    assert code == 0
    assert f"serve cannot write {blocker}/gateway.pid: {blocker} is a file, not a folder" in messages(doc["warnings"])
    assert check_json(conf, "--strict")[0] == 1


def test_database_newer_than_the_gateway_is_an_error(conf):
    url = f"sqlite:///{conf.parent / 'var' / 'gateway.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    code, doc = check_json(conf)
    assert code == 1 and doc["database"]["state"] == "ahead"
    assert "revision 9999, which this gateway does not know" in messages(doc["errors"])


def test_unreachable_database_is_an_error(conf, tmp_path):
    code, doc = check_json(conf, db_url="postgresql://nobody@127.0.0.1:1/nothing")
    assert code == 1 and doc["database"]["state"] == "unreachable"
    errors = [e for e in doc["errors"] if e["file"] == "environment GATEWAY_DATABASE_URL"]
    assert errors and "cannot open the database postgresql://nobody@127.0.0.1:1/nothing" in errors[0]["message"]


# --- output and options -------------------------------------------------------------------------


def test_json_is_printed_in_every_case(conf, tmp_path):
    edit_config(conf, "max_recipients = 100", "max_recipients = 0")
    proc = gateway("check", "--config", str(conf), "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["ok"] is False and doc["warnings"] == []
    assert doc["errors"][0]["key"] == "limits.max_recipients" and doc["errors"][0]["line"] == line_of(
        conf, "max_recipients = 0")
    conf.write_text("[limits\n")
    doc = json.loads(gateway("check", "--config", str(conf), "--json").stdout)
    assert doc["ok"] is False and "invalid TOML" in doc["errors"][0]["message"]
    doc = json.loads(gateway("check", "--config", str(tmp_path / "absent.toml"), "--json").stdout)
    assert doc["ok"] is False and "cannot read" in doc["errors"][0]["message"]


def test_config_option_before_or_after_the_command(conf, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()  # no gateway.toml here: the default would fail
    assert gateway("check", cwd=elsewhere).returncode == 1
    before = gateway("--config", str(conf), "check", "--json", cwd=elsewhere)
    assert before.returncode == 0 and json.loads(before.stdout)["config"] == str(conf)
    assert gateway("-c", str(conf), "check", cwd=elsewhere).returncode == 0
    # After the command wins over before it.
    both = gateway("-c", str(tmp_path / "absent.toml"), "check", "--json", "-c", str(conf), cwd=elsewhere)
    assert json.loads(both.stdout)["config"] == str(conf)
    # A nested command too: `gateway -c X db upgrade` migrates X's database.
    fresh = tmp_path / "fresh"
    shutil.copytree(conf.parent / "rules", fresh / "rules")
    shutil.copy(conf, fresh / "gateway.toml")
    proc = gateway("-c", str(fresh / "gateway.toml"), "db", "upgrade", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert (fresh / "var" / "gateway.db").is_file()
