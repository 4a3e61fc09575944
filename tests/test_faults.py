"""Faults and limits: connection limits, idle timeout, quarantine, a locked or vanished
database, SIGKILL under load, several instances on one database."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import PG_URL, RunningGateway
from tests.helpers import edit_config, free_port, message, proxied_postgresql, serve_lmtp

H = "hashimoto@zylker.example"


def _edit(config_dir: Path, old: str, new: str) -> None:
    edit_config(config_dir / "gateway.toml", old, new)


def _greeting(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock, sock.makefile("rb").readline()


def test_connection_limits(config_dir, database_url):
    _edit(config_dir, "max_connections = 500", "max_connections = 5")
    _edit(config_dir, "max_connections_per_client = 50", "max_connections_per_client = 3")
    g = RunningGateway(config_dir, database_url).start()
    opened = []
    try:
        for _ in range(3):
            sock, line = _greeting(g.lmtp_port)
            opened.append(sock)
            assert line.startswith(b"220")
        sock, line = _greeting(g.lmtp_port)
        opened.append(sock)
        assert line.startswith(b"421 4.7.0")
        # The per-client limit counts all listeners together.
        sock, line = _greeting(g.smtp_port)
        opened.append(sock)
        assert line.startswith(b"421 4.7.0")
        for s in opened:
            s.close()
        opened.clear()
        time.sleep(0.3)
        sock, line = _greeting(g.lmtp_port)
        opened.append(sock)
        assert line.startswith(b"220")  # closing sessions frees the slots
    finally:
        for s in opened:
            s.close()
        g.stop()


def test_idle_timeout_and_slow_data(config_dir, database_url):
    _edit(config_dir, "session_timeout_seconds = 300", "session_timeout_seconds = 1")
    g = RunningGateway(config_dir, database_url).start()
    try:
        sock, line = _greeting(g.lmtp_port)
        with sock:
            f = sock.makefile("rb")
            started = time.monotonic()
            assert f.readline().startswith(b"421 4.4.2")
            assert f.readline() == b""  # closed
            assert time.monotonic() - started < 5
        # A slow sender that keeps sending is not cut off: the timer restarts per chunk.
        box = g.dropbox(H)
        with socket.create_connection(("127.0.0.1", g.lmtp_port), timeout=30) as sock:
            f = sock.makefile("rb")
            f.readline()
            sock.sendall(f"LHLO t\r\nMAIL FROM:<{H}>\r\nRCPT TO:<{box}>\r\nDATA\r\n".encode())
            lines = []
            while not lines or not lines[-1].startswith(b"354"):
                lines.append(f.readline())
            data = message(subject="slow")
            for i in range(0, len(data), len(data) // 5):
                sock.sendall(data[i:i + len(data) // 5])
                time.sleep(0.6)
            sock.sendall(b".\r\n")
            assert f.readline().startswith(b"250 2.0.0")
    finally:
        g.stop()


def test_quarantine_after_repeated_internal_errors(faulty):
    gw, faults = faulty
    from gateway.routing import DropboxRoute

    box = gw.dropbox(H)
    data = message(message_id="<poison@zylker.example>", to="p@customer.example")
    with faults.failing(DropboxRoute):
        codes = [gw.lmtp(H, [box], data).data[0] for _ in range(5)]
    assert [c for c, _ in codes[:4]] == [451] * 4 and all(m.startswith(b"4.3.0") for _, m in codes[:4])
    assert codes[4][0] == 250 and b"quarantine" in codes[4][1]
    assert gw.count("emails") == 0
    listed = json.loads(gw.cli("quarantine", "list", "--json").stdout)
    assert len(listed) == 1 and listed[0]["attempts"] == 5 and "RuntimeError: boom" in listed[0]["error"]
    assert listed[0]["recipient"] == H and listed[0]["replayed_at"] is None
    # The cause is fixed (here: the real filer is back): replay files it, once.
    out = json.loads(gw.cli("quarantine", "replay", str(listed[0]["id"]), "--json").stdout)
    assert out["email_id"] and not out["duplicate"]
    again = gw.cli("quarantine", "replay", str(listed[0]["id"]), check=False)
    assert again.returncode == 1 and b"already replayed" in again.stderr
    assert gw.count("emails") == 1
    assert gw.export()["emails"][0]["message_id"] == "poison@zylker.example"
    assert gw.lmtp(H, [box], data).codes == [250]  # the MTA's copy now counts as filed
    assert gw.count("emails") == 1


def test_database_unavailable_answers_451(gw):
    """A database that cannot be written (here: a table gone) is 451 4.3.0, never 5xx,
    and counts as infrastructure trouble, not as a poison message."""
    import sqlalchemy as sa

    box = gw.dropbox(H)
    with gw.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE links RENAME TO links_away"))
    try:
        for _ in range(6):
            assert gw.lmtp(H, [box], message(message_id="<db-down@zylker.example>")).codes == [451]
    finally:
        with gw.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE links_away RENAME TO links"))
    assert gw.count("quarantine") == 0
    assert gw.lmtp(H, [box], message(message_id="<db-down@zylker.example>")).codes == [250]


def test_sqlite_locked_answers_451(config_dir, tmp_path):
    db_file = tmp_path / "locked.db"
    _edit(config_dir, "timeout_seconds = 10\n", "timeout_seconds = 1\n")
    g = RunningGateway(config_dir, f"sqlite:///{db_file}").start()
    try:
        box = g.dropbox(H)
        holder = sqlite3.connect(db_file, timeout=1, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            tx = g.lmtp(H, [box], message(message_id="<locked@zylker.example>"))
            assert tx.codes == [451] and tx.data[0][1].startswith(b"4.3.0")
            assert time.monotonic() - started < 15
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert g.lmtp(H, [box], message(message_id="<locked@zylker.example>")).codes == [250]
    finally:
        g.stop()


@pytest.mark.skipif(not PG_URL, reason="needs GATEWAY_TEST_DATABASE_URL (PostgreSQL)")
def test_postgresql_going_away_and_coming_back(config_dir, tmp_path):
    """PostgreSQL unreachable under load: 451s, no crash; back again: filing resumes
    without a restart."""
    _edit(config_dir, "timeout_seconds = 10\n", "timeout_seconds = 2\n")
    with proxied_postgresql(PG_URL, "proxy") as (url, proxy):
        g = RunningGateway(config_dir, url).start()
        try:
            box = g.dropbox(H)
            results: list[tuple[int, str]] = []
            stop = threading.Event()

            def load() -> None:
                i = 0
                while not stop.is_set() and i < 400:
                    mid = f"<load-{threading.get_ident()}-{i}@zylker.example>"
                    try:
                        tx = g.lmtp(H, [box], message(message_id=mid))
                        # 451 at RCPT (the dropbox lookup) or after DATA (the filing).
                        results.append((tx.codes[0] if tx.codes else tx.rcpt_codes[0], mid))
                    except (OSError, smtplib.SMTPException):
                        results.append((-1, mid))
                    i += 1

            threads = [threading.Thread(target=load) for _ in range(3)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            proxy.stop()
            time.sleep(3.0)
            proxy.start()
            time.sleep(3.0)
            stop.set()
            for t in threads:
                t.join(60)
            codes = [c for c, _ in results]
            assert 451 in codes and 250 in codes
            assert set(codes) <= {250, 451}, sorted(set(codes))
            # After the outage new mail is filed again by the same process.
            assert g.lmtp(H, [box], message(message_id="<after@zylker.example>")).codes == [250]
            filed = {e["message_id"] for e in g.export()["emails"]}
            for code, mid in results:
                if code == 250:
                    assert mid.strip("<>") in filed  # every 250 was committed
        finally:
            g.stop()




@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (GATEWAY_TEST_DATABASE_URL)")
def test_postgresql_connections_cut_while_pooled_are_replaced_and_the_filing_retried(config_dir, monkeypatch):
    """The pool does not ping a connection it used a moment ago (issue 17: a round trip
    per filing); when the server has dropped such connections meanwhile, the filing
    fails on one, the pool discards them all and the filing is tried again on a new
    one: 250, each mail filed once."""
    from gateway.store import db

    # However slow this machine is, no connection counts as idle (so none is pinged),
    # and the outbox does not poll (it would meet a cut connection first).
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 3600.0)
    _edit(config_dir, "\npoll_seconds = 1 ", "\npoll_seconds = 60 ")
    with proxied_postgresql(PG_URL, "cut") as (url, proxy):
        g = RunningGateway(config_dir, url).start()
        try:
            service = "service@in.zylker.example"  # alias: no database lookup at RCPT

            def send(n: int) -> list[int]:
                data = message(frm="c@zillum.com", to=service, subject=f"Q{n}", message_id=f"<cut-{n}@zillum.com>")
                return g.lmtp("c@zillum.com", [service], data).codes

            # Warm the pool: several connections, used a moment ago.
            with ThreadPoolExecutor(4) as pool:
                assert list(pool.map(send, range(8))) == [[250]] * 8
            time.sleep(0.5)  # the outbox's passes after those filings are done
            proxy.cut()   # the server "restarts": every pooled connection is cut
            assert send(100) == [250]
            assert send(101) == [250]
            filed = sorted(e["message_id"] for e in g.export()["emails"])
            assert filed == sorted([f"cut-{n}@zillum.com" for n in (*range(8), 100, 101)])
        finally:
            g.stop()


def _deliver_until_250(port_of, box: str, data: bytes, deadline: float) -> list[str]:
    """An MTA: retry 4xx and broken connections until 250 (bounded in time).
    Returns the failed attempts before the 250 (a reply code, or the exception's name)."""
    failures: list[str] = []
    while time.monotonic() < deadline:
        try:
            with smtplib.LMTP("127.0.0.1", port_of(), timeout=20) as client:
                client.ehlo_or_helo_if_needed()
                client.mail(H)
                client.rcpt(box)
                code, _ = client.data(data)
                if code == 250:
                    return failures
                failures.append(str(code))
        except (OSError, smtplib.SMTPException) as exc:
            failures.append(type(exc).__name__)
        time.sleep(0.2)
    raise AssertionError(f"never filed: {failures}")


def test_sigkill_under_load_files_every_message_exactly_once(config_dir, database_url, tmp_path):
    """SIGKILL while deliveries are under way, a new process on the same port: the
    senders retry what was cut off or refused, and every message is filed exactly once."""
    port = free_port()
    proc = serve_lmtp(config_dir, database_url, port, tmp_path / "serve.log")
    box = subprocess.run([sys.executable, "-m", "gateway", "dropbox", "address", H, "--config",
                          str(config_dir / "gateway.toml")], env={**os.environ, "GATEWAY_DATABASE_URL": database_url},
                         capture_output=True, check=True).stdout.decode().strip()
    messages = [message(message_id=f"<kill-{i}@zylker.example>", to=f"k{i % 7}@customer.example") for i in range(60)]
    deadline = time.monotonic() + 120
    filed = threading.Semaphore(0)  # one release per 250
    killer_done = threading.Event()

    def deliver(data: bytes) -> list[str]:
        failures = _deliver_until_250(lambda: port, box, data, deadline)
        filed.release()
        return failures

    def killer() -> None:
        nonlocal proc
        # Under load: a quarter of the messages are filed, the senders are still busy.
        for _ in range(15):
            assert filed.acquire(timeout=60), "deliveries never got going"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        time.sleep(0.5)
        proc = serve_lmtp(config_dir, database_url, port, tmp_path / "serve.log")
        killer_done.set()

    k = threading.Thread(target=killer)
    k.start()
    with ThreadPoolExecutor(max_workers=6) as pool:
        failures = list(pool.map(deliver, messages))
    k.join(60)
    assert killer_done.is_set()
    proc.terminate()
    proc.wait(60)
    export = subprocess.run([sys.executable, "-m", "gateway", "export", "--config", str(config_dir / "gateway.toml")],
                            env={**os.environ, "GATEWAY_DATABASE_URL": database_url}, capture_output=True)
    assert export.returncode == 0, export.stderr.decode()
    doc = json.loads(export.stdout)
    ids = [e["message_id"] for e in doc["emails"]]
    assert sorted(ids) == sorted(f"kill-{i}@zylker.example" for i in range(60))  # each exactly once
    assert len({p["email"] for p in doc["leads"]}) == len(doc["leads"]) == 7
    # The kill fell amid the load: senders had to retry deliveries it cut off or
    # refused, and none of them was ever answered 5xx (the MTA would have bounced it).
    retried = [f for f in failures if f]
    assert retried, "no delivery had to be retried: the kill missed the load"
    assert not [reason for f in retried for reason in f if reason.startswith("5")], retried


def test_three_instances_same_new_customers_no_duplicates(config_dir, database_url, tmp_path):
    ports = [free_port() for _ in range(3)]
    procs = [serve_lmtp(config_dir, database_url, ports[0], tmp_path / "s0.log")]
    procs += [serve_lmtp(config_dir, database_url, p, tmp_path / f"s{n}.log") for n, p in enumerate(ports[1:], 1)]
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url}
    conf = str(config_dir / "gateway.toml")
    box = subprocess.run([sys.executable, "-m", "gateway", "dropbox", "address", H, "--config", conf], env=env,
                         capture_output=True, check=True).stdout.decode().strip()
    customers = [f"new{i}@customer.example" for i in range(10)]
    jobs = []
    for i in range(30):  # every message names all ten new customers; each goes to all three
        data = message(message_id=f"<multi-{i}@zylker.example>", to=", ".join(customers))
        jobs += [(ports[n], data) for n in range(3)]
    alias_jobs = [(ports[n], message(frm=f"{c}", to="service@in.zylker.example", message_id=f"<svc-{c}@x>"))
                  for c in customers for n in range(3)]
    try:
        with ThreadPoolExecutor(max_workers=18) as pool:
            codes = list(pool.map(lambda j: _lmtp_code(j[0], H, [box], j[1]), jobs))
            alias_codes = list(pool.map(lambda j: _lmtp_code(j[0], "x@customer.example",
                                                             ["service@in.zylker.example"], j[1]), alias_jobs))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    assert set(codes) == {250} and set(alias_codes) == {250}
    doc = json.loads(subprocess.run([sys.executable, "-m", "gateway", "export", "--config", conf], env=env,
                                    capture_output=True, check=True).stdout)
    assert sorted(p["email"] for p in doc["leads"]) == sorted(customers)
    assert len(doc["contacts"]) == len({c["email"] for c in doc["contacts"]})
    assert len([e for e in doc["emails"] if e["source"] == "dropbox"]) == 30  # one per message, not three
    assert len(doc["records"]) == 10  # one per distinct alias message


def _lmtp_code(port: int, sender: str, rcpts: list[str], data: bytes) -> int:
    with smtplib.LMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo_or_helo_if_needed()
        client.mail(sender)
        for r in rcpts:
            client.rcpt(r)
        return client.data(data)[0]


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs to fill up; skipped where mounting is not allowed (not root)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_sqlite_disk_full_answers_451(config_dir, small_disk):
    g = RunningGateway(config_dir, f"sqlite:///{small_disk / 'gateway.db'}").start()
    try:
        box = g.dropbox(H)
        assert g.lmtp(H, [box], message(message_id="<before@zylker.example>")).codes == [250]
        filler = small_disk / "filler"
        with open(filler, "wb") as f:  # fill the disk to the last block
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        big = message(message_id="<full@zylker.example>", body="x" * 600_000)
        tx = g.lmtp(H, [box], big)
        assert tx.codes == [451] and tx.data[0][1].startswith(b"4.3.0")
        # A small one is filed on the loop's batch path: it may still fit in the WAL
        # space SQLite already holds, so 250 (filed) or 451 (not filed), never between.
        small_data = message(message_id="<small@zylker.example>", body="y" * 3000)
        small = g.lmtp(H, [box], small_data)
        assert small.codes in ([250], [451])
        filler.unlink()
        assert g.lmtp(H, [box], big).codes == [250]
        expected = ["before@zylker.example", "full@zylker.example"]
        if small.codes == [250]:
            expected.append("small@zylker.example")
        assert sorted(e["message_id"] for e in g.export()["emails"]) == expected
        # The MTA's retry (or repeat) of the very same mail: filed now, or found filed.
        assert g.lmtp(H, [box], small_data).codes == [250]
        assert g.count("emails") == 3
    finally:
        g.stop()


class _WatchedSlot:
    """A BigSlot that tells ``watch`` when it is waited for, taken and given back."""

    def __init__(self, slot, watch: dict) -> None:  # type: ignore[no-untyped-def]
        self._slot, self._watch = slot, watch

    @property
    def held(self) -> bool:
        return self._slot.held

    async def take(self, keepalive=None) -> None:  # type: ignore[no-untyped-def]
        if self._slot.held:
            return
        w = self._watch
        if w["holders"]:
            w["overlapped"].set()
        w["waiting"] += 1
        try:
            await self._slot.take(keepalive)
        finally:
            w["waiting"] -= 1
        w["holders"] += 1
        w["taken"] += 1
        w["most_held"] = max(w["most_held"], w["holders"])

    def release(self) -> None:
        if self._slot.held:
            self._watch["holders"] -= 1
        self._slot.release()


class _CountingReader:
    """A session's stream during DATA: records a read made without the slot, and one
    made past 1 MB without it."""

    def __init__(self, reader, slot, watch: dict) -> None:  # type: ignore[no-untyped-def]
        self._reader, self._slot, self._watch = reader, slot, watch
        self.consumed = 0

    async def read(self, n: int) -> bytes:
        from gateway.workers import BIG_MESSAGE_BYTES

        if not self._slot.held:
            self._watch["read_before_slot"].append(self.consumed)
            if self.consumed > BIG_MESSAGE_BYTES:
                self._watch["read_without_slot"].append(self.consumed)
        chunk = await self._reader.read(n)
        self.consumed += len(chunk)
        return chunk

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._reader, name)  # _buffer: pipelined commands given back


@pytest.mark.parametrize("announced", [False, True], ids=["unannounced", "size-announced"])
def test_big_messages_beyond_the_memory_slots_wait_and_all_file(config_dir, database_url, monkeypatch, announced):
    """limits.big_messages_in_memory = 1: of three concurrent 3 MB messages one is
    buffered at a time, the others wait (not read past 1 MB; not read at all when MAIL
    FROM's SIZE= announced them big, as Postfix does); all three are filed, and the loop
    keeps answering other sessions meanwhile."""
    from gateway.smtp import server as smtp_server

    _edit(config_dir, "big_messages_in_memory = 4", "big_messages_in_memory = 1")
    g = RunningGateway(config_dir, database_url).start()
    # Watched on the loop: every DATA's big slot and how far its stream was read.
    watch: dict = {"holders": 0, "most_held": 0, "taken": 0, "waiting": 0, "read_without_slot": [],
                   "read_before_slot": [], "overlapped": threading.Event()}
    big_messages = g.app.sessions.big_messages
    real_slot, real_read_data = big_messages.slot, smtp_server.read_data
    monkeypatch.setattr(big_messages, "slot", lambda: _WatchedSlot(real_slot(), watch))

    async def read_data(reader, limit, on_progress=None, big=None, announced=None):  # type: ignore[no-untyped-def]
        return await real_read_data(_CountingReader(reader, big, watch), limit, on_progress, big, announced)

    monkeypatch.setattr(smtp_server, "read_data", read_data)
    try:
        box = g.dropbox(H)
        payloads = [message(message_id=f"<big-{i}@zylker.example>", body=("line %d of a big quotation\n" % i) * 120_000)
                    for i in range(3)]
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(g.lmtp, H, [box], data,
                                   mail_options=(f"SIZE={len(data)}",) if announced else ())
                       for data in payloads]
            # A second big message waited for the slot while the first held it ...
            assert watch["overlapped"].wait(60), "the big messages never overlapped"
            with g.lmtp_client() as other:  # ... and meanwhile the loop answers others.
                before = time.monotonic()
                assert other.noop()[0] == 250
                assert time.monotonic() - before < 1.0
            assert [f.result(120).codes for f in futures] == [[250]] * 3
        assert watch["taken"] == 3  # each was a big message, each had the slot
        assert watch["most_held"] == 1  # one buffered at a time
        assert watch["read_without_slot"] == []  # a waiting one was not read past 1 MB
        if announced:
            assert watch["read_before_slot"] == []  # nor at all
        else:
            assert watch["read_before_slot"]  # its first megabyte was read before
        assert watch["holders"] == 0 and watch["waiting"] == 0
        assert sorted(e["message_id"] for e in g.export()["emails"]) == [f"big-{i}@zylker.example" for i in range(3)]
    finally:
        g.stop()
