"""Several gateway instances on ONE PostgreSQL database: how does throughput grow?

    python -m tests.bench.instances --pg postgresql://postgres@127.0.0.1:5432/test
    python -m tests.bench.instances --pg URL --instances 1,2,3 --routes dropbox,alias-new \\
           --seconds 5 --conns 10 --repeats 2 --markdown --json instances.json

For each instance count N (default 1 and 2) and repeat (interleaved: N=1, N=2, N=1,
N=2, ...): a fresh PostgreSQL schema, N fresh ``python -m gateway serve`` processes on
it (started one after the other: the first migrates the schema, the others find it
current; each has its own LMTP port), the routes' preparation (once: the database is
shared), a short warm-up of every instance, then per route a run of --seconds with the
--conns connections split evenly over the instances, all at the same time.  1 KB mail
over LMTP.  Reported per N and route (medians of the repeats): total msg/s, p50/p99,
the gateways' CPU (all N processes), the PostgreSQL server's CPU, their sum, the
machine's busy cores, and msg/s(N) / msg/s(smallest N).  After each block the schema's
``emails`` rows are counted against every 250 reply.  See tests/bench/README.md
("Several instances on one PostgreSQL").
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench import servers as srv
from tests.bench.client import LoadResult, run_load
from tests.bench.messages import ROUTES, MessageFactory, replies_to, thread_starts
from tests.bench.run import (EFFECT_LABEL, EFFECTS, REOPEN_RESET, ROUTE_EFFECTS, _f, _render, environment,
                             log, median, percentile, prepare, reply_threads, wrap_up)

SIZE = 1000                    # 1 KB mail
LISTENER = "lmtp"
STRIDE = 10_000_000            # message numbers per instance and run: no two instances share a Message-ID
WARM_SECONDS = 0.5             # warm-up per instance and route (2 connections)
DUPLICATES = "SELECT count(*) - count(DISTINCT (org_id, message_id)) FROM emails"


def split(total: int, parts: int) -> list[int]:
    """``total`` connections over ``parts`` instances, as evenly as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def errors_of(results: list[LoadResult]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        for k, v in r.errors.items():
            out[k] = out.get(k, 0) + v
    return out


async def measure(gws: list[srv.GatewayServer], factory: MessageFactory, rcpt: str, conns: int, seconds: float,
                  first_seq: int) -> tuple[dict[str, Any], int]:
    """One run: every instance gets its share of the connections, all at once.  Returns
    the row and the next free message number."""
    pids = [gw.pid for gw in gws]
    marks: dict[str, Any] = {}

    def on_start() -> None:  # the first instance whose connections have all greeted
        if marks:
            return
        marks["pg"] = srv.cpu_seconds_of("postgres")
        marks["gw"] = [srv.cpu_seconds(p) for p in pids]
        marks["client"] = time.process_time()
        marks["busy"], marks["steal"], _ = srv.system_cpu()

    shares = split(conns, len(gws))
    results: list[LoadResult] = await asyncio.gather(*(
        run_load(srv.HOST, gw.port(LISTENER), lmtp=True, conns=share, factory=factory, rcpt=rcpt,
                 seconds=seconds, max_messages=STRIDE, first_seq=first_seq + i * STRIDE, on_start=on_start)
        for i, (gw, share) in enumerate(zip(gws, shares))))
    gw_cpu = sum(srv.cpu_seconds(p) for p in pids) - sum(marks.get("gw", [0.0] * len(pids)))
    pg_cpu = sum(t - marks.get("pg", {}).get(p, 0.0) for p, t in srv.cpu_seconds_of("postgres").items())
    client = time.process_time() - marks.get("client", 0.0)
    busy, steal, _ = srv.system_cpu()
    for gw in gws:
        if not gw.alive():
            raise RuntimeError(f"{gw.name} died during the run:\n{srv.tail(gw.log)}")
    ok = sum(r.ok for r in results)
    # From the first instance's start to the last reply of any (the longest wall;
    # the instances start within milliseconds of each other).
    wall = max(max(r.ended for r in results) - min(r.started for r in results), 1e-9)
    lat = [x * 1000 for r in results for x in r.latencies]
    errors = errors_of(results)
    per = lambda s: s * 1000 / ok if ok else float("nan")  # noqa: E731
    row = {
        "instances": len(gws), "route": factory.route, "conns": conns, "shares": shares,
        "ok": ok, "ok_per_instance": [r.ok for r in results],
        "errors": sum(errors.values()), "error_kinds": errors,
        "error_samples": [s for r in results for s in r.error_samples][:10],
        "wall_s": round(wall, 3), "msgs_per_s": ok / wall if ok else 0.0,
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
        "gw_cpu_ms_per_msg": per(gw_cpu), "pg_cpu_ms_per_msg": per(pg_cpu),
        "total_cpu_ms_per_msg": per(gw_cpu + pg_cpu),
        "gw_cores": gw_cpu / wall, "pg_cores": pg_cpu / wall, "client_cores": client / wall,
        "busy_cores": (busy - marks.get("busy", busy)) / wall,
        "other_busy_cores": max(0.0, busy - marks.get("busy", busy) - gw_cpu - pg_cpu - client) / wall,
        "steal_cores": (steal - marks.get("steal", steal)) / wall,
    }
    return row, first_seq + len(gws) * STRIDE


async def block(args: argparse.Namespace, workdir: Path, config: Path, n: int, rep: int,
                seq: int) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """N fresh instances on a fresh schema: prepare, warm up, measure every route, count
    the emails.  Returns the rows, the filing check and the next message number."""
    routes = args.route_list
    threads = reply_threads(args, SIZE)
    starts = {r: thread_starts(r, threads) for r in routes if r in ("alias-reply", "alias-reopen")}
    factories = {r: replies_to(starts[r], r, SIZE) if r in starts else MessageFactory(SIZE, route=r) for r in routes}
    db = srv.Database.postgresql(args.pg)   # one schema, shared by the N instances
    gws: list[srv.GatewayServer] = []
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.monotonic()
        for i in range(n):  # one after the other: the first migrates, the others find the schema current
            gw = srv.GatewayServer(workdir, config, db)
            gw.name = f"gateway-pg-n{n}-{i + 1}"
            gw.log = workdir / f"{gw.name}.log"
            gws.append(gw)
            t = time.monotonic()
            await asyncio.to_thread(gw.start)
            if i == 0:
                first_start = time.monotonic() - t
        started = time.monotonic() - t0
        dropboxes = {gw.dropbox for gw in gws}
        if len(dropboxes) != 1:
            raise RuntimeError(f"the instances disagree on the dropbox address: {dropboxes}")
        log(f"  N={n} #{rep + 1}: schema {db.schema}, {n} instance(s) up in {started:.1f} s "
            f"(the first, migrating: {first_start:.1f} s)")
        prepared = await prepare(gws[0], LISTENER, routes, starts)
        warm = 0
        for gw in gws:
            for factory in factories.values():
                r = await run_load(srv.HOST, gw.port(LISTENER), lmtp=True, conns=2, factory=factory,
                                   rcpt=factory.rcpt or gws[0].rcpt(), seconds=WARM_SECONDS, max_messages=STRIDE,
                                   first_seq=seq)
                seq += STRIDE
                warm += r.ok
                if r.errors:
                    raise RuntimeError(f"warm-up of {gw.name} ({factory.route}) failed: {r.errors} "
                                       f"{r.error_samples[:3]}\n{srv.tail(gw.log)}")
        for route in routes:
            factory = factories[route]
            if route == "alias-reopen":
                await asyncio.to_thread(db.execute, REOPEN_RESET)
            before = {k: await asyncio.to_thread(db.scalar, EFFECTS[k]) for k in ROUTE_EFFECTS[route]}
            row, seq = await measure(gws, factory, factory.rcpt or gws[0].rcpt(), args.conns, args.seconds, seq)
            after = {k: await asyncio.to_thread(db.scalar, EFFECTS[k]) for k in ROUTE_EFFECTS[route]}
            for k, v in after.items():
                row[k] = v - before[k] if v is not None and before[k] is not None else None
            row["repeat"] = rep
            rows.append(row)
            log(describe(row, rep))
            await asyncio.sleep(0.2)
        measured = sum(r["ok"] for r in rows)
        filed = prepared + warm + measured
        count = db.count_emails()
        dups = db.scalar(DUPLICATES)
        check = {"instances": n, "repeat": rep, "schema": db.schema, "250s": filed, "prepared": prepared,
                 "warm_up": warm, "measured": measured, "emails_in_database": count, "duplicate_message_ids": dups,
                 "all_filed": count == filed and dups == 0, "start_s": round(started, 2),
                 "first_start_s": round(first_start, 2)}
        log(f"  N={n} #{rep + 1}: {count} emails in the schema after {filed} 250 replies ({prepared} preparing, "
            f"{warm} warming up, {measured} measured), {dups} duplicate Message-IDs: "
            f"{'every one filed' if check['all_filed'] else 'MISMATCH'}")
        return rows, check, seq
    finally:
        for gw in gws:
            gw.stop()
        db.drop()


def describe(row: dict[str, Any], rep: int) -> str:
    effects = [f"{k.replace('_', ' ')} {row[k]}" for k in ROUTE_EFFECTS[row["route"]] if row.get(k) is not None]
    text = (f"  N={row['instances']} #{rep + 1} {row['route']:<12} c{row['conns']} ({'+'.join(map(str, row['shares']))}) "
            f"{row['msgs_per_s']:7.1f} msg/s  p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  "
            f"cpu gw {row['gw_cpu_ms_per_msg']:.2f} + pg {row['pg_cpu_ms_per_msg']:.2f} ms/msg  "
            f"busy {row['busy_cores']:.2f} cores (gw {row['gw_cores']:.2f}, pg {row['pg_cores']:.2f}, "
            f"client {row['client_cores']:.2f}, other {row['other_busy_cores']:.2f})  "
            f"n={row['ok']} ({'+'.join(map(str, row['ok_per_instance']))})  {', '.join(effects)}")
    if row["errors"]:
        text += f"  ERRORS {row['error_kinds']} e.g. {row['error_samples'][:2]}"
    return text


def summarise(runs: list[dict[str, Any]], instances: list[int], routes: list[str]) -> list[dict[str, Any]]:
    base_n = instances[0]
    table = []
    for route in routes:
        base = {r["repeat"]: r for r in runs if r["route"] == route and r["instances"] == base_n}
        for n in instances:
            rs = [r for r in runs if r["route"] == route and r["instances"] == n]
            if not rs:
                continue
            effects = {}
            for k in ROUTE_EFFECTS[route]:
                values = [r.get(k) for r in rs]
                effects[k] = sum(values) if all(v is not None for v in values) else None
            table.append({
                "instances": n, "route": route, "repeats": len(rs),
                "msgs_per_s": median([r["msgs_per_s"] for r in rs]),
                # The median of the per-repeat ratios (N=1 and N=k of one repeat ran next to each other).
                "ratio": median([r["msgs_per_s"] / base[r["repeat"]]["msgs_per_s"] for r in rs
                                 if r["repeat"] in base and base[r["repeat"]]["msgs_per_s"]]),
                **{k: median([r[k] for r in rs]) for k in (
                    "p50_ms", "p99_ms", "gw_cpu_ms_per_msg", "pg_cpu_ms_per_msg", "total_cpu_ms_per_msg",
                    "busy_cores", "other_busy_cores", "client_cores")},
                "messages": sum(r["ok"] for r in rs), "errors": sum(r["errors"] for r in rs), **effects,
            })
    return table


def render(table: list[dict[str, Any]], base_n: int, markdown: bool) -> str:
    head = ["route", "instances", "msg/s", f"× N={base_n}", "p50 ms", "p99 ms", "gateways CPU ms/msg",
            "PostgreSQL CPU ms/msg", "total CPU ms/msg", "busy cores", "errors", "effect"]
    rows = []
    for t in table:
        names = ROUTE_EFFECTS[t["route"]]
        effect = (f"{EFFECT_LABEL.get(names[0], names[0])} {t[names[0]] / t['messages']:.0%}"
                  if t.get(names[0]) is not None and t["messages"] else "–")
        rows.append([t["route"], str(t["instances"]), _f(t["msgs_per_s"]),
                     f"{t['ratio']:.2f}×" if not math.isnan(t["ratio"]) else "–", _f(t["p50_ms"]), _f(t["p99_ms"]),
                     _f(t["gw_cpu_ms_per_msg"], 2), _f(t["pg_cpu_ms_per_msg"], 2), _f(t["total_cpu_ms_per_msg"], 2),
                     _f(t["busy_cores"], 2), str(t["errors"]), effect])
    return _render(head, rows, markdown, right=range(1, 11))


def conclusion(table: list[dict[str, Any]], instances: list[int]) -> str:
    if len(instances) < 2:
        return "Conclusion: one instance count only; nothing to compare."
    top = instances[-1]
    parts = []
    for t in table:
        if t["instances"] == top and not math.isnan(t["ratio"]):
            base = next(b for b in table if b["route"] == t["route"] and b["instances"] == instances[0])
            parts.append(f"{t['route']} {t['ratio']:.2f}× ({_f(base['msgs_per_s'])} → {_f(t['msgs_per_s'])} msg/s, "
                         f"total CPU {_f(base['total_cpu_ms_per_msg'], 2)} → {_f(t['total_cpu_ms_per_msg'], 2)} ms/msg, "
                         f"busy {_f(base['busy_cores'], 2)} → {_f(t['busy_cores'], 2)} cores)")
    cpus = os.cpu_count() or 0
    return (f"Conclusion: {top} instances vs {instances[0]} on one PostgreSQL: " + "; ".join(parts)
            + f". On this {cpus}-CPU machine gateways, database and load generator share the cores: "
              "this is contention, not the scaling on separate hosts.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.instances", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg", default=os.environ.get("GATEWAY_TEST_DATABASE_URL") or None,
                   help="PostgreSQL URL (default: $GATEWAY_TEST_DATABASE_URL); a fresh schema per N and repeat")
    p.add_argument("--instances", default="1,2", help="instance counts to compare (default 1,2)")
    p.add_argument("--routes", default="dropbox,alias-new", help=f"which mail: {', '.join(ROUTES)} (default dropbox,alias-new)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of one run (default 5)")
    p.add_argument("--conns", type=int, default=10, help="connections in total, split evenly over the instances (default 10)")
    p.add_argument("--repeats", type=int, default=2, help="runs per N, interleaved (default 2); the table quotes medians")
    p.add_argument("--reply-threads", type=int, metavar="K", help="threads alias-reply/alias-reopen answer (as run.py)")
    p.add_argument("--json", metavar="FILE", help="write every run, the medians and the environment to FILE")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--workdir", help="keep configuration and server logs here (default: a temporary folder)")
    args = p.parse_args(argv)
    if not args.pg:
        p.error("needs --pg URL or GATEWAY_TEST_DATABASE_URL")
    try:
        args.instance_list = sorted({int(x) for x in args.instances.split(",") if x.strip()})
    except ValueError:
        p.error("--instances: comma-separated positive integers")
    if not args.instance_list or args.instance_list[0] < 1:
        p.error("--instances: comma-separated positive integers")
    args.route_list = [r.strip() for r in args.routes.split(",") if r.strip()]
    for r in args.route_list:
        if r not in ROUTES:
            p.error(f"unknown route {r!r} (routes: {', '.join(ROUTES)})")
    if not args.route_list or len(set(args.route_list)) != len(args.route_list):
        p.error("--routes: one or more different routes")
    if args.seconds <= 0 or args.repeats < 1:
        p.error("--seconds and --repeats must be positive")
    if args.conns < args.instance_list[-1]:
        p.error(f"--conns must be at least the largest instance count ({args.instance_list[-1]})")
    args.messages = None  # run.reply_threads reads it
    return args


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gateway-bench-instances-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = environment()
    env["command"] = "python -m tests.bench.instances " + " ".join(a for a in sys.argv[1:])
    report: dict[str, Any] = {"environment": env,
                              "options": {k: v for k, v in vars(args).items() if k != "pg"}}
    instances, routes = args.instance_list, args.route_list
    config = srv.prepare_config(workdir)
    runs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    started = time.monotonic()
    log(f"bench: instances {instances} x routes {routes} x {args.repeats} repeats, {args.conns} connections, "
        f"{args.seconds:g} s runs, 1 KB over LMTP; a fresh schema per N and repeat; work dir {workdir}")
    failed = True
    seq = 0
    try:
        for rep in range(args.repeats):
            for n in instances:  # interleaved: N=1, N=2, N=1, N=2, ...
                rows, check, seq = await block(args, workdir, config, n, rep, seq)
                runs += rows
                checks.append(check)
        table = summarise(runs, instances, routes)
        report.update(runs=runs, table=table, filing_checks=checks, elapsed_s=time.monotonic() - started)
        print(render(table, instances[0], args.markdown))
        print()
        print(conclusion(table, instances))
        errors = sum(r["errors"] for r in runs)
        kinds = errors_of([LoadResult(errors=r["error_kinds"]) for r in runs])
        print(f"\n{env['command']} — {env['date']}, {env['cpus']} CPUs, Python {env['python']}; medians of "
              f"{args.repeats} interleaved repeat(s); other load on the machine during runs: median "
              f"{median([r['other_busy_cores'] for r in runs]):.2f} cores; {errors} errors"
              + (f" {kinds}" if kinds else "") + f"; {(time.monotonic() - started) / 60:.1f} min.")
        bad = [c for c in checks if not c["all_filed"]]
        print(f"Filing: {len(checks) - len(bad)} of {len(checks)} schemas hold one email per 250 reply "
              f"({sum(c['250s'] for c in checks)} 250s incl. preparation and warm-up, "
              f"{sum(c['emails_in_database'] or 0 for c in checks)} emails, "
              f"{sum(c['duplicate_message_ids'] or 0 for c in checks)} duplicate Message-IDs)"
              + "".join(f"; MISMATCH N={c['instances']} #{c['repeat'] + 1}: {c['emails_in_database']} emails, "
                        f"{c['250s']} 250s, {c['duplicate_message_ids']} duplicates" for c in bad) + ".")
        failed = False
    finally:
        wrap_up(args, report, workdir, failed)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvloop

    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
