"""AUTH on the submission port (issue 11): the scrypt check runs off the event loop."""

from __future__ import annotations

import base64
import re
import select
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

CRM = "crm@zylker.example"
NOOP_BOUND = 0.050  # seconds: what a NOOP may take while the AUTHs are checked
AUTHS = 10


def _heavy_hash(password: str) -> tuple[str, float]:
    """A hash of ``password`` whose check of a wrong password costs at least 4x NOOP_BOUND
    here (doubling scrypt's N from the default until it does), and that cost."""
    from gateway import passwords

    n = 2**14
    while True:
        stored = passwords.hash_password(password, n=n)
        started = time.perf_counter()
        assert not passwords.verify(b"not the password", stored)
        cost = time.perf_counter() - started
        if cost >= 4 * NOOP_BOUND or n >= 2**17:
            return stored, cost
        n *= 2


@pytest.fixture
def heavy_gw(config_dir: Path, database_url: str) -> Iterator[tuple[object, float]]:
    from tests.conftest import RunningGateway

    stored, cost = _heavy_hash("demo-only")
    rules = config_dir / "rules" / "zylker.toml"
    text = rules.read_text()
    edited, found = re.subn(r'password_hash = "scrypt\$[^"]+"', f'password_hash = "{stored}"', text, count=1)
    assert found == 1, "the demo's crm@zylker.example password_hash is gone"
    rules.write_text(edited)
    g = RunningGateway(config_dir, database_url).start()
    try:
        yield g, cost
    finally:
        g.stop()


def _session(port: int) -> tuple[socket.socket, "socket.SocketIO"]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    sock.sendall(b"EHLO client.example\r\n")
    while f.readline()[3:4] != b" ":
        pass
    return sock, f


def test_ten_failed_auths_do_not_delay_a_noop_on_another_connection(heavy_gw):
    g, cost = heavy_gw
    assert cost >= 4 * NOOP_BOUND, f"one scrypt check costs only {cost * 1000:.0f} ms: the bound would mean nothing"
    sessions = [_session(g.submission_port) for _ in range(AUTHS)]
    sock, f = _session(g.submission_port)
    try:
        # The right username, wrong passwords: each costs a full scrypt check.
        for i, (s, _) in enumerate(sessions):
            s.sendall(b"AUTH PLAIN " + base64.b64encode(f"\0{CRM}\0wrong-{i}".encode()) + b"\r\n")
        sent = time.perf_counter()
        time.sleep(0.02)  # the daemon has read the AUTH lines and started on them
        latencies = []
        for _ in range(3):
            started = time.perf_counter()
            sock.sendall(b"NOOP\r\n")
            assert f.readline().startswith(b"250")
            latencies.append(time.perf_counter() - started)
        # Were the AUTHs in flight the whole time? Then none is answered yet.
        answered_early, _, _ = select.select([s for s, _ in sessions], [], [], 0)
        replies = [reader.readline() for _, reader in sessions]
        took = time.perf_counter() - sent
    finally:
        for s, _ in sessions:
            s.close()
        sock.close()
    assert max(latencies) < NOOP_BOUND, [f"{x * 1000:.1f} ms" for x in latencies]
    assert answered_early == [], f"{len(answered_early)} AUTHs were answered before the NOOPs"
    assert all(r.startswith(b"535 5.7.8") for r in replies), replies
    # Each AUTH paid its scrypt check (no short cut for a wrong password).
    assert took >= cost * AUTHS / _threads() * 0.5


def _threads() -> int:
    from gateway.smtp.submission import _password_threads

    return _password_threads()


def test_auth_succeeds_and_a_remembered_password_skips_the_thread(gw):
    """The cached success path answers from the loop; a wrong password still fails."""
    import smtplib

    for password, expected in (("demo-only", 235), ("wrong", 535), ("demo-only", 235)):
        with smtplib.SMTP("127.0.0.1", gw.submission_port, timeout=30) as c:
            c.ehlo()
            code, text = c.docmd("AUTH PLAIN", base64.b64encode(f"\0{CRM}\0{password}".encode()).decode())
            assert code == expected, (password, code, text)


def test_unknown_username_costs_a_check_too(gw):
    """The answer's timing does not tell which usernames exist."""
    import smtplib

    def failed_auth(user: str) -> float:
        with smtplib.SMTP("127.0.0.1", gw.submission_port, timeout=30) as c:
            c.ehlo()
            started = time.perf_counter()
            code, _ = c.docmd("AUTH PLAIN", base64.b64encode(f"\0{user}\0wrong".encode()).decode())
            assert code == 535
            return time.perf_counter() - started

    from gateway import passwords

    failed_auth("nobody@zylker.example")  # the throwaway hash is made once
    started = time.perf_counter()
    passwords.verify(b"wrong", passwords.hash_password("x"))
    one_check = (time.perf_counter() - started) / 2  # hash + verify: two scrypt runs
    assert failed_auth("nobody@zylker.example") >= one_check * 0.5
