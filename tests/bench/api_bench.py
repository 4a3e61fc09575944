"""The CRM's HTTP API under load: list 10,000 filed emails page by page.

    python -m tests.bench.api_bench [--emails 10000] [--limit 500] [--rounds 1] [--pg URL]
                                    [--profile FILE]

Starts `gateway serve` on the shipped demo config (a fresh SQLite file, or a fresh
PostgreSQL schema with --pg), files ``--emails`` dropbox messages over LMTP (10
connections), creates a read token with `gateway token create`, then walks
/v1/emails with ``limit`` items per page, following next_cursor to the end, and
prints the time per page (p50, p99, max) and in all.  While it lists, an SMTP
session sends NOOPs: their worst answer time shows whether the API ever held the
event loop.  ``--rounds N`` walks the list N times (more pages for the p99);
``--profile FILE`` records the gateway with py-spy while it lists (summary:
``python -m tests.bench.profile FILE``).
"""

from __future__ import annotations

import argparse
import json
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.bench.profile import Recorder
from tests.bench.servers import HOST, REPO, Database, GatewayServer, free_port, prepare_config
from tests.helpers import message

USER = "hashimoto@zylker.example"


class _ApiGateway(GatewayServer):
    def __init__(self, workdir: Path, config: Path, database: Database):
        super().__init__(workdir, config, database)
        self.api_port = free_port()

    def env(self) -> dict[str, str]:
        return {**super().env(), "GATEWAY_API_LISTEN": f"{HOST}:{self.api_port}"}


def _fill(gateway: _ApiGateway, count: int) -> float:
    started = time.monotonic()

    def send(block: range) -> None:
        with smtplib.LMTP(HOST, gateway.lmtp_port, timeout=60) as client:
            for i in block:
                data = message(message_id=f"<bench-{i}@zylker.example>", to=f"c{i % 97}@customer{i % 13}.example")
                client.sendmail(USER, [gateway.dropbox], data)

    step = (count + 9) // 10
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(send, [range(s, min(s + step, count)) for s in range(0, count, step)]))
    return time.monotonic() - started


def _noops(port: int, stop: threading.Event, worst: list[float]) -> None:
    with smtplib.SMTP(HOST, port, timeout=30) as client:
        while not stop.is_set():
            before = time.monotonic()
            client.noop()
            worst.append(time.monotonic() - before)
            time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.api_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--emails", type=int, default=10_000)
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--rounds", type=int, default=1, help="walk the whole list this many times")
    p.add_argument("--pg", help="PostgreSQL URL (default: SQLite)")
    p.add_argument("--profile", type=Path, help="py-spy's raw stacks of the gateway while it lists, to FILE")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gateway-api-bench-") as tmp:
        workdir = Path(tmp)
        config = prepare_config(workdir)
        database = Database.postgresql(args.pg) if args.pg else Database.sqlite(workdir)
        gateway = _ApiGateway(workdir, config, database)
        gateway.start()
        try:
            fill = _fill(gateway, args.emails)
            out = subprocess.run([sys.executable, "-m", "gateway", "token", "create", "--org", "zylker", "--name",
                                  "bench", "--json", "--config", str(config)],
                                 cwd=REPO, env=gateway.env(), capture_output=True, text=True, timeout=120, check=True)
            token = json.loads(out.stdout)["token"]
            stop, worst = threading.Event(), []  # type: ignore[var-annotated]
            noop = threading.Thread(target=_noops, args=(gateway.smtp_port, stop, worst), daemon=True)
            noop.start()
            pages: list[float] = []
            seen = 0
            recorder = Recorder(gateway.proc.pid, args.profile) if args.profile else None
            with httpx.Client(base_url=f"http://{HOST}:{gateway.api_port}/v1",
                              headers={"Authorization": f"Bearer {token}"}, timeout=60) as api:
                started = time.monotonic()
                for _ in range(args.rounds):
                    cursor = None
                    while True:
                        before = time.monotonic()
                        r = api.get("/emails", params={"limit": args.limit, **({"cursor": cursor} if cursor else {})})
                        pages.append(time.monotonic() - before)
                        r.raise_for_status()
                        body = r.json()
                        seen += len(body["items"])
                        cursor = body["next_cursor"]
                        if cursor is None:
                            break
                total = time.monotonic() - started
            if recorder:
                recorder.stop()
            stop.set()
            noop.join(10)
        finally:
            gateway.stop()
            database.drop()
    ms = sorted(x * 1000 for x in pages)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    noop = sorted(x * 1000 for x in worst)
    print(f"{database.backend}: filed {args.emails} emails in {fill:.1f} s; listed {seen} in {len(pages)} pages of "
          f"{args.limit}: {total:.2f} s, per page p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
          f"max {ms[-1]:.1f} ms (first {pages[0] * 1000:.1f} ms); SMTP NOOP meanwhile: {len(worst)} answered, "
          f"p50 {statistics.median(noop):.1f} ms, p99 {noop[int(len(noop) * 0.99)]:.1f} ms, worst {noop[-1]:.1f} ms")
    return 0 if seen == args.emails * args.rounds else 1


if __name__ == "__main__":
    raise SystemExit(main())
