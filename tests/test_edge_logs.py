"""Log lines that operators and fail2ban/CrowdSec act on (issue 11), read from a real
`gateway serve` process's JSON log: failed AUTH, refused connections, relaying
denied, NUL in a command, a missing DKIM key."""

from __future__ import annotations

import base64
import configparser
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.helpers import edit_config, free_port, message, serve_process, wait_port

REPO = Path(__file__).resolve().parent.parent
FILTER = REPO / "deploy" / "fail2ban" / "filter.d" / "crm-gateway.conf"
CRM = "crm@zylker.example"
K = "kitazawa@zylker.example"

# fail2ban 1.0's <HOST> (fail2ban/server/failregex.py, R_HOST[RI_HOST], with
# ipdns.IPAddr.IP_4_RE and IP_6_RE), translated as it is: an address or a name.
_IP4 = r"(?:\d{1,3}\.){3}\d{1,3}"
_IP6 = r"(?:[0-9a-fA-F]{1,4}::?|::){1,7}(?:[0-9a-fA-F]{1,4}|(?<=:):)"
_HOST = (rf"(?:\[?(?:(?:::f{{4,6}}:)?(?P<ip4>{_IP4})|(?P<ip6>{_IP6}))\]?"
         rf"|(?P<dns>[\w\-.^_]*\w))")


# The strptime codes the filter's datepattern uses, as fail2ban's DateTemplate reads them.
_STRPTIME = {"%Y": r"\d{4}", "%m": r"\d{2}", "%d": r"\d{2}", "%H": r"\d{2}", "%M": r"\d{2}", "%S": r"\d{2}",
             "%f": r"\d{1,6}", "%z": r"(?:Z|[+-]\d{2}:?\d{2})"}


class Daemon:
    """`gateway serve` with all three mail listeners, relaying to ``relay_port``."""

    def __init__(self, config_dir: Path, database_url: str, log: Path, relay_port: int):
        self.ports = {name: free_port() for name in ("lmtp", "smtp", "submission")}
        self.log = log
        env = {**os.environ, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_METRICS_LISTEN": "off",
               "GATEWAY_API_LISTEN": "off",
               "GATEWAY_RELAY_URL": f"smtp://127.0.0.1:{relay_port}"}
        env.update({f"GATEWAY_{name.upper()}_LISTEN": f"127.0.0.1:{port}" for name, port in self.ports.items()})
        self.proc = serve_process(config_dir / "gateway.toml", env, log)
        for port in self.ports.values():
            wait_port(port, self.proc, log)
        # "ready" comes after the signal handlers: a SIGTERM before it would kill, not stop.
        deadline = time.monotonic() + 60
        while not self.events("ready"):
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

    def lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.startswith("{")]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, self.lines()) if e["event"] == name]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(90) == 0, self.log.read_text()[-3000:]


def _edit(path: Path, old: str, new: str) -> None:
    edit_config(path, old, new)


@pytest.fixture
def daemon(config_dir: Path, database_url: str, sink: Any, tmp_path: Path) -> Iterator[Daemon]:
    # Low enough to meet with a few sockets; all listeners share it.
    _edit(config_dir / "gateway.toml", "max_connections_per_client = 50", "max_connections_per_client = 4")
    d = Daemon(config_dir, database_url, tmp_path / "serve.log", sink.port)
    try:
        yield d
    finally:
        d.stop()


def _failed_auth(port: int, username: str, password: str = "wrong") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo()
        return c.docmd("AUTH PLAIN", base64.b64encode(f"\0{username}\0{password}".encode()).decode())


def _failregexes() -> list[re.Pattern[str]]:
    """The shipped filter's failregex lines as fail2ban compiles them (<HOST> expanded)."""
    conf = configparser.ConfigParser()  # fail2ban's reader is configparser: %% is %
    conf.read(FILTER)
    lines = [line.strip() for line in conf["Definition"]["failregex"].splitlines() if line.strip()]
    assert lines
    return [re.compile(line.replace("<HOST>", _HOST)) for line in lines]


def _banned_hosts(lines: list[str]) -> list[str]:
    """The host fail2ban would count for each line (search, as fail2ban does)."""
    hosts = []
    for line in lines:
        for regex in _failregexes():
            found = regex.search(line)
            if found:
                hosts.append(next(v for v in found.group("ip4", "ip6", "dns") if v))
                break
    return hosts


# --- AUTH -------------------------------------------------------------------------------


def test_auth_failure_and_success_lines_carry_client_ip_and_username(daemon):
    assert _failed_auth(daemon.ports["submission"], CRM)[0] == 535
    assert _failed_auth(daemon.ports["submission"], "nobody@zylker.example")[0] == 535
    assert _failed_auth(daemon.ports["submission"], CRM, "demo-only")[0] == 235
    failed = daemon.events("auth_failed")
    assert [(e["client_ip"], e["username"], e["reason"], e["listener"], e["mechanism"]) for e in failed] == [
        ("127.0.0.1", CRM, "bad_password", "submission", "PLAIN"),
        ("127.0.0.1", "nobody@zylker.example", "unknown_user", "submission", "PLAIN")]
    (ok,) = daemon.events("auth_ok")
    assert (ok["client_ip"], ok["username"], ok["org"]) == ("127.0.0.1", CRM, "zylker")
    assert "wrong" not in daemon.log.read_text() and "demo-only" not in daemon.log.read_text()


def test_fail2ban_filter_matches_failed_auth_lines_only(daemon):
    for _ in range(3):
        assert _failed_auth(daemon.ports["submission"], CRM)[0] == 535
    assert _failed_auth(daemon.ports["submission"], CRM, "demo-only")[0] == 235
    lines = daemon.lines()
    failed = [line for line in lines if json.loads(line)["event"] == "auth_failed"]
    assert len(failed) == 3
    # The same lines as a log file holds them, and as the journal backend shows them.
    assert _banned_hosts(lines) == ["127.0.0.1"] * 3
    assert _banned_hosts([f"gw1 gateway[4242]: {line}" for line in lines]) == ["127.0.0.1"] * 3
    # The date fail2ban reads from a log file is the line's own timestamp.
    conf = configparser.ConfigParser()
    conf.read(FILTER)
    date = conf["Definition"]["datepattern"]
    for code, regex in _STRPTIME.items():
        date = date.replace(code, regex)
    assert all(re.search(date, line) for line in failed)


def test_fail2ban_filter_cannot_be_steered_by_the_username(daemon):
    """A username that spells out JSON keys still gets the real client's address."""
    forged = 'x", "client_ip": "203.0.113.9", "listener": "submission", "event": "auth_failed'
    assert _failed_auth(daemon.ports["submission"], forged)[0] == 535
    (line,) = [line for line in daemon.lines() if json.loads(line)["event"] == "auth_failed"]
    assert json.loads(line)["username"] == forged
    assert _banned_hosts([line]) == ["127.0.0.1"]


@pytest.mark.skipif(shutil.which("fail2ban-regex") is None, reason="fail2ban is not installed")
def test_fail2ban_regex_tool_accepts_the_filter(daemon, tmp_path):
    """fail2ban's own fail2ban-regex (when installed) on the daemon's log and the filter."""
    for _ in range(2):
        assert _failed_auth(daemon.ports["submission"], CRM)[0] == 535
    assert _failed_auth(daemon.ports["submission"], CRM, "demo-only")[0] == 235
    snapshot = daemon.lines()
    log = tmp_path / "only-json.log"
    log.write_text("\n".join(snapshot) + "\n")
    proc = subprocess.run(["fail2ban-regex", str(log), str(FILTER)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = len(snapshot)
    assert re.search(r"^Failregex: 2 total$", proc.stdout, re.M), proc.stdout
    counted = rf"^Lines: {lines} lines, 0 ignored, 2 matched, {lines - 2} missed$"
    assert re.search(counted, proc.stdout, re.M), proc.stdout
    # Every line's date came from its "timestamp" key.
    assert re.search(rf"^\|\s+\[{lines}\] \"timestamp\": ", proc.stdout, re.M), proc.stdout


# --- connection limits, relaying, NUL ---------------------------------------------------


def test_refused_connection_line_carries_client_ip(daemon):
    opened, greetings = [], []
    try:
        while len(opened) < 10 and not any(g.startswith(b"421") for g in greetings):
            sock = socket.create_connection(("127.0.0.1", daemon.ports["submission"]), timeout=10)
            opened.append(sock)
            greetings.append(sock.makefile("rb").readline())
    finally:
        for sock in opened:
            sock.close()
    assert greetings[0].startswith(b"220") and greetings[-1].startswith(b"421 4.7.0"), greetings
    (refused,) = daemon.events("connection_refused")
    assert (refused["client_ip"], refused["listener"], refused["reason"], refused["code"]) == (
        "127.0.0.1", "submission", "too_many_connections", 421)
    # The filter's optional line for a jail of its own matches it.
    optional = [line.strip().lstrip("#").strip() for line in FILTER.read_text().splitlines()
                if '"connection_refused"' in line and line.lstrip().startswith("#")]
    (raw,) = [line for line in daemon.lines() if '"event": "connection_refused"' in line]
    assert optional and _banned_hosts([raw]) == [] and re.search(optional[0].replace("<HOST>", _HOST), raw)


def test_relay_refusal_lines_carry_client_ip(daemon):
    with smtplib.SMTP("127.0.0.1", daemon.ports["smtp"], timeout=30) as c:
        c.ehlo()
        assert c.mail("hashimoto@zylker.example")[0] == 250
        assert c.rcpt("someone@elsewhere.example")[0] == 550
    with smtplib.LMTP("127.0.0.1", daemon.ports["lmtp"], timeout=30) as c:
        c.ehlo_or_helo_if_needed()
        assert c.mail("hashimoto@zylker.example")[0] == 250
        assert c.rcpt("other@elsewhere.example")[0] == 550
    # Submission: a sender the account may not use, refused at MAIL.
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=30) as c:
        c.ehlo()
        c.login(CRM, "demo-only")
        assert c.mail("owner@lumen.example")[0] == 550
    denied = [e for e in daemon.events("recipient_decision") if e.get("reason") == "relay_denied"]
    assert [(e["client_ip"], e["listener"], e["code"], e["status"], e["domain"]) for e in denied] == [
        ("127.0.0.1", "smtp", 550, "5.7.1", "elsewhere.example"),
        ("127.0.0.1", "lmtp", 550, "5.7.1", "elsewhere.example")]
    (refused,) = daemon.events("submission_refused")
    assert (refused["client_ip"], refused["username"], refused["code"]) == ("127.0.0.1", CRM, 550)


def test_nul_refusal_is_logged_with_client_ip(daemon):
    with smtplib.SMTP("127.0.0.1", daemon.ports["smtp"], timeout=30) as c:
        c.ehlo()
        assert c.docmd("MAIL FROM:<a\0b@zylker.example>")[0] == 501
    (refused,) = daemon.events("command_refused")
    assert (refused["client_ip"], refused["listener"], refused["command"], refused["reason"], refused["status"]) == (
        "127.0.0.1", "smtp", "MAIL", "nul_in_command", "5.5.2")


# --- DKIM key file missing --------------------------------------------------------------


def test_missing_dkim_key_answers_451_435_and_logs_the_file(config_dir, database_url, sink, tmp_path):
    key = config_dir / "keys" / "zylker.example.gw2026.pem"
    key.unlink()
    d = Daemon(config_dir, database_url, tmp_path / "serve.log", sink.port)
    try:
        with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=30) as c:
            c.ehlo()
            c.login(CRM, "demo-only")
            assert c.mail(K)[0] == 250
            assert c.rcpt("charles@zillum.com")[0] == 250
            code, text = c.data(message(frm=K, to="charles@zillum.com"))
        assert (code, text[:5]) == (451, b"4.3.5"), text
        assert str(key).encode() not in text  # the path is for the operator, not the client
        (missing,) = d.events("dkim_key_unavailable")
        assert missing["file"] == str(key.resolve())
        assert missing["domain"] == "zylker.example" and missing["level"] == "error"
        assert "gateway dkim keygen zylker.example --selector gw2026" in missing["fix"]
        assert sink.messages == []
        # Once the operator has made the key, the submitter's retry goes through.
        assert subprocess.run([sys.executable, "-m", "gateway", "dkim", "keygen", "zylker.example",
                               "--selector", "gw2026", "--config", str(config_dir / "gateway.toml")],
                              capture_output=True, timeout=120).returncode == 0
        with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=30) as c:
            c.ehlo()
            c.login(CRM, "demo-only")
            assert c.sendmail(K, ["charles@zillum.com"], message(frm=K, to="charles@zillum.com")) == {}
        assert len(sink.messages) == 1
    finally:
        d.stop()


def test_unusable_dkim_key_answers_451_435_naming_the_file(config_dir, database_url, sink, tmp_path):
    key = config_dir / "keys" / "zylker.example.gw2026.pem"
    d = Daemon(config_dir, database_url, tmp_path / "serve.log", sink.port)
    try:
        # Broken after start (`gateway check` refuses such a file at start).
        key.write_bytes(b"-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n-----END RSA PRIVATE KEY-----\n")
        os.utime(key, (time.time() + 5, time.time() + 5))  # a new mtime: the key is read again
        with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=30) as c:
            c.ehlo()
            c.login(CRM, "demo-only")
            with pytest.raises(smtplib.SMTPDataError) as err:
                c.sendmail(K, ["charles@zillum.com"], message(frm=K, to="charles@zillum.com"))
        assert (err.value.smtp_code, err.value.smtp_error[:5]) == (451, b"4.3.5")
        (unusable,) = d.events("dkim_key_unavailable")
        assert unusable["file"] == str(key.resolve()) and "not a usable private key" in unusable["error"]
    finally:
        d.stop()
