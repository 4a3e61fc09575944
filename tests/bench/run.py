"""Benchmark of the gateway's inbound path against a bare aiosmtpd + uvloop sink.

    python -m tests.bench.run --quick                      # smoke test, all five routes, ~4 minutes
    python -m tests.bench.run --markdown                   # the full table (~1 hour)
    python -m tests.bench.run --pg postgresql://postgres@127.0.0.1:5432/test --markdown
    python -m tests.bench.run --memory                     # the memory targets
    python -m tests.bench.run --quick --sizes 1k --webhooks  # with and without webhook endpoints (issue 14)
    python -m tests.bench.run --quick --routes dropbox,alias-reopen   # some of the routes (default: all five)

See tests/bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tests.bench import servers as srv
from tests.bench.client import LoadResult, run_load
from tests.bench.messages import CUSTOMERS, ROUTES, MessageFactory, parse_size, replies_to, size_label, thread_starts

FULL = {"sizes": "1k,100k,1m,10m", "conns": "1,10,50", "listeners": "lmtp,smtp", "repeats": 3, "seconds": 3.0}
QUICK = {"sizes": "1k,100k", "conns": "10", "listeners": "lmtp,smtp", "backends": "sqlite", "repeats": 1,
         "seconds": 2.0}
MESSAGE_CAP = 1_000_000        # no cell sends more, whatever --seconds says
MAX_CELL_SECONDS = 600.0       # --messages without --seconds: the time bound
BIG = 1_000_000                # messages this big or bigger get a short warm-up
# alias-reply and alias-reopen answer threads opened before measuring, as many as a run
# could send at up to this rate (and this many bytes a second), so that a run rarely
# wraps round to a thread it already answered (--reply-threads overrides).
REPLY_RATE = 1500              # messages a second
REPLY_BANDWIDTH = 1e9          # bytes a second
PREPARE_CONNS = 10             # connections of the preparation sends (not measured)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


# --- one measured run -------------------------------------------------------------------


PROFILE_DIR: Path | None = None  # --profile: py-spy on every measured gateway run


async def measure(server: srv.Server, listener: str, factory: MessageFactory, conns: int, seconds: float,
                  cap: int, first_seq: int, checkpoints: int = 0, tag: str = "",
                  rcpt: str | None = None) -> tuple[dict[str, Any], LoadResult]:
    """Load ``server`` and measure it: throughput, latency, its CPU and peak RSS
    (``rcpt``: the envelope recipient; default the server's own, e.g. the dropbox)."""
    pid = server.pid
    recorder = None
    if PROFILE_DIR is not None and isinstance(server, srv.GatewayServer):
        from tests.bench.profile import Recorder

        name = f"{server.name}-{factory.route}-{listener}-{size_label(factory.size).replace(' ', '')}-c{conns}{tag}.txt"
        recorder = Recorder(pid, PROFILE_DIR / name)
        await asyncio.sleep(0.5)  # let py-spy attach
    hwm_ok = srv.reset_hwm(pid)
    rss_before = srv.rss_mib(pid)
    peak = [rss_before]
    marks: dict[str, float] = {}
    rss_at: list[tuple[int, float]] = []

    pg = isinstance(server, srv.GatewayServer) and server.database.backend == "postgresql"
    db_before: dict[int, float] = {}

    def on_start() -> None:
        if pg:
            db_before.update(srv.cpu_seconds_of("postgres"))
        marks["cpu"] = srv.cpu_seconds(pid)
        marks["children"] = srv.children_cpu_seconds(pid)
        marks["client"] = time.process_time()
        marks["busy"], marks["steal"], marks["total"] = srv.system_cpu()

    def on_ok(count: int) -> None:
        if checkpoints and count % checkpoints == 0:
            rss_at.append((count, srv.rss_mib(pid)))

    async def sample() -> None:
        for _ in range(10_000_000):  # bounded; cancelled when the load ends
            peak[0] = max(peak[0], srv.rss_mib(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        result = await run_load(srv.HOST, server.port(listener), lmtp=listener == "lmtp", conns=conns,
                                factory=factory, rcpt=rcpt or server.rcpt(), seconds=seconds,
                                max_messages=cap, first_seq=first_seq, on_start=on_start,
                                on_ok=on_ok if checkpoints else None)
    finally:
        sampler.cancel()
    cpu = srv.cpu_seconds(pid) - marks.get("cpu", 0.0)
    children_cpu = srv.children_cpu_seconds(pid) - marks.get("children", 0.0)  # the webhook sender
    if recorder is not None:
        recorder.stop()
    client = time.process_time() - marks.get("client", 0.0)
    busy, steal, total = srv.system_cpu()
    db_cpu = None
    if pg:  # the PostgreSQL server's processes (backends started meanwhile count from 0)
        db_cpu = sum(t - db_before.get(p, 0.0) for p, t in srv.cpu_seconds_of("postgres").items())
    wall = result.wall
    peak_rss = max(peak[0], srv.hwm_mib(pid) if hwm_ok else 0.0, srv.rss_mib(pid))
    lat = [x * 1000 for x in result.latencies]
    row = {
        "server": server.name,
        "route": factory.route,
        "listener": listener,
        "size": factory.size,
        "conns": conns,
        "ok": result.ok,
        "errors": sum(result.errors.values()),
        "error_kinds": result.errors,
        "error_samples": result.error_samples,
        "wall_s": round(wall, 3),
        "msgs_per_s": result.rate,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "mean_ms": statistics.fmean(lat) if lat else float("nan"),
        "max_ms": max(lat) if lat else float("nan"),
        "cpu_ms_per_msg": cpu * 1000 / result.ok if result.ok else float("nan"),
        # The gateway's child processes (its webhook sender), not in cpu_ms_per_msg.
        "children_cpu_ms_per_msg": children_cpu * 1000 / result.ok if result.ok else float("nan"),
        "server_cpu_util": cpu / wall,
        "db_cpu_ms_per_msg": (db_cpu * 1000 / result.ok if result.ok else float("nan")) if db_cpu is not None else None,
        "client_cpu_util": client / wall,
        # Everything else the machine did meanwhile, in cores (other engineers' tests,
        # the database server): a noise indicator.
        "other_busy_cores": max(0.0, (busy - marks.get("busy", busy)) - cpu - client - (db_cpu or 0.0)) / wall,
        "steal_cores": (steal - marks.get("steal", steal)) / wall,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss,
        "rss_after_mib": srv.rss_mib(pid),
        "rss_checkpoints": rss_at,
    }
    if not server.alive():
        raise RuntimeError(f"{server.name} died during the run:\n{srv.tail(server.log)}")
    return row, result


async def webhooks_drained(gw: srv.GatewayServer, receiver: srv.WebhookReceiver) -> dict[str, Any]:
    """--webhooks, after a run of the gateway with endpoints: how many of its events the
    fast receiver had not got yet when the load stopped, and how long until it had them
    all (so no delivery is left to run during another server's turn)."""
    sql = ("SELECT (SELECT count(*) FROM events) - (SELECT count(*) FROM webhook_deliveries d "
           "JOIN webhook_endpoints e ON e.id = d.endpoint_id "
           f"WHERE e.url = '{receiver.url}' AND d.status = 'delivered')")
    started = time.monotonic()
    behind: int | None = None
    while time.monotonic() - started < DRAIN_MAX_SECONDS:
        left = await asyncio.to_thread(gw.database.scalar, sql)
        if left is None:
            break
        if behind is None:
            behind = left
        if left <= 0:
            return {"webhooks_behind": behind, "webhooks_drain_s": round(time.monotonic() - started, 2)}
        await asyncio.sleep(0.05)
    return {"webhooks_behind": behind, "webhooks_drain_s": None}


DRAIN_MAX_SECONDS = 120.0


def describe(row: dict[str, Any], backend: str, repeat: int) -> str:
    what = "sink" if row["server"] == "sink" else f"gateway/{backend}"
    db = f" (+PG {row['db_cpu_ms_per_msg']:.2f})" if row.get("db_cpu_ms_per_msg") is not None else ""
    text = (f"  {size_label(row['size']):>6} {row['route']:<12} {row['listener']} c{row['conns']:<2} #{repeat + 1} {what:<18} "
            f"{row['msgs_per_s']:8.1f} msg/s  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
            f"cpu {row['cpu_ms_per_msg']:6.2f} ms/msg{db}  rss {row['peak_rss_mib']:6.0f} MiB  n={row['ok']}"
            f"  client {row['client_cpu_util']:.0%} other {row['other_busy_cores']:.1f} cores")
    effects = [f"{name.replace('_', ' ')} {row[name]}" for name in EFFECTS if row.get(name) is not None]
    if effects:
        text += "  " + ", ".join(effects)
    if row["server"] != "sink" and row.get("reply_threads") and row["ok"] > row["reply_threads"]:
        text += f" (wrapped round: {row['ok']} replies to {row['reply_threads']} threads)"
    if "webhooks_behind" in row:
        drain = row["webhooks_drain_s"]
        text += (f"  webhooks: sender cpu {row['children_cpu_ms_per_msg']:.2f} ms/msg, "
                 f"{row['webhooks_behind']} behind at the end, "
                 + (f"all delivered {drain:.2f} s later" if drain is not None else "NOT ALL DELIVERED"))
    if row["errors"]:
        text += f"  ERRORS {row['error_kinds']} e.g. {row['error_samples'][:2]}"
    if row["client_cpu_util"] > 0.85:
        text += "  (load generator near saturation)"
    return text


# --- the throughput table ---------------------------------------------------------------


def cell_limits(args: argparse.Namespace, size: int, conns: int) -> tuple[float, int]:
    seconds = args.seconds if args.seconds is not None else (MAX_CELL_SECONDS if args.messages else FULL["seconds"])
    cap = args.messages or MESSAGE_CAP
    return seconds, cap


# --- routes: what their messages did in the gateway's database --------------------------

# Counted before and after each gateway run (outside the measured time): the row gets
# the differences, so a reader sees that the route measured what it says.
EFFECTS = {
    "new_leads": "SELECT count(*) FROM leads",
    "new_records": "SELECT count(*) FROM records",
    "new_contacts": "SELECT count(*) FROM contacts",
    "reopened": "SELECT count(*) FROM record_stage_changes WHERE to_stage = 'Reopened'",
}
ROUTE_EFFECTS = {
    "dropbox": ("new_leads",),            # expected: 0 (every customer has its lead)
    "dropbox-new": ("new_leads",),        # one per message
    "alias-new": ("new_records", "new_contacts"),   # one each per message
    "alias-reply": ("new_records",),      # 0 (every reply joins its record)
    "alias-reopen": ("reopened", "new_records"),    # one reopen per message, 0 new
}
# The table's "effect" column: the first effect of the route per message.
EFFECT_LABEL = {"new_leads": "new leads", "new_records": "new records", "reopened": "reopened"}
# alias-reopen: before each gateway run every Service record goes back to a closed
# stage (reopen_from of rules/zylker.toml), so each reply reopens its record.
REOPEN_RESET = ("UPDATE records SET stage = 'Resolved' WHERE stage <> 'Resolved' AND pipeline_id = "
                "(SELECT id FROM pipelines WHERE org_id = 'zylker' AND name = 'Service')")


async def effect_counts(gw: srv.GatewayServer, route: str) -> dict[str, int | None]:
    return {name: await asyncio.to_thread(gw.database.scalar, EFFECTS[name]) for name in ROUTE_EFFECTS[route]}


def route_rcpt(factory: MessageFactory, server: srv.Server, gateways: list[srv.GatewayServer]) -> str:
    """The envelope recipient: the route's alias; for the dropbox routes the gateway's
    dropbox address (the sink gets the first gateway's: the same bytes)."""
    if factory.rcpt is not None:
        return factory.rcpt
    if isinstance(server, srv.GatewayServer):
        return server.rcpt()
    return gateways[0].rcpt() if gateways else server.rcpt()


async def send(server: srv.Server, listener: str, factory: MessageFactory, rcpt: str, count: int, first_seq: int,
               what: str) -> LoadResult:
    """Preparation (not measured): ``count`` messages, seq first_seq.., all of them 250."""
    result = await run_load(srv.HOST, server.port(listener), lmtp=listener == "lmtp", conns=PREPARE_CONNS,
                            factory=factory, rcpt=rcpt, seconds=MAX_CELL_SECONDS, max_messages=count,
                            first_seq=first_seq)
    if result.errors or result.ok != count:
        raise RuntimeError(f"{what} on {server.name}: {result.ok} of {count} ok, {result.errors} "
                           f"{result.error_samples[:3]}\n{srv.tail(server.log)}")
    return result


async def prepare(gw: srv.GatewayServer, listener: str, routes: list[str],
                  starts: dict[str, MessageFactory]) -> int:
    """What the routes need in a fresh gateway before anything is measured; returns
    the 250s.  dropbox: one 1 KB message to each of its customers, so every measured
    message finds its lead; alias-reply and alias-reopen: the 1 KB messages that open
    the threads their replies answer (one record and contact each)."""
    ok = 0
    if "dropbox" in routes:
        customers = MessageFactory(1000)
        ok += (await send(gw, listener, customers, gw.rcpt(), CUSTOMERS, 0, "the dropbox customers")).ok
        leads = await asyncio.to_thread(gw.database.scalar, EFFECTS["new_leads"])
        if leads is not None and leads < CUSTOMERS:
            raise RuntimeError(f"{gw.name}: {leads} leads after writing to {CUSTOMERS} customers")
    for route, factory in starts.items():
        t0 = time.monotonic()
        result = await send(gw, listener, factory, factory.rcpt or "", factory.threads, 0, f"the {route} threads")
        ok += result.ok
        log(f"  {gw.name}: {factory.threads} threads for {route} ({factory.rcpt}) sent in "
            f"{time.monotonic() - t0:.1f} s ({result.rate:.0f} msg/s, not measured)")
    return ok


async def warm_up(server: srv.Server, listeners: list[str], factories: list[MessageFactory], seq: int,
                  gateways: list[srv.GatewayServer]) -> tuple[int, int]:
    """A few messages of every route on every listener before measuring; returns
    (next seq, 250s)."""
    ok = 0
    for factory in factories:
        big = factory.size >= BIG
        for listener in listeners:
            result = await run_load(srv.HOST, server.port(listener), lmtp=listener == "lmtp", conns=2,
                                    factory=factory, rcpt=route_rcpt(factory, server, gateways),
                                    seconds=(1.0 if len(factories) == 1 else 0.5) if not big else 0.0,
                                    max_messages=2 if big else 200, first_seq=seq)
            seq = result.next_seq
            ok += result.ok
            if result.errors:
                raise RuntimeError(f"warm-up of {server.name} ({factory.route}) on {listener} failed: "
                                   f"{result.errors} {result.error_samples[:3]}\n{srv.tail(server.log)}")
    return seq, ok


async def throughput(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    conns_list = [int(c) for c in args.conns.split(",")]
    listeners = [x.strip() for x in args.listeners.split(",")]
    routes = args.route_list
    variants = [(backend, webhooks) for backend in args.backend_list
                for webhooks in ((False, True) if args.webhooks else (False,))]
    backends = [backend + ("+webhooks" if webhooks else "") for backend, webhooks in variants]
    runs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    started = time.monotonic()
    total_runs = len(sizes) * len(listeners) * len(conns_list) * len(routes) * args.repeats * (1 + len(backends))
    log(f"bench: {total_runs} runs ({len(sizes)} sizes x {len(listeners)} listeners x {len(conns_list)} "
        f"connection counts x {len(routes)} routes x {args.repeats} repeats x (sink + {', '.join(backends)})), "
        f"cells of {args.seconds or '-'} s / {args.messages or 'no'} message cap; work dir {workdir}")
    for size in sizes:
        # The threads the reply routes answer: the same for every gateway of this size.
        threads = reply_threads(args, size)
        starts = {route: thread_starts(route, threads) for route in routes if route in ("alias-reply", "alias-reopen")}
        factories = {route: replies_to(starts[route], route, size) if route in starts
                     else MessageFactory(size, route=route) for route in routes}
        sink = srv.SinkServer(workdir)
        gateways: list[srv.GatewayServer] = []
        seq = 0
        try:
            sink.start()
            for backend, webhooks in variants:
                db = srv.Database.sqlite(workdir) if backend == "sqlite" else srv.Database.postgresql(args.pg)
                gw = srv.GatewayServer(workdir, srv.prepare_config(workdir, webhooks), db, webhooks=webhooks)
                gateways.append(gw)
                gw.start()
            prepared: dict[str, int] = {}
            for gw in gateways:
                prepared[gw.name] = await prepare(gw, listeners[0], routes, starts)
            warm: dict[str, int] = {}
            for server in [sink, *gateways]:
                seq, warm[server.name] = await warm_up(server, listeners, list(factories.values()), seq, gateways)
            for listener in listeners:
                for conns in conns_list:
                    seconds, cap = cell_limits(args, size, conns)
                    for route in routes:
                        factory = factories[route]
                        for rep in range(args.repeats):
                            order: list[srv.Server] = [sink, *gateways]
                            k = rep % len(order)
                            order = order[k:] + order[:k]  # interleave: each takes each position in turn
                            for server in order:
                                gw = server if isinstance(server, srv.GatewayServer) else None
                                before: dict[str, int | None] = {}
                                if gw is not None:
                                    if route == "alias-reopen":
                                        await asyncio.to_thread(gw.database.execute, REOPEN_RESET)
                                    before = await effect_counts(gw, route)
                                row, result = await measure(server, listener, factory, conns, seconds, cap, seq,
                                                            tag=f"-{rep + 1}", rcpt=route_rcpt(factory, server, gateways))
                                seq = result.next_seq
                                if factory.threads:
                                    row["reply_threads"] = factory.threads
                                if gw is not None:
                                    after = await effect_counts(gw, route)
                                    for name, value in after.items():
                                        row[name] = (value - before[name] if value is not None
                                                     and before.get(name) is not None else None)
                                    if gw.webhooks:
                                        assert srv.RECEIVER is not None
                                        row.update(await webhooks_drained(gw, srv.RECEIVER))
                                backend = gw.label if gw is not None else "-"
                                row.update(backend=backend, repeat=rep)
                                runs.append(row)
                                log(describe(row, backend, rep))
                                await asyncio.sleep(0.2)
            for gw in gateways:
                measured = sum(r["ok"] for r in runs if r["server"] == gw.name and r["size"] == size)
                filed = measured + warm[gw.name] + prepared[gw.name]
                count = gw.database.count_emails()
                checks.append({"backend": gw.label, "size": size, "250s": filed, "prepared": prepared[gw.name],
                               "reply_threads": threads if starts else None,
                               "warm_up": warm[gw.name], "emails_in_database": count,
                               "database_mib": gw.database.size_mib(), "all_filed": count == filed})
                log(f"  {gw.name}: {count} emails in the database after {filed} 250 replies ({prepared[gw.name]} "
                    f"preparing, {warm[gw.name]} warming up, {measured} measured; all routes) "
                    f"({'every one filed' if count == filed else 'MISMATCH'}), {gw.database.size_mib() or 0:.0f} MiB")
        finally:
            for server in [sink, *gateways]:
                server.stop()
            for gw in gateways:
                gw.database.drop()
        log(f"bench: {size_label(size)} done after {time.monotonic() - started:.0f} s")
    table, sink_table = summarise(runs, backends)
    return {"runs": runs, "table": table, "sink_table": sink_table, "filing_checks": checks,
            "elapsed_s": time.monotonic() - started}


def reply_threads(args: argparse.Namespace, size: int) -> int:
    """How many threads alias-reply and alias-reopen answer at this size (K): --reply-threads,
    else what one run could send at REPLY_RATE (REPLY_BANDWIDTH for big messages)."""
    if args.reply_threads:
        return args.reply_threads
    seconds = args.seconds if args.seconds is not None else MAX_CELL_SECONDS
    k = max(100, math.ceil(seconds * min(REPLY_RATE, REPLY_BANDWIDTH / size)))
    return min(k, args.messages) if args.messages else k


def _route_index(route: str) -> int:
    return ROUTES.index(route) if route in ROUTES else len(ROUTES)


def summarise(runs: list[dict[str, Any]], backends: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sink_runs = {(r["route"], r["listener"], r["size"], r["conns"], r["repeat"]): r
                 for r in runs if r["server"] == "sink"}
    keys = sorted({(r["backend"], r["route"], r["listener"], r["size"], r["conns"]) for r in runs
                   if r["server"] != "sink"},
                  key=lambda k: (backends.index(k[0]), _route_index(k[1]), k[2], k[3], k[4]))
    table = []
    for backend, route, listener, size, conns in keys:
        gw = [r for r in runs if r["server"] != "sink"
              and (r["backend"], r["route"], r["listener"], r["size"], r["conns"]) == (backend, route, listener, size, conns)]
        paired = [(r, sink_runs.get((route, listener, size, conns, r["repeat"]))) for r in gw]
        sinks = [s for _, s in paired if s]
        effects = {}
        for name in ROUTE_EFFECTS.get(route, ()):
            values = [r.get(name) for r in gw]
            effects[name] = sum(values) if values and all(v is not None for v in values) else None
        table.append({
            "backend": backend, "route": route, "listener": listener, "size": size, "conns": conns,
            "repeats": len(gw),
            "gateway_msgs_per_s": median([r["msgs_per_s"] for r in gw]),
            "sink_msgs_per_s": median([s["msgs_per_s"] for s in sinks]),
            # The median of the per-repeat ratios: each gateway run against the sink run
            # next to it in time (drift on these machines hits both alike).
            "ratio": median([r["msgs_per_s"] / s["msgs_per_s"] for r, s in paired if s and s["msgs_per_s"]]),
            "p50_ms": median([r["p50_ms"] for r in gw]),
            "p99_ms": median([r["p99_ms"] for r in gw]),
            "sink_p99_ms": median([s["p99_ms"] for s in sinks]),
            "cpu_ms_per_msg": median([r["cpu_ms_per_msg"] for r in gw]),
            "db_cpu_ms_per_msg": median([r["db_cpu_ms_per_msg"] for r in gw if r.get("db_cpu_ms_per_msg") is not None]),
            "sink_cpu_ms_per_msg": median([s["cpu_ms_per_msg"] for s in sinks]),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in gw),
            "sink_peak_rss_mib": max((s["peak_rss_mib"] for s in sinks), default=float("nan")),
            "messages": sum(r["ok"] for r in gw),
            "errors": sum(r["errors"] for r in gw),
            "other_busy_cores": median([r["other_busy_cores"] for r in gw]),
            # What the route's messages did, summed over the repeats (ROUTE_EFFECTS).
            **effects,
        })
    sink_keys = sorted({k[:4] for k in sink_runs}, key=lambda k: (_route_index(k[0]), k[1], k[2], k[3]))
    sink_table = []
    for route, listener, size, conns in sink_keys:
        rs = [r for k, r in sink_runs.items() if k[:4] == (route, listener, size, conns)]
        sink_table.append({
            "route": route, "listener": listener, "size": size, "conns": conns,
            "msgs_per_s": median([r["msgs_per_s"] for r in rs]),
            "p50_ms": median([r["p50_ms"] for r in rs]), "p99_ms": median([r["p99_ms"] for r in rs]),
            "cpu_ms_per_msg": median([r["cpu_ms_per_msg"] for r in rs]),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs), "errors": sum(r["errors"] for r in rs),
        })
    return table, sink_table


def _f(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if digits == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def effect_text(t: dict[str, Any]) -> str:
    """The route's first effect per 250 reply, e.g. "new leads 100%", "reopened 98%"."""
    names = ROUTE_EFFECTS.get(t["route"], ())
    if not names or t.get(names[0]) is None or not t["messages"]:
        return "–"
    return f"{EFFECT_LABEL.get(names[0], names[0])} {t[names[0]] / t['messages']:.0%}"


def render_table(table: list[dict[str, Any]], markdown: bool) -> str:
    head = ["backend", "route", "listener", "size", "conns", "gateway msg/s", "sink msg/s", "ratio", "p50 ms",
            "p99 ms", "sink p99 ms", "CPU ms/msg", "peak RSS MiB", "effect"]
    rows = []
    for t in table:
        rows.append([t["backend"], t["route"], t["listener"].upper(), size_label(t["size"]), str(t["conns"]),
                     _f(t["gateway_msgs_per_s"]), _f(t["sink_msgs_per_s"]), f"{t['ratio']:.2f}×"
                     if not math.isnan(t["ratio"]) else "–", _f(t["p50_ms"]), _f(t["p99_ms"]),
                     _f(t["sink_p99_ms"]), _f(t["cpu_ms_per_msg"], 2), _f(t["peak_rss_mib"], 0)
                     + (f" ({t['errors']} errors)" if t["errors"] else ""), effect_text(t)])
    return _render(head, rows, markdown, right=range(4, 13))


def render_sink_table(table: list[dict[str, Any]], markdown: bool) -> str:
    head = ["sink", "route", "size", "conns", "msg/s", "p50 ms", "p99 ms", "CPU ms/msg", "peak RSS MiB"]
    rows = [[t["listener"].upper(), t["route"], size_label(t["size"]), str(t["conns"]), _f(t["msgs_per_s"]),
             _f(t["p50_ms"]), _f(t["p99_ms"]), _f(t["cpu_ms_per_msg"], 2), _f(t["peak_rss_mib"], 0)
             + (f" ({t['errors']} errors)" if t["errors"] else "")] for t in table]
    return _render(head, rows, markdown, right=range(3, 9))


def _render(head: list[str], rows: list[list[str]], markdown: bool, right: range) -> str:
    if markdown:
        align = ["---:" if i in right else "---" for i in range(len(head))]
        lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(x.rjust(w) if i in right else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)])


# Issue 17's targets, on SQLite at 10 connections unless noted.
RATIO_TARGETS = {1000: 0.5, 100_000: 1.5, 1_000_000: 2.0}  # gateway/sink, every route
P99_TARGET = 2.0           # 1 KB: p99 at most this many times the sink's
PG_TARGET_SMALL = 0.6      # PostgreSQL/SQLite msg/s at 1 KB (under 100 KB) ...
PG_TARGET_BIG = 0.9        # ... and at 100 KB and up; every route and connection count
CPU_TARGET_MS = 0.6        # gateway CPU per 1 KB dropbox message (10 connections, each backend)


def targets(table: list[dict[str, Any]]) -> list[str]:
    """Issue 17's targets that this table can judge (SQLite, 10 connections unless noted)."""
    out = []
    by = {(t["backend"], t["route"], t["listener"], t["size"], t["conns"]): t for t in table}
    mark = lambda ok: "met   " if ok else "MISSED"  # noqa: E731
    for (backend, route, listener, size, conns), t in by.items():
        cell = f"{route} {listener.upper()} {size_label(size)}"
        if backend == "sqlite" and conns == 10 and size in RATIO_TARGETS:
            want = RATIO_TARGETS[size]
            out.append(f"{mark(t['ratio'] >= want)} {cell}: gateway/sink {t['ratio']:.2f}× (target ≥ {want:g}×)")
        if backend == "sqlite" and conns == 10 and size == 1000:
            x = t["p99_ms"] / t["sink_p99_ms"] if t["sink_p99_ms"] else float("nan")
            out.append(f"{mark(x <= P99_TARGET)} {cell}: p99 {x:.1f}× the sink's "
                       f"({t['p99_ms']:.1f} vs {t['sink_p99_ms']:.1f} ms; target ≤ {P99_TARGET:g}×)")
        if backend == "postgresql" and ("sqlite", route, listener, size, conns) in by:
            lite = by[("sqlite", route, listener, size, conns)]["gateway_msgs_per_s"]
            x = t["gateway_msgs_per_s"] / lite if lite else float("nan")
            want = PG_TARGET_BIG if size >= 100_000 else PG_TARGET_SMALL
            out.append(f"{mark(x >= want)} {cell} c{conns}: PostgreSQL {x:.2f}× SQLite (target ≥ {want:g}×)")
        if route == "dropbox" and size == 1000 and conns == 10 and backend in ("sqlite", "postgresql"):
            x = t["cpu_ms_per_msg"]
            out.append(f"{mark(x <= CPU_TARGET_MS)} {cell} {backend}: gateway CPU {x:.2f} ms/msg "
                       f"(target ≤ {CPU_TARGET_MS:g} ms)")
    return out


# --- memory -----------------------------------------------------------------------------


async def memory(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    config = srv.prepare_config(workdir)
    listener = args.listeners.split(",")[0].strip()
    big = MessageFactory(parse_size(args.memory_big_size))
    small = MessageFactory(parse_size("1k"))
    out: dict[str, Any] = {"listener": listener, "big": [], "flat": []}
    big_conns, count = args.memory_big_conns, args.memory_messages
    targets_: list[str | None] = [None, *args.backend_list]  # None: the sink
    for which in targets_:
        server: srv.Server
        if which is None:
            server = srv.SinkServer(workdir)
        else:
            db = srv.Database.sqlite(workdir) if which == "sqlite" else srv.Database.postgresql(args.pg)
            server = srv.GatewayServer(workdir, config, db)
        try:
            server.start()
            idle = srv.rss_mib(server.pid)
            row, _ = await measure(server, listener, big, big_conns, MAX_CELL_SECONDS, big_conns, 0)
            row.update(backend=which or "-", idle_rss_mib=idle, hwm_since_start_mib=srv.hwm_mib(server.pid))
            out["big"].append(row)
            log(f"  {server.name}: {big_conns} concurrent {size_label(big.size)}: peak RSS {row['peak_rss_mib']:.0f} MiB "
                f"(idle {idle:.0f} MiB), {row['ok']} ok, {row['errors']} errors, {row['wall_s']:.1f} s")
        finally:
            server.stop()
            if isinstance(server, srv.GatewayServer):
                server.database.drop()
        if which is None:
            server = srv.SinkServer(workdir)
        else:
            db = srv.Database.sqlite(workdir) if which == "sqlite" else srv.Database.postgresql(args.pg)
            server = srv.GatewayServer(workdir, config, db)
        try:
            server.start()
            idle = srv.rss_mib(server.pid)
            row, _ = await measure(server, listener, small, 10, MAX_CELL_SECONDS, count, 0,
                                   checkpoints=max(1, count // 10))
            row.update(backend=which or "-", idle_rss_mib=idle)
            if isinstance(server, srv.GatewayServer):
                row["emails_in_database"] = server.database.count_emails()
            out["flat"].append(row)
            points = ", ".join(f"{n // 1000 if n >= 1000 else n}{'k' if n >= 1000 else ''}: {r:.1f}"
                               for n, r in row["rss_checkpoints"])
            log(f"  {server.name}: {count} x 1 KB over 10 connections: RSS MiB {points}; {row['errors']} errors")
        finally:
            server.stop()
            if isinstance(server, srv.GatewayServer):
                server.database.drop()
    return out


def render_memory(mem: dict[str, Any], markdown: bool) -> str:
    head = ["server", "backend", "load", "idle RSS MiB", "peak RSS MiB", "messages ok", "errors", "wall s"]
    rows = []
    for r in mem["big"]:
        rows.append([r["server"].split("-")[0], r["backend"], f"{r['conns']} concurrent × {size_label(r['size'])}",
                     _f(r["idle_rss_mib"], 0), _f(r["peak_rss_mib"], 0), str(r["ok"]), str(r["errors"]),
                     _f(r["wall_s"])])
    first = _render(head, rows, markdown, right=range(3, 8))
    head2 = ["server", "backend", "load", "idle RSS MiB", "RSS after first", "RSS after last", "growth",
             "msg/s", "errors"]
    rows2 = []
    for r in mem["flat"]:
        cps = r["rss_checkpoints"]
        growth = cps[-1][1] - cps[0][1] if len(cps) >= 2 else float("nan")
        label = lambda n: f"{n // 1000:,}k" if n % 1000 == 0 else f"{n:,}"  # noqa: E731
        rows2.append([r["server"].split("-")[0], r["backend"], f"{r['ok']:,} × {size_label(r['size'])}, {r['conns']} conns",
                      _f(r["idle_rss_mib"]),
                      f"{_f(cps[0][1])} ({label(cps[0][0])})" if cps else "–",
                      f"{_f(cps[-1][1])} ({label(cps[-1][0])})" if cps else "–",
                      f"{growth:+.1f} MiB" if not math.isnan(growth) else "–",
                      _f(r["msgs_per_s"], 0), str(r["errors"])])
    second = _render(head2, rows2, markdown, right=range(3, len(head2)))
    return first + "\n\n" + second


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 KB and 100 KB at 10 connections, SQLite, LMTP and SMTP, 1 repeat, 2 s cells")
    p.add_argument("--sizes", help=f"message sizes, decimal units (default {FULL['sizes']})")
    p.add_argument("--conns", help=f"concurrent connections (default {FULL['conns']})")
    p.add_argument("--listeners", help=f"lmtp and/or smtp (default {FULL['listeners']})")
    p.add_argument("--routes", help=f"which mail: {', '.join(ROUTES)} (default: all five, --quick too)")
    p.add_argument("--reply-threads", type=int, metavar="K",
                   help=f"threads alias-reply and alias-reopen answer, opened before measuring (default: "
                        f"what a run sends at {REPLY_RATE} msg/s, e.g. {math.ceil(3 * REPLY_RATE)} for 3 s at 1 KB; "
                        f"a run of more messages wraps round: still replies)")
    p.add_argument("--backends", help="sqlite and/or postgresql (default: sqlite, plus postgresql when a URL is given)")
    p.add_argument("--webhooks", action="store_true",
                   help="each backend also with two webhook endpoints (a fast receiver, one down), in the same run")
    p.add_argument("--pg", default=os.environ.get("GATEWAY_TEST_DATABASE_URL") or None,
                   help="PostgreSQL URL (default: $GATEWAY_TEST_DATABASE_URL); a fresh schema per gateway process")
    p.add_argument("--repeats", type=int, help=f"runs of every cell, interleaved with the sink (default {FULL['repeats']})")
    p.add_argument("--seconds", type=float, help=f"length of a cell's run; every connection sends at least one message "
                                                 f"(default {FULL['seconds']}, or {MAX_CELL_SECONDS:.0f} with --messages)")
    p.add_argument("--messages", type=int, help="at most this many messages per run (cell)")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for the README)")
    p.add_argument("--json", metavar="FILE", help="write every run, the medians and the environment to FILE")
    p.add_argument("--memory", action="store_true",
                   help="the memory targets instead: peak RSS with 50 concurrent 10 MB messages, RSS over 10,000 1 KB")
    p.add_argument("--memory-big-conns", type=int, default=50, help=argparse.SUPPRESS)
    p.add_argument("--memory-big-size", default="10m", help=argparse.SUPPRESS)
    p.add_argument("--memory-messages", type=int, default=10_000, help=argparse.SUPPRESS)
    p.add_argument("--profile", metavar="DIR", help="record every measured gateway run with py-spy into DIR "
                                                    "(slows it down; summarise with python -m tests.bench.profile)")
    p.add_argument("--workdir", help="keep configs, databases and server logs here (default: a temporary folder)")
    args = p.parse_args(argv)
    defaults = dict(FULL)
    if args.quick:
        defaults.update(QUICK)
    for key in ("sizes", "conns", "listeners", "repeats"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.seconds is None and args.messages is None:
        args.seconds = defaults["seconds"]
    if args.backends is None:
        args.backends = defaults.get("backends") or ("sqlite,postgresql" if args.pg else "sqlite")
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in args.backend_list:
        if b not in ("sqlite", "postgresql"):
            p.error(f"unknown backend {b!r}")
    if "postgresql" in args.backend_list and not args.pg:
        p.error("postgresql needs --pg URL or GATEWAY_TEST_DATABASE_URL")
    for listener in args.listeners.split(","):
        if listener.strip() not in ("lmtp", "smtp"):
            p.error(f"unknown listener {listener!r}")
    args.route_list = [r.strip() for r in (args.routes or ",".join(ROUTES)).split(",") if r.strip()]
    for route in args.route_list:
        if route not in ROUTES:
            p.error(f"unknown route {route!r} (routes: {', '.join(ROUTES)})")
    if not args.route_list or len(set(args.route_list)) != len(args.route_list):
        p.error("--routes: one or more different routes")
    if args.reply_threads is not None and args.reply_threads < 1:
        p.error("--reply-threads must be positive")
    for s in args.sizes.split(","):
        try:
            if parse_size(s) > 10_400_000:
                p.error(f"{s}: over the gateway's 10485760-octet limit with headers")
        except ValueError as exc:
            p.error(str(exc))
    if args.repeats < 1 or (args.seconds is not None and args.seconds <= 0) or (args.messages is not None and args.messages < 1):
        p.error("--repeats, --seconds and --messages must be positive")
    return args


def _clean(value: Any) -> Any:
    """JSON without NaN (null instead)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("aiosmtpd", "uvloop", "SQLAlchemy", "psycopg", "mail-parser"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    except OSError:
        pass
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
            "kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": model, "versions": versions,
            "command": "python -m tests.bench.run " + " ".join(sys.argv[1:])}


def wrap_up(args: argparse.Namespace, report: dict[str, Any], workdir: Path, failed: bool) -> None:
    """After a run (also a failed one): the JSON report if asked for, and the work dir
    removed -- or kept, with the server logs, after a failure or when given."""
    if args.json:
        Path(args.json).write_text(json.dumps(_clean(report), indent=2, default=str) + "\n")
        log(f"bench: wrote {args.json}")
    if failed:
        log(f"bench: failed; server logs kept in {workdir}")
    elif not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(), "options": {
        k: v for k, v in vars(args).items() if k not in ("pg",)}}
    failed = True
    try:
        if args.memory:
            mem = await memory(args, workdir)
            report["memory"] = mem
            print(render_memory(mem, args.markdown))
        else:
            result = await throughput(args, workdir)
            report.update(result)
            print(render_table(result["table"], args.markdown))
            print()
            print("Reference sink (aiosmtpd + uvloop, answers 250 at once):" if not args.markdown
                  else "Reference sink (aiosmtpd + uvloop, answers 250 at once):\n")
            print(render_sink_table(result["sink_table"], args.markdown))
            checks = targets(result["table"])
            if checks:
                print("\nTargets (issue 17):")
                for line in checks:
                    print(f"- {line}" if args.markdown else f"  {line}")
            errors = sum(t["errors"] for t in result["table"]) + sum(t["errors"] for t in result["sink_table"])
            noisy = median([r["other_busy_cores"] for r in result["runs"]])
            print(f"\n{report['environment']['command']} — {report['environment']['date']}, "
                  f"{report['environment']['cpus']} CPUs, Python {report['environment']['python']}; "
                  f"medians of {args.repeats} interleaved repeat(s); other load on the machine during runs: "
                  f"median {noisy:.2f} cores; {errors} errors; {result['elapsed_s'] / 60:.1f} min.")
            unfiled = [c for c in result["filing_checks"] if not c["all_filed"]]
            print(f"Filing: {len(result['filing_checks']) - len(unfiled)} of {len(result['filing_checks'])} gateway "
                  f"databases hold one email per 250 reply" + "".join(
                      f"; MISMATCH {c['backend']} {size_label(c['size'])}: {c['emails_in_database']} emails, "
                      f"{c['250s']} 250s" for c in unfiled) + ".")
        failed = False
    finally:
        wrap_up(args, report, workdir, failed)
    return 0


def main(argv: list[str] | None = None) -> int:
    global PROFILE_DIR
    args = parse_args(argv)
    if args.profile:
        PROFILE_DIR = Path(args.profile).resolve()
    import uvloop

    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
