"""Operations: metrics after real deliveries, probes, live reload, explain, Postfix maps,
graceful stop of a real `gateway serve` process."""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import free_port, message, serve_process, edit_config

H = "hashimoto@zylker.example"


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def scrape(gw) -> dict[str, float]:
    port = gw.app.bound["metrics"][1]
    text = http_get(f"http://127.0.0.1:{port}/metrics")[1].decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def delta(before, after, name):
    return after.get(name, 0.0) - before.get(name, 0.0)


def test_metrics_count_real_deliveries_exactly(gw):
    box = gw.dropbox(H)
    before = scrape(gw)
    # Built once: the same delivery twice (built twice, a second boundary between the
    # two Date headers would make them two mails).
    m1 = message(message_id="<m1@zylker.example>", to="new@customer.example")
    assert gw.lmtp(H, [box, "nobody@in.zylker.example"], m1).codes == [250]
    assert gw.lmtp(H, [box], m1).codes == [250]
    assert gw.lmtp("c@x.example", ["service@in.zylker.example"],
                   message(frm="c@x.example", to="service@in.zylker.example")).codes == [250]
    after = scrape(gw)
    d = lambda name: delta(before, after, name)  # noqa: E731
    rcpt = 'gateway_recipient_decisions_total{listener="lmtp",outcome="%s",reason="%s",stage="rcpt"}'
    data = 'gateway_recipient_decisions_total{listener="lmtp",outcome="%s",reason="%s",stage="data"}'
    assert d(rcpt % ("accepted", "recipient_ok")) == 3
    assert d(rcpt % ("rejected", "no_such_user")) == 1
    assert d(data % ("filed", "filed")) == 2
    assert d(data % ("duplicate", "duplicate")) == 1
    assert d('gateway_created_total{kind="lead",pipeline=""}') == 1
    assert d('gateway_created_total{kind="contact",pipeline="Service"}') == 1
    assert d('gateway_created_total{kind="record",pipeline="Service"}') == 1
    assert d('gateway_thread_decisions_total{method="none"}') == 1
    assert d('gateway_sessions_total{listener="lmtp"}') == 3
    assert d('gateway_message_size_bytes_count{listener="lmtp"}') == 3
    assert d('gateway_processing_duration_seconds_count{stage="parse"}') == 3
    assert after['gateway_up'] == 1
    assert after['gateway_quota_limit{class="individual",org="zylker"}'] == 900
    assert after['gateway_quota_used{class="individual",org="lumen"}'] == 0
    assert 'gateway_rule_reloads_total{result="failed"}' in after
    assert d('gateway_db_operation_duration_seconds_count{operation="file_dropbox"}') == 2
    assert d('gateway_db_operation_duration_seconds_count{operation="file_alias"}') == 1
    assert d('gateway_db_operation_duration_seconds_count{operation="dropbox_lookup"}') == 2
    assert after['gateway_database_up'] == 1
    assert after['gateway_deliveries_in_flight'] == 0
    declared = set(re.findall(r"^# TYPE (\S+)", _declared(gw), re.M))
    assert declared == {
        "gateway_build_info", "gateway_up", "gateway_sessions_total", "gateway_sessions_active",
        "gateway_recipient_decisions_total", "gateway_message_size_bytes", "gateway_processing_duration_seconds",
        "gateway_created_total", "gateway_thread_decisions_total", "gateway_reopens_total", "gateway_quota_limit",
        "gateway_quota_used", "gateway_quota_refusals_total", "gateway_relay_attempts_total",
        "gateway_relay_duration_seconds", "gateway_db_operation_duration_seconds", "gateway_errors_total",
        "gateway_rule_reloads_total", "gateway_rules_last_reload_timestamp_seconds", "gateway_quarantined_total",
        "gateway_database_up", "gateway_quarantine_messages", "gateway_deliveries_in_flight",
        "gateway_big_messages_in_memory", "gateway_worker_jobs", "gateway_parse_anomalies_total",
        "gateway_events_sequenced_total", "gateway_events_pruned_total", "gateway_webhook_deliveries_total",
        "gateway_events_pending", "gateway_events_oldest_pending_age_seconds", "gateway_review_held_total",
        "gateway_review_capped_total", "gateway_review_decisions_total", "gateway_review_pending",
        "gateway_review_oldest_pending_age_seconds"} | STANDARD_COLLECTORS


# The standard collectors of prometheus-client (process, platform, gc), in our registry.
STANDARD_COLLECTORS = {
    "process_cpu_seconds_total", "process_max_fds", "process_open_fds", "process_resident_memory_bytes",
    "process_start_time_seconds", "process_virtual_memory_bytes", "python_info", "python_gc_collections_total",
    "python_gc_objects_collected_total", "python_gc_objects_uncollectable_total"}


def _declared(gw) -> str:
    port = gw.app.bound["metrics"][1]
    return http_get(f"http://127.0.0.1:{port}/metrics")[1].decode()


def test_labels_are_bounded(gw):
    box = gw.dropbox(H)
    before = scrape(gw)
    assert gw.lmtp(H, [box], message(to="secret-customer@example.com", subject="secret subject")).codes == [250]
    assert delta(before, scrape(gw), 'gateway_created_total{kind="lead",pipeline=""}') == 1
    text = _declared(gw)
    assert "secret" not in text and "@" not in text.replace("gateway_", "")


def test_probes(gw):
    port = gw.app.bound["metrics"][1]
    assert http_get(f"http://127.0.0.1:{port}/healthz") == (200, b"ok\n")
    status, body = http_get(f"http://127.0.0.1:{port}/readyz")
    assert status == 200
    assert json.loads(body) == {"ready": True, "database": True, "rules": True, "listeners": True}
    gw.app.sessions.stopping = True
    status, body = http_get(f"http://127.0.0.1:{port}/readyz")
    assert status == 503 and json.loads(body)["listeners"] is False
    gw.app.sessions.stopping = False
    assert http_get(f"http://127.0.0.1:{port}/nope")[0] == 404


def _wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_rule_file_change_reloads_and_a_bad_edit_keeps_the_old_rules(gw):
    rules = gw.config_dir / "rules" / "zylker.toml"
    good = rules.read_text()
    before = scrape(gw)
    edit_config(rules, 'role = "standard"', 'role = "no-such-role"')
    assert _wait_for(lambda: delta(before, scrape(gw), 'gateway_rule_reloads_total{result="failed"}') == 1)
    # The old rules still route.
    assert gw.lmtp("c@x.example", ["sales@in.zylker.example"], message(frm="c@x.example")).codes == [250]
    # A good edit: the Sales alias goes away.
    start = good.index('[pipelines.alias]\naddress = "sales@')
    rules.write_text(good[:start] + good[good.index("[[pipelines]]", start):])
    assert _wait_for(lambda: delta(before, scrape(gw), 'gateway_rule_reloads_total{result="ok"}') == 1)
    assert gw.lmtp("c@x.example", ["sales@in.zylker.example"], message(frm="c@x.example")).rcpt_codes == [550]


def test_postfix_map_has_exactly_the_live_addresses(gw):
    live = {gw.dropbox(u) for u in (H, "kitazawa@zylker.example", "owner@lumen.example")}
    aliases = {"sales@in.zylker.example", "service@in.zylker.example", "help@in.lumen.example"}
    out = gw.cli("postfix-maps", "--output", "-").stdout.decode()
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    assert sorted(lines) == sorted(f"{a} OK" for a in live | aliases)
    # regenerate rewrites the configured map file (postfix.recipient_map).
    old = gw.dropbox(H)
    new = gw.cli("dropbox", "regenerate", H).stdout.decode().strip()
    written = (gw.config_dir / "var" / "postfix-recipients").read_text()
    assert f"{new} OK" in written and old not in written
    assert (gw.config_dir / "var" / "postfix-recipients").stat().st_mode & 0o777 == 0o640


def test_explain_agrees_with_the_real_delivery(gw, tmp_path):
    box_h, box_k = gw.dropbox(H), gw.dropbox("kitazawa@zylker.example")
    # A contact exists for one customer, so matching and creating both show.
    assert gw.lmtp("kitazawa@zylker.example", [box_k], message(frm="kitazawa@zylker.example",
                                                               to="known@customer.example")).codes == [250]
    data = message(frm=H, to="known@customer.example, fresh@customer.example", subject="Offer",
                   message_id="<explain-1@zylker.example>")
    eml = tmp_path / "offer.eml"
    eml.write_bytes(data)
    rcpts = [box_h, box_k, "sales@in.zylker.example", "nobody@in.zylker.example"]
    args = ["explain", str(eml), "--from", H, "--json"]
    for r in rcpts:
        args += ["--rcpt", r]
    counts_before = {t: gw.count(t) for t in ("emails", "leads", "contacts", "records", "deliveries")}
    report = json.loads(gw.cli(*args).stdout)
    assert {t: gw.count(t) for t in counts_before} == counts_before  # wrote nothing
    explained = {r["rcpt"]: r for r in report["recipients"]}
    assert explained[box_h]["reply"].startswith("250 2.0.0")
    assert explained[box_k]["reply"].startswith("550 5.7.1")
    assert explained["nobody@in.zylker.example"]["reply"].startswith("550 5.1.1")
    people = {p["address"]: (p["kind"], p["action"]) for p in explained[box_h]["decision"]["people"]}
    assert people == {"known@customer.example": ("contact", "matched"), "fresh@customer.example": ("lead", "created")}
    sales = explained["sales@in.zylker.example"]["decision"]
    assert sales["noise"] is None
    assert (sales["thread"]["method"], sales["contact"]["action"], sales["record"]["action"]) == (
        "none", "created", "created")
    text = gw.cli("explain", str(eml), "--from", H, "--rcpt", box_h).stdout.decode()
    assert "fresh@customer.example: created lead" in text and "reply: 250 2.0.0" in text
    # Now for real: the same replies and the same decisions.
    tx = gw.lmtp(H, rcpts, data)
    assert [str(c) for c in tx.codes] == [explained[r]["reply"][:3] for r in rcpts if explained[r]["reply"][:3] != "550"
                                          or "5.1.1" not in explained[r]["reply"]]
    from sqlalchemy import text as sql

    with gw.engine.connect() as conn:
        stored = [json.loads(d) if isinstance(d, str) else d for (d,) in conn.execute(
            # The key is the Message-ID and a digest of the content (deliveries.message_key).
            sql("SELECT decision FROM deliveries WHERE message_key LIKE 'mid:explain-1@zylker.example %' ORDER BY id"))]
    by_route = {d["route"]: d for d in stored}
    real_people = {p["address"]: (p["kind"], p["action"]) for p in by_route["dropbox"]["people"]}
    assert real_people == people
    real_sales = by_route["alias"]
    for key in ("noise", "sender"):
        assert real_sales[key] == sales[key]
    assert real_sales["thread"]["method"] == sales["thread"]["method"]
    assert (real_sales["record"]["action"], (real_sales["contact"] or {}).get("action")) == (
        sales["record"]["action"], (sales["contact"] or {}).get("action"))


# --- a real process: reload by command, graceful stop --------------------------------


class Daemon:
    def __init__(self, config_dir: Path, database_url: str, log: Path):
        self.lmtp, self.metrics = free_port(), free_port()
        self.config = str(config_dir / "gateway.toml")
        self.env = {**os.environ, "GATEWAY_DATABASE_URL": database_url,
                    "GATEWAY_LMTP_LISTEN": f"127.0.0.1:{self.lmtp}", "GATEWAY_SMTP_LISTEN": "off",
                    "GATEWAY_SUBMISSION_LISTEN": "off", "GATEWAY_METRICS_LISTEN": f"127.0.0.1:{self.metrics}",
                    "GATEWAY_API_LISTEN": "off"}
        self.log = log

    def start(self) -> "Daemon":
        self.proc = serve_process(self.config, self.env, self.log)
        assert _wait_for(self._ready, 60), self.log.read_text()
        return self

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return http_get(f"http://127.0.0.1:{self.metrics}/readyz")[0] == 200
        except OSError:
            return False

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", self.config], env=self.env,
                              capture_output=True, timeout=120)

    def metric(self, name: str) -> float:
        text = http_get(f"http://127.0.0.1:{self.metrics}/metrics")[1].decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(90)


def test_gateway_reload_command_and_sighup(config_dir, database_url, tmp_path):
    conf = config_dir / "gateway.toml"
    edit_config(conf, "rules_poll_seconds = 1", "rules_poll_seconds = 0")
    d = Daemon(config_dir, database_url, tmp_path / "serve.log").start()
    try:
        ok = 'gateway_rule_reloads_total{result="ok"}'
        assert d.metric(ok) == 1
        proc = d.cli("reload", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["pid"] == d.proc.pid
        assert _wait_for(lambda: d.metric(ok) == 2)
        rules = config_dir / "rules" / "lumen.toml"
        edit_config(rules, 'plan = "free"', 'plan = "gratis"')
        proc = d.cli("reload")
        assert proc.returncode == 1 and b"lumen.toml:" in proc.stderr and b"organisation.plan" in proc.stderr
        os.kill(d.proc.pid, signal.SIGHUP)  # the daemon itself refuses it too
        assert _wait_for(lambda: d.metric('gateway_rule_reloads_total{result="failed"}') == 1)
    finally:
        assert d.stop() == 0
    logged = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines() if line.startswith("{")]
    failed = [e for e in logged if e["event"] == "rules_reload_failed"]
    assert failed and failed[0]["file"].endswith("lumen.toml") and failed[0]["key"] == "organisation.plan"
    assert isinstance(failed[0]["line"], int)


def test_sigterm_during_a_10mb_delivery_loses_nothing(config_dir, database_url, tmp_path):
    d = Daemon(config_dir, database_url, tmp_path / "serve.log").start()
    box = d.cli("dropbox", "address", H).stdout.decode().strip()
    body = b"x" * 998 + b"\r\n"
    data = message(to="big@customer.example", message_id="<big-1@zylker.example>") + body * 9500
    outcome: dict[str, object] = {}
    sent_half = threading.Event()

    def send() -> None:
        try:
            with socket.create_connection(("127.0.0.1", d.lmtp), timeout=60) as sock:
                f = sock.makefile("rb")
                f.readline()
                sock.sendall(f"LHLO t\r\nMAIL FROM:<{H}>\r\nRCPT TO:<{box}>\r\nDATA\r\n".encode())
                replies = []
                while not replies or not replies[-1].startswith(b"354"):
                    replies.append(f.readline())
                half = len(data) // 2
                sock.sendall(data[:half])
                sent_half.set()
                time.sleep(0.5)
                sock.sendall(data[half:] + b".\r\n")
                outcome["reply"] = f.readline()
        except OSError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=send)
    thread.start()
    assert sent_half.wait(30)
    d.proc.send_signal(signal.SIGTERM)
    # A new session now: refused, the listener is closed.
    time.sleep(0.2)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", d.lmtp), timeout=5).recv(100) or (_ for _ in ()).throw(OSError())
    thread.join(60)
    assert d.proc.wait(60) == 0
    reply = outcome.get("reply", b"")
    filed = d.cli("export").stdout
    stored = [e for e in json.loads(filed)["emails"] if e["message_id"] == "big-1@zylker.example"]
    if reply.startswith(b"250"):
        assert len(stored) == 1 and stored[0]["size"] == len(data)
    else:
        assert stored == [], (reply, outcome)
    # The MTA retries: filed exactly once.
    d.start()
    try:
        with smtplib.LMTP("127.0.0.1", d.lmtp, timeout=60) as client:
            client.ehlo_or_helo_if_needed()
            client.mail(H)
            client.rcpt(box)
            code, _ = client.data(data)
            assert code == 250
    finally:
        assert d.stop() == 0
    stored = [e for e in json.loads(d.cli("export").stdout)["emails"] if e["message_id"] == "big-1@zylker.example"]
    assert len(stored) == 1


def test_sigterm_answers_421_to_new_commands(config_dir, database_url, tmp_path):
    conf = config_dir / "gateway.toml"
    edit_config(conf, "shutdown_grace_seconds = 30", "shutdown_grace_seconds = 3")
    d = Daemon(config_dir, database_url, tmp_path / "serve.log").start()
    with socket.create_connection(("127.0.0.1", d.lmtp), timeout=30) as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"LHLO t\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        sock.sendall(f"MAIL FROM:<{H}>\r\n".encode())
        assert f.readline().startswith(b"421 4.3.2")
    assert d.proc.wait(60) == 0


# --- the shipped Prometheus rules and Grafana dashboard ------------------------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
_QUERIED = re.compile(r"\b((?:gateway|process|python)_[a-z0-9_]+)")


def _queried_metrics() -> dict[str, set[str]]:
    """Metric names in every alert expression and every dashboard query, by file."""
    exprs, block = [], None  # an expr is one line, or a "|" block of deeper-indented lines
    for line in (DEPLOY / "prometheus" / "alerts.yml").read_text().splitlines():
        indent = len(line) - len(line.lstrip())
        if block is not None and (not line.strip() or indent > block[0]):
            block[1].append(line)
            continue
        if block is not None:
            exprs.append("\n".join(block[1]))
            block = None
        if line.strip().startswith("expr:"):
            rest = line.split("expr:", 1)[1].strip()
            if rest == "|":
                block = (indent, [])
            else:
                exprs.append(rest)
    dashboard = json.loads((DEPLOY / "grafana" / "gateway-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    found = {"alerts.yml": set(), "gateway-dashboard.json": set()}
    for file, texts in (("alerts.yml", exprs), ("gateway-dashboard.json", queries)):
        for text in texts:
            for name in _QUERIED.findall(text):
                found[file].add(re.sub(r"_(bucket|count|sum)$", "", name))
    return found


def test_alerts_and_dashboard_query_only_exported_metrics(gw):
    declared = set(re.findall(r"^# TYPE (\S+)", _declared(gw), re.M))
    queried = _queried_metrics()
    assert {"gateway_up", "gateway_database_up", "gateway_quarantine_messages"} <= queried["alerts.yml"]
    assert {"gateway_database_up", "gateway_quarantine_messages", "gateway_deliveries_in_flight",
            "gateway_worker_jobs", "process_resident_memory_bytes"} <= queried["gateway-dashboard.json"]
    for file, names in queried.items():
        assert names <= declared, (file, names - declared)


def test_alert_rules_pass_promtool():
    """promtool (Debian/Ubuntu: apt-get install prometheus) checks the rules and the
    configuration and runs the rules' unit tests (deploy/prometheus/alerts.test.yml)."""
    import shutil

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    folder = DEPLOY / "prometheus"
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                 ["test", "rules", "alerts.test.yml"]):
        proc = subprocess.run([promtool, *args], cwd=folder, capture_output=True, timeout=120)
        assert proc.returncode == 0, (args, proc.stdout.decode(), proc.stderr.decode())
