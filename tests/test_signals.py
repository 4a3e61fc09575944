"""Operator signals (issue 11 item 8): the database probe behind gateway_database_up and
/readyz, the standard process and Python collectors, the quarantine and load gauges,
and label values that are names chosen on purpose.  Every test reads a real /metrics
or /readyz over HTTP from a daemon that gets real mail over LMTP/SMTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from gateway.probes import DATABASE_PROBE_SECONDS, DATABASE_PROBE_TIMEOUT_SECONDS
from tests.conftest import PG_URL, RunningGateway
from tests.helpers import message, edit_config, proxied_postgresql
from tests.test_operations import http_get

H = "hashimoto@zylker.example"
K = "kitazawa@zylker.example"


@pytest.fixture(autouse=True)
def quick_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe every 0.5 s instead of 5 s, so a test waits a tenth as long (autouse:
    in place before the gateway of the test starts; the bounds below stay those of
    the real interval)."""
    from gateway import probes

    monkeypatch.setattr(probes, "DATABASE_PROBE_SECONDS", 0.5)

# README "Metrics and probes": the values of the `operation` label, all of them.
DOCUMENTED_OPERATIONS = {
    "dropbox_lookup", "file_dropbox", "file_alias", "failure_count", "quarantine_keep", "quota_reserve",
    "relay_dedup", "relay_record_lookup", "relay_store", "probe", "api_read", "api_write", "events_sequence",
    "events_prune", "webhooks",
}
# Operations that run on their own clock (the database probe; the outbox's passes).
ON_THEIR_OWN_CLOCK = {"probe", "events_sequence", "events_prune"}

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(port: int) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a real GET /metrics: (name, labels, value)."""
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out = []
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, line
        out.append((match[1], dict(_LABEL.findall(match[2] or "")), float(match[3])))
    return out


def value(port: int, name: str, **labels: str) -> float | None:
    for sample_name, sample_labels, v in samples(port):
        if sample_name == name and sample_labels == labels:
            return v
    return None


def metrics_port(gw: RunningGateway) -> int:
    return gw.app.bound["metrics"][1]


def readyz(port: int) -> tuple[int, dict]:
    status, body = http_get(f"http://127.0.0.1:{port}/readyz")
    return status, json.loads(body)


def wait_for(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until predicate() held; fails after timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s")


# --- gateway_database_up and /readyz ----------------------------------------------------


class Cuttable:
    """A gateway whose database the test can take away and give back."""

    def __init__(self, gw: RunningGateway, cut: Callable[[], None], restore: Callable[[], None]):
        self.gw, self.cut, self.restore = gw, cut, restore


def _cuttable_postgresql(config_dir: Path) -> Iterator[Cuttable]:
    """PostgreSQL through a loopback TCP proxy (as in test_faults.py), cut and restored."""
    assert PG_URL
    with proxied_postgresql(PG_URL, "signals") as (url, proxy):
        g = RunningGateway(config_dir, url).start()
        try:
            yield Cuttable(g, proxy.stop, proxy.start)
        finally:
            g.stop()


def _cuttable_sqlite(config_dir: Path, tmp_path: Path) -> Iterator[Cuttable]:
    """SQLite in a folder of its own, moved away and back: the database is gone for
    whoever opens it, as when its volume is unmounted or the folder removed.  (The
    connections the daemon holds open still reach the moved file: only a probe that
    opens the database afresh notices.)"""
    folder, away = tmp_path / "db", tmp_path / "db-away"
    g = RunningGateway(config_dir, f"sqlite:///{folder / 'gateway.db'}").start()
    try:
        yield Cuttable(g, lambda: folder.rename(away), lambda: away.rename(folder))
    finally:
        if away.exists():
            away.rename(folder)
        g.stop()


@pytest.fixture(params=["sqlite"] + (["postgresql"] if PG_URL else []))
def cuttable(request: pytest.FixtureRequest, config_dir: Path, tmp_path: Path) -> Iterator[Cuttable]:
    if request.param == "postgresql":
        yield from _cuttable_postgresql(config_dir)
    else:
        yield from _cuttable_sqlite(config_dir, tmp_path)


def test_database_up_and_readyz_follow_the_database(cuttable: Cuttable):
    gw = cuttable.gw
    port = metrics_port(gw)
    assert value(port, "gateway_database_up") == 1
    assert readyz(port) == (200, {"ready": True, "database": True, "rules": True, "listeners": True})
    box = gw.dropbox(H)
    assert gw.lmtp(H, [box], message(message_id="<before-cut@zylker.example>")).codes == [250]
    within = DATABASE_PROBE_SECONDS + DATABASE_PROBE_TIMEOUT_SECONDS + 3

    cuttable.cut()
    took = wait_for(lambda: value(port, "gateway_database_up") == 0, within)
    assert took < within
    started = time.monotonic()
    status, body = readyz(port)
    assert (status, body["database"], body["ready"]) == (503, False, False)
    assert body["rules"] is True and body["listeners"] is True
    assert time.monotonic() - started < 1.0  # answered from the probe, not by waiting on the database
    # The event loop is not held up by the probe: a session is answered at once.
    with gw.lmtp_client() as client:
        started = time.monotonic()
        assert client.noop()[0] == 250
        assert time.monotonic() - started < 1.0

    cuttable.restore()
    wait_for(lambda: value(port, "gateway_database_up") == 1, within)
    assert readyz(port) == (200, {"ready": True, "database": True, "rules": True, "listeners": True})
    assert gw.lmtp(H, [box], message(message_id="<after-cut@zylker.example>")).codes == [250]


def test_a_database_without_our_schema_counts_as_down(gw):
    """A database that answers SELECT 1 but not our queries (here: the quarantine
    table renamed; in life a new empty SQLite file or a wrong search_path) serves no
    delivery: gauge 0 and /readyz 503 until it is right again."""
    import sqlalchemy as sa

    port = metrics_port(gw)
    within = DATABASE_PROBE_SECONDS + DATABASE_PROBE_TIMEOUT_SECONDS + 3
    assert value(port, "gateway_database_up") == 1
    with gw.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE quarantine RENAME TO quarantine_away"))
    try:
        wait_for(lambda: value(port, "gateway_database_up") == 0, within)
        status, body = readyz(port)
        assert (status, body["database"]) == (503, False)
    finally:
        with gw.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE quarantine_away RENAME TO quarantine"))
    wait_for(lambda: value(port, "gateway_database_up") == 1, within)
    assert readyz(port)[0] == 200


# --- standard collectors ------------------------------------------------------------------


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_process_and_python_collectors_are_on_metrics(gw):
    import platform

    port = metrics_port(gw)
    found = {(name, tuple(sorted(labels.items()))): v for name, labels, v in samples(port)}
    names = {name for name, _ in found}
    for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes", "process_cpu_seconds_total",
                 "process_open_fds", "process_max_fds", "process_start_time_seconds", "python_info",
                 "python_gc_objects_collected_total", "python_gc_objects_uncollectable_total",
                 "python_gc_collections_total"):
        assert name in names, name
    # The daemon runs in this process (a thread): its figures are ours.
    rss = found[("process_resident_memory_bytes", ())]
    assert 0.5 < rss / _rss_bytes() < 2.0
    assert abs(found[("process_start_time_seconds", ())] - _process_start_time()) < 2
    assert abs(found[("process_open_fds", ())] - len(os.listdir("/proc/self/fd"))) < 20  # sockets come and go
    info = [labels for name, labels, _ in samples(port) if name == "python_info"]
    assert info == [{"implementation": platform.python_implementation(), "major": str(sys.version_info.major),
                     "minor": str(sys.version_info.minor), "patchlevel": str(sys.version_info.micro),
                     "version": platform.python_version()}]
    assert {labels["generation"] for name, labels, _ in samples(port) if name == "python_gc_collections_total"} == {
        "0", "1", "2"}


def _process_start_time() -> float:
    """This process's start, Unix time, from /proc (boot time + start ticks)."""
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    start_ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
    return boot + start_ticks / os.sysconf("SC_CLK_TCK")


# --- quarantine ---------------------------------------------------------------------------


def test_quarantine_gauge_counts_unreplayed_messages_per_org(faulty):
    gw, faults = faulty
    from gateway.routing import DropboxRoute

    port = metrics_port(gw)
    assert value(port, "gateway_quarantine_messages", org="zylker") == 0
    assert value(port, "gateway_quarantine_messages", org="lumen") == 0
    box = gw.dropbox(H)
    data = message(message_id="<poison-gauge@zylker.example>", to="p@customer.example")
    with faults.failing(DropboxRoute):
        codes = [gw.lmtp(H, [box], data).codes for _ in range(5)]
    assert codes == [[451]] * 4 + [[250]]
    within = DATABASE_PROBE_SECONDS + DATABASE_PROBE_TIMEOUT_SECONDS + 3
    wait_for(lambda: value(port, "gateway_quarantine_messages", org="zylker") == 1, within)
    assert value(port, "gateway_quarantine_messages", org="lumen") == 0
    (quarantined,) = json.loads(gw.cli("quarantine", "list", "--json").stdout)
    assert quarantined["replayed_at"] is None
    gw.cli("quarantine", "replay", str(quarantined["id"]))
    wait_for(lambda: value(port, "gateway_quarantine_messages", org="zylker") == 0, within)
    assert value(port, "gateway_quarantined_total", route="dropbox") is not None


# --- load gauges ---------------------------------------------------------------------------


def test_deliveries_in_flight_and_big_messages_in_memory(gw):
    port = metrics_port(gw)
    box = gw.dropbox(H)
    assert value(port, "gateway_deliveries_in_flight") == 0
    assert value(port, "gateway_big_messages_in_memory") == 0
    data = message(message_id="<in-flight@zylker.example>", body=("a line of a long quotation\n" * 60_000))
    assert len(data) > 1024 * 1024
    with socket.create_connection(("127.0.0.1", gw.lmtp_port), timeout=30) as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(f"LHLO t\r\nMAIL FROM:<{H}>\r\nRCPT TO:<{box}>\r\nDATA\r\n".encode())
        while not f.readline().startswith(b"354"):
            pass
        sock.sendall(data[: 1024 * 1024 + 65536])  # past 1 MB: a big-message slot is held
        wait_for(lambda: value(port, "gateway_big_messages_in_memory") == 1, 10)
        assert value(port, "gateway_deliveries_in_flight") == 1
        assert data.endswith(b"\r\n")
        sock.sendall(data[1024 * 1024 + 65536:] + b".\r\n")
        assert f.readline().startswith(b"250 2.0.0")
        wait_for(lambda: value(port, "gateway_deliveries_in_flight") == 0, 10)
        assert value(port, "gateway_big_messages_in_memory") == 0
    assert gw.count("emails") == 1


def test_worker_jobs_by_state(config_dir, database_url):
    """limits.workers = 1: one job running, two queued behind it; the gauges say so,
    also after a queued job is given up (cancelled) before it ran."""
    conf = config_dir / "gateway.toml"
    edit_config(conf, "workers = 4", "workers = 1")
    gw = RunningGateway(config_dir, database_url).start()
    try:
        assert gw.app.settings.limits.workers == 1
        port = metrics_port(gw)
        loop = gw.thread.loop
        release = threading.Event()
        ran: list[int] = []

        def job(n: int) -> int:
            release.wait(30)
            ran.append(n)
            return n

        def jobs(state: str) -> float | None:
            return value(port, "gateway_worker_jobs", state=state)

        assert (jobs("queued"), jobs("running")) == (0, 0)
        futures = [asyncio.run_coroutine_threadsafe(gw.app.pool.run(job, n), loop) for n in range(3)]
        wait_for(lambda: (jobs("queued"), jobs("running")) == (2, 1), 10)
        futures[2].cancel()  # given up while queued: never runs, no longer counted
        wait_for(lambda: (jobs("queued"), jobs("running")) == (1, 1), 10)
        release.set()
        assert [f.result(30) for f in futures[:2]] == [0, 1]
        wait_for(lambda: (jobs("queued"), jobs("running")) == (0, 0), 10)
        assert sorted(ran) == [0, 1]
        # A real delivery afterwards leaves nothing counted behind.
        box = gw.dropbox(H)
        assert gw.lmtp(H, [box], message(message_id="<after-jobs@zylker.example>")).codes == [250]
        assert (jobs("queued"), jobs("running")) == (0, 0)
    finally:
        gw.stop()


# --- label values -------------------------------------------------------------------------


def _operation_counts(port: int) -> dict[str, float]:
    return {labels["operation"]: v for name, labels, v in samples(port)
            if name == "gateway_db_operation_duration_seconds_count"}


def test_db_operation_labels_are_exactly_the_documented_names(gwr, sink):
    port = metrics_port(gwr)
    before = _operation_counts(port)
    box = gwr.dropbox(H)
    assert gwr.lmtp(H, [box], message(message_id="<labels-1@zylker.example>", to="l1@customer.example")).codes == [250]
    assert gwr.lmtp("c@x.example", ["service@in.zylker.example"],
                    message(frm="c@x.example", to="service@in.zylker.example")).codes == [250]
    assert gwr.submit(message(frm=K, to="charles@zillum.com"), ["charles@zillum.com"], mail_from=K).codes == [250]
    assert len(sink.messages) == 1
    after = _operation_counts(port)
    assert set(after) == DOCUMENTED_OPERATIONS
    grew = {op for op in after if after[op] > before.get(op, 0)}
    # The probe and the outbox run on their own clock: they may or may not have run meanwhile.
    assert grew - ON_THEIR_OWN_CLOCK == {"dropbox_lookup", "file_dropbox", "file_alias", "quota_reserve", "relay_dedup",
                                "relay_record_lookup", "relay_store"}
    for op in ("dropbox_lookup", "file_dropbox", "file_alias", "relay_dedup", "relay_record_lookup", "relay_store"):
        assert after[op] - before.get(op, 0) == 1, op
    assert after["quota_reserve"] - before.get("quota_reserve", 0) == 1  # one recipient, one token
    # Nowhere on /metrics a label value that is a private Python name.
    for name, labels, _ in samples(port):
        for key, val in labels.items():
            assert not val.startswith("_"), (name, key, val)


def test_a_database_call_without_a_documented_name_is_refused():
    from gateway.delivery import guarded

    def some_new_query() -> None:
        pass

    with pytest.raises(TypeError):
        guarded(some_new_query)  # type: ignore[call-arg]  # the name is required
    with pytest.raises(ValueError, match="DB_OPERATIONS"):
        guarded(some_new_query, "some_new_query")
    assert guarded(some_new_query, "probe")() is None
