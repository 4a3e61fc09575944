"""Webhooks (issue 14): events POSTed to a real HTTP receiver on loopback that verifies
every signature with the `standardwebhooks` package -- retries, order per record,
a receiver down for a while, a failing endpoint next to a healthy one, the CLI, three
`gateway serve` processes on one PostgreSQL, and a SIGKILL in the middle of a send."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import smtplib
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook

from gateway.store import db
from tests.conftest import RunningGateway
from tests.helpers import children, edit_config, free_port, kill_tree, message, serve_lmtp

H = "hashimoto@zylker.example"
CUSTOMER = "charles@zillum.com"
SECRET = "whsec_" + base64.b64encode(b"test-secret-of-24-bytes!").decode()


# --- the receiver ----------------------------------------------------------------------

class Receiver:
    """A CRM's webhook endpoint: verifies each request's signature, records it (id,
    type, body, arrival and end), answers ``status(request)`` after ``hold`` seconds."""

    def __init__(self, port: int = 0, secret: str = SECRET):
        self.port = port or free_port()
        self.webhook = Webhook(secret)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.status: Callable[[dict[str, Any]], int] = lambda request: 200
        self.hold = 0.0
        self.gate: threading.Event | None = None  # when set: the first request waits for it
        self.arrived = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                start = time.monotonic()
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    receiver.webhook.verify(body, headers)
                    verified = True
                except Exception:
                    verified = False
                request = {"id": headers.get("webhook-id"), "body": json.loads(body), "headers": headers,
                           "verified": verified, "start": start}
                with receiver.lock:
                    request["n"] = sum(1 for r in receiver.requests if r["id"] == request["id"]) + 1
                    first = not receiver.requests
                    receiver.requests.append(request)
                receiver.arrived.set()
                if first and receiver.gate is not None:
                    receiver.gate.wait(30)
                time.sleep(receiver.hold)
                status = receiver.status(request)
                request["end"] = time.monotonic()
                request["status"] = status
                answer = b'{"ok": true}'
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client gone (the gateway stopped or was killed): not the test's business

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self, type_: str | None = None) -> list[str]:
        with self.lock:
            return [r["id"] for r in self.requests if type_ is None or r["body"]["type"] == type_]

    def wait(self, predicate: Callable[["Receiver"], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver: not reached in {timeout} s; got {self.ids()}")
            time.sleep(0.02)


@pytest.fixture
def receiver():
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


def configure(config_dir: Path, urls: list[str], *, retry: str = "[0.2, 0.2, 0.2]", timeout: float = 10,
              concurrency: int = 4, events: list[str] | None = None) -> None:
    """Short schedules in gateway.toml; [[webhooks]] for zylker, its secret in a file."""
    toml = config_dir / "gateway.toml"
    edit_config(toml, "\npoll_seconds = 1 ", "\npoll_seconds = 0.2 ")
    edit_config(toml, "retry_seconds = [5, 30, 120, 600, 1800, 3600, 10800, 21600]", f"retry_seconds = {retry}")
    edit_config(toml, "timeout_seconds = 10           # an attempt", f"timeout_seconds = {timeout}  # an attempt")
    edit_config(toml, "concurrency = 4 ", f"concurrency = {concurrency} ")
    (config_dir / "webhook.secret").write_text(SECRET + "\n")
    hooks = "".join(f'\n[[webhooks]]\nurl = "{url}"\nsecret_file = "../webhook.secret"\n'
                    + (f"events = {json.dumps(events)}\n" if events else "") for url in urls)
    with open(config_dir / "rules" / "zylker.toml", "a") as f:
        f.write(hooks)


def feed(gw: RunningGateway, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    token = gw.token(scope="read")
    deadline = time.monotonic() + timeout
    while True:
        with gw.api(token) as api:
            items = api.get("/events", params={"limit": 500}).json()["items"]
        if len(items) >= count or time.monotonic() > deadline:
            return items
        time.sleep(0.05)


def deliveries(gw: RunningGateway) -> list[Any]:
    with gw.engine.connect() as conn:
        return conn.execute(sa.text("SELECT seq, status, attempts, last_status, last_error FROM webhook_deliveries "
                                    "ORDER BY seq")).all()


def metric(gw: RunningGateway, series: str) -> float:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{gw.app.bound['metrics'][1]}/metrics").text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " ")]
    assert len(values) == 1, (series, values)
    return values[0]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not reached"
        time.sleep(0.05)


def alias_mail(n: int = 0) -> bytes:
    return message(frm=f"Charles <{CUSTOMER}>", to="service@in.zylker.example", subject=f"Broken {n}",
                   message_id=f"<alias-{n}@zillum.com>")


# --- one gateway in-process ---------------------------------------------------------------

def test_dropbox_and_alias_events_arrive_signed_as_the_feed_shows_them(config_dir, database_url, receiver):
    configure(config_dir, [receiver.url])
    gw = RunningGateway(config_dir, database_url).start()
    try:
        assert gw.lmtp(H, [gw.dropbox(H)], message(to="Charles <charless@zillum.com>")).codes == [250]
        assert gw.lmtp(CUSTOMER, ["service@in.zylker.example"], alias_mail()).codes == [250]
        items = feed(gw, 5)
        assert [e["type"] for e in items] == ["lead.created", "email.filed", "contact.created", "record.created",
                                              "email.filed"]
        receiver.wait(lambda r: len(r.ids()) >= 5)
        time.sleep(0.5)  # any duplicate would arrive meanwhile
        with receiver.lock:
            requests = list(receiver.requests)
        assert sorted(r["id"] for r in requests) == sorted(e["id"] for e in items)  # once each, by the feed's id
        for item in items:
            (request,) = [r for r in requests if r["id"] == item["id"]]
            assert request["verified"], request["headers"]
            assert request["body"] == {k: v for k, v in item.items() if k != "id"}
            assert request["headers"]["content-type"] == "application/json"
            assert abs(int(request["headers"]["webhook-timestamp"]) - time.time()) < 60
        assert {(d.status, d.attempts) for d in deliveries(gw)} == {("delivered", 1)}
    finally:
        gw.stop()


def test_every_event_type_arrives_signed_as_the_feed_shows_it(config_dir, database_url, receiver, sink):
    """Submission, API, CLI, a relay failure, an exhausted quota and the quarantine:
    every type of event reaches the webhook, with the feed's id and data."""
    from gateway.routing import DropboxRoute
    from tests.helpers import FailingFiling

    configure(config_dir, [receiver.url])
    with open(config_dir / "rules" / "lumen.toml", "a") as f:  # lumen's 50 a day make quota.exhausted cheap
        f.write(f'\n[[webhooks]]\nurl = "{receiver.url}"\nsecret_file = "../webhook.secret"\n')
    faults = FailingFiling()
    gw = RunningGateway(config_dir, database_url, relay_url=f"smtp://127.0.0.1:{sink.port}", filing=faults).start()
    try:
        k = "kitazawa@zylker.example"
        assert gw.lmtp(H, [gw.dropbox(H)], message(to="Charles <charless@zillum.com>")).codes == [250]
        assert gw.lmtp(CUSTOMER, ["service@in.zylker.example"], alias_mail()).codes == [250]
        record_id = gw.export()["records"][0]["id"]
        with gw.api(gw.token()) as api:
            assert api.patch(f"/records/{record_id}", json={"stage": "In Progress"}).status_code == 200
            assert api.post("/contacts", json={"email": "new@example.com"}).status_code == 201
        gw.cli("record", "stage", str(record_id), "Resolved")
        assert gw.submit(message(frm=k, to=CUSTOMER), [CUSTOMER], mail_from=k).codes == [250]
        sink.mode = "permfail"
        assert gw.submit(message(frm=k, to=CUSTOMER, subject="Again"), [CUSTOMER], mail_from=k).codes == [554]
        sink.mode = "accept"
        with smtplib.SMTP("127.0.0.1", gw.submission_port, timeout=30) as client:
            client.ehlo()
            client.login("crm@lumen.example", "demo-only")
            assert client.mail("owner@lumen.example")[0] == 250
            assert [client.rcpt(f"r{i}@customer.example")[0] for i in range(51)][50] == 451
            client.rset()
        poison = message(message_id="<poison@zylker.example>")  # built once: the same mail five times
        with faults.failing(DropboxRoute):
            codes = [gw.lmtp(H, [gw.dropbox(H)], poison).codes[0] for _ in range(5)]
        assert codes[-1] == 250
        tokens = {org: gw.token(org, scope="read") for org in ("zylker", "lumen")}
        items = []
        for org, token in tokens.items():
            with gw.api(token) as api:
                deadline = time.monotonic() + 15
                while True:
                    got = api.get("/events", params={"limit": 500}).json()["items"]
                    last = "quota.exhausted" if org == "lumen" else "message.quarantined"  # each one's last
                    if any(e["type"] == last for e in got) or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
            items += got
        types = {e["type"] for e in items}
        assert types == {"lead.created", "email.filed", "contact.created", "record.created", "record.stage_changed",
                         "relay.failed", "quota.exhausted", "message.quarantined"}, types
        receiver.wait(lambda r: len(set(r.ids())) >= len(items))
        with receiver.lock:
            requests = {r["id"]: r for r in receiver.requests}
        for item in items:
            request = requests[item["id"]]
            assert request["verified"] and request["body"] == {k: v for k, v in item.items() if k != "id"}, item
    finally:
        gw.stop()


def test_500_twice_then_200_is_three_attempts_with_one_id_and_the_record_order_kept(config_dir, database_url,
                                                                                     receiver):
    receiver.status = lambda r: 500 if r["body"]["type"] == "record.created" and r["n"] <= 2 else 200
    configure(config_dir, [receiver.url], retry="[0.3, 0.3, 0.3]")
    gw = RunningGateway(config_dir, database_url).start()
    try:
        assert gw.lmtp(CUSTOMER, ["service@in.zylker.example"], alias_mail()).codes == [250]
        items = feed(gw, 3)
        assert [e["type"] for e in items] == ["contact.created", "record.created", "email.filed"]
        receiver.wait(lambda r: len(r.ids("email.filed")) >= 1)
        time.sleep(0.5)
        with receiver.lock:
            created = [r for r in receiver.requests if r["body"]["type"] == "record.created"]
            (filed,) = [r for r in receiver.requests if r["body"]["type"] == "email.filed"]
        assert [r["status"] for r in created] == [500, 500, 200]
        assert {r["id"] for r in created} == {items[1]["id"]} and all(r["verified"] for r in created)
        assert created[1]["start"] - created[0]["end"] >= 0.25  # the schedule's wait
        # The record's next event only after its earlier one got through.
        assert filed["id"] == items[2]["id"] and filed["start"] >= created[2]["end"]
        by_seq = {d.seq: d for d in deliveries(gw)}
        record_seq = int(items[1]["id"].rsplit("_", 1)[1])
        assert (by_seq[record_seq].status, by_seq[record_seq].attempts, by_seq[record_seq].last_status) \
            == ("delivered", 3, 200)
    finally:
        gw.stop()


def test_receiver_down_for_a_while_gets_each_event_later_once(config_dir, database_url):
    down = Receiver()  # its port stays closed for now
    configure(config_dir, [down.url], retry="[0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]")
    gw = RunningGateway(config_dir, database_url).start()
    try:
        assert gw.lmtp(H, [gw.dropbox(H)], message()).codes == [250]
        items = feed(gw, 2)
        deadline = time.monotonic() + 10
        # Both handed out and each tried twice (all() of no rows yet would be true at once).
        while time.monotonic() < deadline:
            rows = deliveries(gw)
            if len(rows) == 2 and all(d.attempts >= 2 for d in rows):
                break
            time.sleep(0.05)
        rows = deliveries(gw)
        assert len(rows) == 2 and all(d.status == "pending" and d.attempts >= 2 for d in rows), rows
        assert all("ClientConnectorError: cannot connect to 127.0.0.1:" in d.last_error for d in rows), rows
        # The sender process reports its counters about every second.
        wait_for(lambda: metric(gw, 'gateway_webhook_deliveries_total{outcome="retry"}') >= 4)
        wait_for(lambda: metric(gw, "gateway_events_pending") == 2)
        assert metric(gw, "gateway_events_oldest_pending_age_seconds") > 0
        delivered = metric(gw, 'gateway_webhook_deliveries_total{outcome="delivered"}')
        down.start()
        try:
            down.wait(lambda r: len(r.ids()) >= 2)
            time.sleep(0.8)  # a second copy would arrive meanwhile
            assert sorted(down.ids()) == sorted(e["id"] for e in items)
            assert {d.status for d in deliveries(gw)} == {"delivered"}
            wait_for(lambda: metric(gw, 'gateway_webhook_deliveries_total{outcome="delivered"}') == delivered + 2)
            wait_for(lambda: metric(gw, "gateway_events_pending") == 0)
            assert metric(gw, "gateway_events_oldest_pending_age_seconds") == 0
        finally:
            down.stop()
    finally:
        gw.stop()


def test_a_hanging_endpoint_delays_neither_a_healthy_one_nor_mail(config_dir, database_url, receiver):
    hanging = Receiver().start()
    hanging.hold = 6.0  # answers after the attempt's timeout: every attempt fails
    configure(config_dir, [hanging.url, receiver.url], timeout=4, retry="[5]", concurrency=2)
    gw = RunningGateway(config_dir, database_url).start()
    try:
        wait_for(lambda: gw.app.sender.reports > 0, timeout=30)  # the sender process is up (its start is not timed)
        started = time.monotonic()
        for n in range(3):
            t0 = time.monotonic()
            assert gw.lmtp(CUSTOMER, ["service@in.zylker.example"], alias_mail(n)).codes == [250]
            assert time.monotonic() - t0 < 1.0  # mail is not held up
        items = feed(gw, 7)  # contact.created once, then record.created and email.filed per mail
        receiver.wait(lambda r: len(r.ids()) >= len(items), timeout=5)
        healthy_done = time.monotonic() - started
        assert sorted(receiver.ids()) == sorted(e["id"] for e in items)
        assert healthy_done < 3.0, healthy_done  # not behind the hanging endpoint's 4 s timeouts
        assert len(hanging.ids()) <= 2  # its concurrency: the others wait for its attempts
    finally:
        gw.stop()
        hanging.stop()


def test_cli_list_retry_test_and_a_final_failure(config_dir, database_url, receiver):
    receiver.status = lambda r: 500
    configure(config_dir, [receiver.url], retry="[0.1, 0.1]")
    gw = RunningGateway(config_dir, database_url).start()
    try:
        assert gw.lmtp(H, [gw.dropbox(H)], message()).codes == [250]
        items = feed(gw, 2)
        deadline = time.monotonic() + 10
        while {d.status for d in deliveries(gw)} != {"failed"} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [len([i for i in receiver.ids() if i == e["id"]]) for e in items] == [3, 3]  # 1 + 2 retries
        (endpoint,) = json.loads(gw.cli("webhooks", "list", "--org", "zylker", "--failed", "--json").stdout)
        assert (endpoint["url"], endpoint["active"], endpoint["events"]) == (receiver.url, True, None)
        assert (endpoint["pending"], endpoint["failed"], endpoint["delivered"]) == (0, 2, 0)
        assert endpoint["last_error"] == "HTTP 500" and endpoint["last_success_at"] is None
        assert [(f["event_id"], f["type"], f["attempts"], f["last_status"], f["last_error"])
                for f in endpoint["failed_deliveries"]] == [(e["id"], e["type"], 3, 500, "HTTP 500") for e in items]
        text = gw.cli("webhooks", "list", "--org", "zylker", "--failed").stdout.decode()
        assert receiver.url in text and f"FAILED {items[0]['id']}" in text
        # Test: a signed ping, straight to the endpoint; 500 is exit 1.
        proc = gw.cli("webhooks", "test", "--org", "zylker", check=False)
        assert proc.returncode == 1 and "500" in proc.stdout.decode()
        receiver.status = lambda r: 200
        proc = gw.cli("webhooks", "test", "--org", "zylker")
        assert "200 OK" in proc.stdout.decode() and '{"ok": true}' in proc.stdout.decode()
        pings = [r for r in receiver.requests if r["body"]["type"] == "ping"]
        assert len(pings) == 2 and all(p["verified"] and p["id"].startswith("evt_zylker_ping_") for p in pings)
        assert pings[0]["id"] != pings[1]["id"] and set(pings[1]["body"]["data"]) == {"message"}
        # Retry one event, then the rest: sent again, once each.
        assert gw.cli("webhooks", "retry", "--org", "zylker", "--event", items[1]["id"]).returncode == 0
        receiver.wait(lambda r: len([i for i in r.ids() if i == items[1]["id"]]) == 4)
        time.sleep(0.5)
        assert len([i for i in receiver.ids() if i == items[0]["id"]]) == 3  # not this one
        assert gw.cli("webhooks", "retry", "--org", "zylker").returncode == 0
        receiver.wait(lambda r: len([i for i in r.ids() if i == items[0]["id"]]) == 4)
        deadline = time.monotonic() + 5
        while {d.status for d in deliveries(gw)} != {"delivered"} and time.monotonic() < deadline:
            time.sleep(0.05)
        (endpoint,) = json.loads(gw.cli("webhooks", "list", "--org", "zylker", "--failed", "--json").stdout)
        assert (endpoint["failed"], endpoint["delivered"], endpoint["failed_deliveries"]) == (0, 2, [])
        assert endpoint["last_success_at"] is not None
        bad = gw.cli("webhooks", "retry", "--org", "zylker", "--event", "evt_lumen_1", check=False)
        assert bad.returncode == 1 and "not an event id of zylker" in bad.stderr.decode()
    finally:
        gw.stop()


def test_an_endpoint_added_at_runtime_is_told_from_then_on_and_one_removed_no_more(config_dir, database_url,
                                                                                   receiver):
    configure(config_dir, [])
    gw = RunningGateway(config_dir, database_url).start()
    rules = config_dir / "rules" / "zylker.toml"
    shipped = rules.read_text()

    def reload() -> None:
        assert asyncio.run_coroutine_threadsafe(gw.app.reload("test"), gw.thread.loop).result(30)

    try:
        assert gw.lmtp(H, [gw.dropbox(H)], message(message_id="<before@zylker.example>")).codes == [250]
        assert len(feed(gw, 2)) == 2
        rules.write_text(shipped + f'\n[[webhooks]]\nurl = "{receiver.url}"\nsecret_file = "../webhook.secret"\n'
                                   'events = ["email.filed"]\n')
        reload()
        assert gw.lmtp(H, [gw.dropbox(H)], message(message_id="<after@zylker.example>")).codes == [250]
        items = feed(gw, 3)
        receiver.wait(lambda r: len(r.ids()) >= 1)
        time.sleep(0.5)
        assert receiver.ids() == [items[2]["id"]]  # the new email.filed only: no replay, no other type
        rules.write_text(shipped)
        reload()
        (endpoint,) = json.loads(gw.cli("webhooks", "list", "--org", "zylker", "--json").stdout)
        assert (endpoint["active"], endpoint["delivered"]) == (False, 1)
        assert gw.lmtp(H, [gw.dropbox(H)], message(message_id="<gone@zylker.example>")).codes == [250]
        assert len(feed(gw, 4)) == 4
        time.sleep(0.8)
        assert receiver.ids() == [items[2]["id"]]
    finally:
        gw.stop()


@pytest.mark.parametrize("entry, key, says", [
    ('url = "http://crm.example/hook"\nsecret_env = "S"', "webhooks[0].url", "must be https://"),
    ('url = "https://crm.example/hook"', "webhooks[0]", "exactly one of secret_env"),
    ('url = "https://crm.example/hook"\nsecret_env = "S"\nsecret_file = "s"', "webhooks[0]", "exactly one"),
    ('url = "https://crm.example/hook"\nsecret_env = "S"\nevents = ["email.filed", "mail.lost"]',
     "webhooks[0].events", "unknown event type(s) 'mail.lost'"),
    ('url = "https://crm.example/hook"\nsecret = "whsec_x"', "webhooks[0].secret", "unknown key"),
])
def test_bad_webhook_entries_are_named_with_file_key_and_line(config_dir, entry, key, says):
    from gateway.errors import ConfigError
    from gateway.rules.loader import load_rules

    rules = config_dir / "rules" / "zylker.toml"
    line = len(rules.read_text().splitlines()) + 2
    with open(rules, "a") as f:
        f.write(f"\n[[webhooks]]\n{entry}\n")
    with pytest.raises(ConfigError) as caught:
        load_rules(config_dir / "rules")
    (problem,) = caught.value.problems
    assert (Path(problem.file).name, problem.key) == ("zylker.toml", key) and says in problem.message, problem
    assert problem.line is not None and problem.line >= line


def test_loopback_http_urls_are_allowed(config_dir):
    from gateway.rules.loader import load_rules

    with open(config_dir / "rules" / "zylker.toml", "a") as f:
        for url in ("http://127.0.0.2:8080/h", "http://[::1]/h", "http://localhost/h", "https://crm.example/h"):
            f.write(f'\n[[webhooks]]\nurl = "{url}"\nsecret_env = "S"\n')
    hooks = load_rules(config_dir / "rules").orgs["zylker"].webhooks
    assert [h.url for h in hooks] == ["http://127.0.0.2:8080/h", "http://[::1]/h", "http://localhost/h",
                                      "https://crm.example/h"]


def test_check_names_a_missing_secret(config_dir, database_url, receiver):
    configure(config_dir, [receiver.url])
    (config_dir / "webhook.secret").unlink()
    with open(config_dir / "rules" / "zylker.toml", "a") as f:
        f.write(f'\n[[webhooks]]\nurl = "{receiver.url}/env"\nsecret_env = "GATEWAY_TEST_NO_SUCH_SECRET"\n')
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_TEST_NO_SUCH_SECRET"}
    proc = subprocess.run([sys.executable, "-m", "gateway", "check", "--json", "--config",
                           str(config_dir / "gateway.toml")], env={**env, "GATEWAY_DATABASE_URL": database_url},
                          capture_output=True, timeout=60)
    found = {(w["key"], Path(w["file"]).name): w for w in json.loads(proc.stdout)["warnings"]}
    missing_file = found[("webhooks[0].secret_file", "zylker.toml")]
    assert "does not exist" in missing_file["message"] and missing_file["line"]
    missing_env = found[("webhooks[1].secret_env", "zylker.toml")]
    assert "GATEWAY_TEST_NO_SUCH_SECRET" in missing_env["message"] and missing_env["line"]


# --- `gateway serve` processes ------------------------------------------------------------



def _dropbox_address(config_dir: Path, database_url: str) -> str:
    return subprocess.run([sys.executable, "-m", "gateway", "dropbox", "address", H, "--config",
                           str(config_dir / "gateway.toml")], env={**os.environ, "GATEWAY_DATABASE_URL": database_url},
                          capture_output=True, check=True).stdout.decode().strip()


def _event_ids(database_url: str) -> list[str]:
    engine = db.make_engine(database_url)
    try:
        with engine.connect() as conn:
            return [f"evt_{org}_{seq}" for org, seq in conn.execute(
                sa.text("SELECT org_id, seq FROM events WHERE seq IS NOT NULL ORDER BY seq"))]
    finally:
        engine.dispose()


def _lmtp(port: int, box: str, data: bytes) -> int:
    with smtplib.LMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo_or_helo_if_needed()
        client.mail(H)
        client.rcpt(box)
        return client.data(data)[0]


def test_three_processes_on_postgresql_send_each_event_once(config_dir, database_url, receiver, tmp_path):
    if database_url.startswith("sqlite"):
        pytest.skip("several processes share PostgreSQL only (SQLite: one process sends)")
    receiver.hold = 0.02  # long enough for two processes' attempts of one id to overlap
    configure(config_dir, [receiver.url])
    ports = [free_port() for _ in range(3)]
    procs = [serve_lmtp(config_dir, database_url, ports[0], tmp_path / "s0.log")]
    try:
        procs += [serve_lmtp(config_dir, database_url, p, tmp_path / f"s{n}.log") for n, p in enumerate(ports[1:], 1)]
        box = _dropbox_address(config_dir, database_url)
        jobs = [(ports[i % 3], message(message_id=f"<many-{i}@zylker.example>", to=f"c{i % 20}@customer.example"))
                for i in range(200)]
        with ThreadPoolExecutor(max_workers=9) as pool:
            assert set(pool.map(lambda j: _lmtp(j[0], box, j[1]), jobs)) == {250}
        deadline = time.monotonic() + 40
        while True:
            expected = _event_ids(database_url)
            if len(expected) == 220 and set(receiver.ids()) >= set(expected):
                break
            assert time.monotonic() < deadline, (len(expected), len(set(receiver.ids())))
            time.sleep(0.1)
        time.sleep(1.0)  # a duplicate would arrive meanwhile
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    with receiver.lock:
        requests = list(receiver.requests)
    assert all(r["verified"] for r in requests)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in requests:
        by_id.setdefault(r["id"], []).append(r)
    overlapping = [i for i, rs in by_id.items() for a in rs for b in rs
                   if a is not b and a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlapping == []  # never sent by two processes at once
    assert sorted(by_id) == sorted(expected) and all(len(rs) == 1 for rs in by_id.values())


def test_sigkill_during_a_send_delivers_after_restart(config_dir, database_url, receiver, tmp_path):
    receiver.gate = threading.Event()  # the first request is held until the process is dead
    configure(config_dir, [receiver.url], timeout=1, events=["email.filed"])
    port = free_port()
    proc = serve_lmtp(config_dir, database_url, port, tmp_path / "serve.log")
    try:
        box = _dropbox_address(config_dir, database_url)
        assert _lmtp(port, box, message()) == 250
        assert receiver.arrived.wait(15), "no attempt arrived"
        kill_tree(proc)  # the daemon and its webhook sender, as an OOM kill or a power cut would
        receiver.gate.set()
        (first,) = receiver.ids()
        proc = serve_lmtp(config_dir, database_url, port, tmp_path / "serve.log")
        # Sent again once the killed process's lease ran out (timeout + margin).
        receiver.wait(lambda r: len(r.ids()) >= 2, timeout=20)
        assert receiver.ids()[:2] == [first, first]
        assert all(r["verified"] for r in receiver.requests)
        # The answer is recorded before the daemon stops (a stop while an attempt is
        # still unanswered cuts it and gives it back, to be sent again).
        engine = db.make_engine(database_url)
        try:
            def deliveries() -> list[Any]:
                with engine.connect() as conn:
                    return list(conn.execute(sa.text("SELECT status, attempts FROM webhook_deliveries")).all())

            deadline = time.monotonic() + 10
            while (found := deliveries()) != [("delivered", 2)] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert found == [("delivered", 2)]
        finally:
            engine.dispose()
    finally:
        receiver.gate.set()
        proc.terminate()
        proc.wait(60)


# --- the sender process (gateway/sender.py) --------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_the_sender_runs_only_with_webhooks_and_is_restarted_when_it_dies(config_dir, database_url, receiver):
    import signal

    gw = RunningGateway(config_dir, database_url).start()
    try:  # no [[webhooks]]: no sender process
        assert gw.lmtp(H, [gw.dropbox(H)], message()).codes == [250]
        time.sleep(0.3)
        assert gw.app.sender.started == 0
    finally:
        gw.stop()
    configure(config_dir, [receiver.url], events=["email.filed"])
    gw = RunningGateway(config_dir, database_url).start()
    try:
        assert gw.lmtp(H, [gw.dropbox(H)], message(subject="Before")).codes == [250]
        receiver.wait(lambda r: len(r.ids()) == 1)
        first = gw.app.sender._proc.pid
        errors = metric(gw, 'gateway_errors_total{component="webhooks"}')
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: gw.app.sender.started == 2, timeout=15)  # started again after a pause
        assert gw.app.sender._proc.pid != first and not _alive(first)
        assert metric(gw, 'gateway_errors_total{component="webhooks"}') == errors + 1
        assert gw.lmtp(H, [gw.dropbox(H)], message(subject="After")).codes == [250]
        receiver.wait(lambda r: len(r.ids()) >= 2)
        time.sleep(0.3)  # a repeat would arrive meanwhile
        assert [r["body"]["data"]["email"]["subject"] for r in receiver.requests] == ["Before", "After"]
    finally:
        gw.stop()


def test_a_daemon_killed_alone_leaves_no_sender_behind(config_dir, database_url, receiver, tmp_path):
    """The sender stops when its input ends (the daemon is gone), giving back what it
    had claimed: no orphan goes on sending."""
    import signal

    configure(config_dir, [receiver.url])
    port = free_port()
    proc = serve_lmtp(config_dir, database_url, port, tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 20
        while not children(proc.pid):
            assert time.monotonic() < deadline, "no sender process"
            time.sleep(0.05)
        (sender,) = children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 20
        while _alive(sender):
            assert time.monotonic() < deadline, "the sender outlived its daemon"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_outcomes_are_written_only_for_claims_still_held(database_url):
    """record_many writes a group of outcomes in one UPDATE; a claim whose lease ran out
    and that another process took meanwhile (one more attempt counted) is not
    overwritten, and is reported as lost (None) -- the others of its group are written."""
    from datetime import timedelta

    from gateway.store import webhooks as store
    from gateway.store.sql import now

    engine = db.make_engine(database_url)
    try:
        db.upgrade(engine)
        at = now()
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO organisations (id, name, timezone, active) "
                                 "VALUES ('zylker', 'Zylker', 'UTC', true)"))
            conn.execute(sa.insert(store._EVENTS), [
                {"org_id": "zylker", "seq": n, "type": "email.filed", "record_id": None, "created_at": at,
                 "data": {"n": n}} for n in (1, 2, 3)])
            conn.execute(sa.text("INSERT INTO event_counters (org_id, last) VALUES ('zylker', 3)"))
            conn.execute(sa.insert(store._ENDPOINTS).values(org_id="zylker", url="http://127.0.0.1:9/hooks",
                                                            events=None, active=True, cursor=0, created_at=at))
            endpoint = conn.execute(sa.select(store._ENDPOINTS.c.id)).scalar_one()
            taken = store.take(conn, endpoint, 4, 16, 10.0, 5.0, 5.0)
        assert taken is not None and [c.seq for c in taken.claims] == [1, 2, 3]
        assert [json.loads(c.data) for c in taken.claims] == [{"n": 1}, {"n": 2}, {"n": 3}]
        lost = taken.claims[1]
        with engine.begin() as conn:  # its lease ran out; another process took it (attempt 2)
            conn.execute(sa.update(store._DELIVERIES).where(store._DELIVERIES.c.id == lost.delivery_id)
                         .values(attempts=2, lease_until=now() + timedelta(seconds=60)))
        with engine.begin() as conn:
            results = store.record_many(conn, [(c, 204, None) for c in taken.claims], [5.0])
        assert results == ["delivered", None, "delivered"]
        with engine.connect() as conn:
            rows = dict(conn.execute(sa.select(store._DELIVERIES.c.seq, store._DELIVERIES.c.status)).all())
        assert rows == {1: "delivered", 2: "pending", 3: "delivered"}
    finally:
        engine.dispose()
