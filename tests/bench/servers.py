"""The processes under test (gateway, sink) and what /proc says about them."""

from __future__ import annotations

import atexit
import base64
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --- /proc ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def children_cpu_seconds(pid: int) -> float:
    """CPU time of a process's live children (the gateway's webhook sender)."""
    from tests.helpers import children

    total = 0.0
    for child in children(pid):
        try:
            total += cpu_seconds(child)
        except OSError:
            pass
    return total


def cpu_seconds_of(comm: str) -> dict[int, float]:
    """CPU time of every process named ``comm`` (e.g. the PostgreSQL server's backends)."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as f:
                if f.read().strip() != comm:
                    continue
            out[int(entry.name)] = cpu_seconds(int(entry.name))
        except (OSError, ValueError):
            continue
    return out


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def hwm_mib(pid: int) -> float:
    return status_kib(pid, "VmHWM") / 1024


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux: ``echo 5 > /proc/PID/clear_refs``)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def system_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) seconds of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
    total = sum(parts[:8])
    busy = total - idle - iowait - steal
    return busy / CLK_TCK, steal / CLK_TCK, total / CLK_TCK


# --- processes --------------------------------------------------------------------------


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def _wait_greeting(proc: subprocess.Popen, port: int, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} on start:\n{tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=2) as s:
                s.settimeout(5)
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not greet on port {port} within {START_TIMEOUT:.0f} s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Server:
    """A server process with an LMTP and an SMTP port."""

    name = "server"
    proc: subprocess.Popen | None = None
    lmtp_port = 0
    smtp_port = 0
    log: Path

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def port(self, listener: str) -> int:
        return self.lmtp_port if listener == "lmtp" else self.smtp_port

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


class SinkServer(Server):
    name = "sink"

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.log = workdir / "sink.log"

    def start(self) -> None:
        self.lmtp_port, self.smtp_port = free_port(), free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.bench.sink", "--lmtp", f"{HOST}:{self.lmtp_port}",
                 "--smtp", f"{HOST}:{self.smtp_port}"],
                cwd=REPO, env=_env({}), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        _wait_greeting(self.proc, self.lmtp_port, self.log, "the sink")
        _wait_greeting(self.proc, self.smtp_port, self.log, "the sink")

    def rcpt(self) -> str:
        return "someone@sink.bench.example"


# --- databases --------------------------------------------------------------------------


@dataclass
class Database:
    """A fresh database for one gateway process: a SQLite file, or a PostgreSQL schema."""

    backend: str
    url: str
    admin_url: str | None = None
    schema: str | None = None
    path: Path | None = None

    @classmethod
    def sqlite(cls, workdir: Path) -> "Database":
        path = workdir / f"gateway-{secrets.token_hex(4)}.db"
        return cls("sqlite", f"sqlite:///{path}", path=path)

    @classmethod
    def postgresql(cls, admin_url: str) -> "Database":
        import psycopg

        schema = "bench_" + secrets.token_hex(5)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in admin_url else "?"
        return cls("postgresql", f"{admin_url}{sep}options=-csearch_path%3D{schema}", admin_url=admin_url,
                   schema=schema)

    def count_emails(self) -> int | None:
        return self.count("emails")

    def scalar(self, sql: str) -> Any:
        """One value from the database (a report: None and a message if it fails)."""
        try:
            if self.backend == "sqlite":
                assert self.path is not None
                with sqlite3.connect(self.path, timeout=30) as conn:
                    return conn.execute(sql).fetchone()[0]
            import psycopg

            with psycopg.connect(self.admin_url, autocommit=True) as conn:  # type: ignore[arg-type]
                conn.execute(f"SET search_path TO {self.schema}")
                return conn.execute(sql).fetchone()[0]  # type: ignore[index]
        except Exception as exc:
            print(f"bench: could not query {self.backend}: {exc}", file=sys.stderr)
            return None

    def execute(self, sql: str) -> int:
        """Run one write statement and commit it; returns the rows it changed.  Unlike
        scalar() it raises: a benchmark that cannot prepare its data must not go on."""
        if self.backend == "sqlite":
            assert self.path is not None
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                with conn:  # commits
                    return conn.execute(sql).rowcount
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as pg:  # type: ignore[arg-type]
            pg.execute(f"SET search_path TO {self.schema}")
            return pg.execute(sql).rowcount

    def count(self, table: str) -> int | None:
        try:
            if self.backend == "sqlite":
                assert self.path is not None
                with sqlite3.connect(self.path, timeout=30) as conn:
                    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            import psycopg

            with psycopg.connect(self.admin_url, autocommit=True) as conn:  # type: ignore[arg-type]
                return conn.execute(f"SELECT count(*) FROM {self.schema}.{table}").fetchone()[0]
        except Exception as exc:  # a report, not a failure of the run
            print(f"bench: could not count {table} in {self.backend}: {exc}", file=sys.stderr)
            return None

    def size_mib(self) -> float | None:
        try:
            if self.backend == "sqlite":
                assert self.path is not None
                return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*")) / 2**20
            import psycopg

            with psycopg.connect(self.admin_url, autocommit=True) as conn:  # type: ignore[arg-type]
                row = conn.execute(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
                    (self.schema,)).fetchone()
                return row[0] / 2**20
        except Exception:
            return None

    def drop(self) -> None:
        if self.backend == "sqlite":
            assert self.path is not None
            for p in self.path.parent.glob(self.path.name + "*"):
                p.unlink(missing_ok=True)
            return
        import psycopg

        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:  # type: ignore[arg-type]
                conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        except Exception as exc:
            print(f"bench: could not drop schema {self.schema}: {exc}", file=sys.stderr)


# --- the gateway ------------------------------------------------------------------------


def prepare_config(workdir: Path, webhooks: bool = False) -> Path:
    """A copy of the shipped gateway.toml (logging at warning) with rules/ and DKIM keys
    beside it (``webhooks``: zylker with two webhook endpoints, see below); returns the
    path of the copied gateway.toml."""
    conf = workdir / ("conf-webhooks" if webhooks else "conf")
    if (conf / "gateway.toml").exists():
        return conf / "gateway.toml"
    conf.mkdir(parents=True)
    text = (REPO / "gateway.toml").read_text()
    text, n = re.subn(r'(?m)^(\s*level\s*=\s*)"[a-z]+"', r'\1"warning"', text)
    if n != 1:
        text += '\n[logging]\nlevel = "warning"\n'  # pragma: no cover - layout changed
    text = re.sub(r'(?m)^(\s*format\s*=\s*)"[a-z]+"', r'\1"json"', text)
    (conf / "gateway.toml").write_text(text)
    shutil.copytree(REPO / "rules", conf / "rules")
    if webhooks:
        _add_webhooks(conf / "rules" / "zylker.toml")
    keys = REPO / "keys"
    if keys.is_dir() and any(keys.glob("*.pem")):
        shutil.copytree(keys, conf / "keys")
    else:
        from gateway import signing

        for domain in ("zylker.example", "lumen.example"):
            signing.generate_key(conf / "keys" / f"{domain}.gw2026.pem")
    return conf / "gateway.toml"


# --webhooks: each backend also runs with zylker given two webhook endpoints -- a fast
# receiver in its own process (tests/bench/receiver.py: answers 204 at once,
# keep-alive) and one that is down (a closed port) -- to show what the outbox and
# webhooks cost filing (issue 14), in the same run as without them.  After each such
# gateway run the bench waits until the receiver has every event (run.py), so
# deliveries left over never run during another server's turn.
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"bench-only-webhook-secret-000").decode()


class WebhookReceiver:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.bench.receiver"], cwd=REPO,
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hooks"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


RECEIVER: WebhookReceiver | None = None


def _add_webhooks(rules: Path) -> None:
    global RECEIVER
    if RECEIVER is None:
        RECEIVER = WebhookReceiver()
    with rules.open("a") as f:
        for url in (RECEIVER.url, f"http://{HOST}:{free_port()}/hooks"):
            f.write(f'\n[[webhooks]]\nurl = "{url}"\nsecret_env = "GATEWAY_BENCH_WEBHOOK_SECRET"\n')


class GatewayServer(Server):
    def __init__(self, workdir: Path, config: Path, database: Database, webhooks: bool = False):
        self.workdir = workdir
        self.config = config
        self.database = database
        self.webhooks = webhooks  # its config gives zylker webhook endpoints (prepare_config)
        # What the tables call it: the backend, "+webhooks" for that variant.
        self.label = database.backend + ("+webhooks" if webhooks else "")
        self.name = f"gateway-{self.label}"
        self.log = workdir / f"{self.name}.log"
        self.dropbox = ""

    def env(self) -> dict[str, str]:
        return _env({
            "GATEWAY_DATABASE_URL": self.database.url,
            "GATEWAY_LMTP_LISTEN": f"{HOST}:{self.lmtp_port}",
            "GATEWAY_SMTP_LISTEN": f"{HOST}:{self.smtp_port}",
            "GATEWAY_SUBMISSION_LISTEN": "off",
            "GATEWAY_METRICS_LISTEN": "off",
            # The HTTP API on, as shipped (GATEWAY_BENCH_API=off measures without it).
            "GATEWAY_API_LISTEN": "off" if os.environ.get("GATEWAY_BENCH_API") == "off" else f"{HOST}:{free_port()}",
            "GATEWAY_BENCH_WEBHOOK_SECRET": WEBHOOK_SECRET,
        })

    def start(self) -> None:
        self.lmtp_port, self.smtp_port = free_port(), free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)],
                cwd=REPO, env=self.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        _wait_greeting(self.proc, self.lmtp_port, self.log, self.name)
        _wait_greeting(self.proc, self.smtp_port, self.log, self.name)
        out = subprocess.run(
            [sys.executable, "-m", "gateway", "dropbox", "address", "hashimoto@zylker.example",
             "--config", str(self.config)],
            cwd=REPO, env=self.env(), capture_output=True, text=True, timeout=120)
        if out.returncode != 0 or "@" not in out.stdout:
            raise RuntimeError(f"gateway dropbox address failed ({out.returncode}): {out.stdout}{out.stderr}")
        self.dropbox = out.stdout.strip().splitlines()[-1].strip()

    def rcpt(self) -> str:
        return self.dropbox
