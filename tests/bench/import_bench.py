"""Issue 13 item 4: `gateway import contacts` of 100,000 generated CSV rows, on SQLite.

    python -m tests.bench.import_bench                     # 100,000 rows, SQLite
    python -m tests.bench.import_bench --rows 20000 --pg postgresql://postgres@127.0.0.1:5432/test

Runs the real command (`python -m gateway import ...`) in a fresh database with the
shipped demo rules, then the same file again (every row unchanged), and prints the
wall-clock seconds of each: process start, schema creation and rules sync included.
The target is under a minute for the first run.  Outside the default test run
(`pyproject.toml` ignores tests/bench).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OWNERS = ("hashimoto@zylker.example", "kitazawa@zylker.example", "")


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        # "phone" is not a column the import reads: named once, ignored.
        out.writerow(["email", "first_name", "last_name", "external_id", "owner", "phone"])
        for n in range(rows):
            out.writerow([f"customer{n}@example{n % 97}.com", f"First{n}", f"Last{n}", f"crm-{n}",
                          OWNERS[n % len(OWNERS)], f"+81-3-{n:07d}"])


def run(config: Path, env: dict[str, str], data: Path) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gateway", "import", "contacts", str(data), "--org", "zylker",
                           "--json", "--config", str(config)], env=env, capture_output=True, timeout=600)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"import exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return seconds, json.loads(proc.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the generated CSV (default 100,000)")
    parser.add_argument("--pg", metavar="URL",
                        help="PostgreSQL server instead of SQLite (a fresh schema, dropped after)")
    args = parser.parse_args()

    from gateway import signing

    work = Path(tempfile.mkdtemp(prefix="gateway-import-bench-"))
    schema = None
    admin = None
    try:
        shutil.copy(REPO / "gateway.toml", work / "gateway.toml")
        shutil.copytree(REPO / "rules", work / "rules")
        for domain in ("zylker.example", "lumen.example"):
            signing.generate_key(work / "keys" / f"{domain}.gw2026.pem")
        if args.pg:
            import sqlalchemy as sa

            from gateway.store import db

            schema = "bench_" + secrets.token_hex(6)
            admin = sa.create_engine(db.normalise_url(args.pg), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
            url = f"{args.pg}{'&' if '?' in args.pg else '?'}options=-csearch_path%3D{schema}"
        else:
            url = f"sqlite:///{work / 'gateway.db'}"
        env = {**os.environ, "GATEWAY_DATABASE_URL": url}
        data = work / "people.csv"
        write_csv(data, args.rows)
        backend = "PostgreSQL" if args.pg else "SQLite"
        first, report = run(work / "gateway.toml", env, data)
        assert report["created"] == args.rows and not report["errors"], report
        print(f"{args.rows:,} rows, {backend}: first import {first:.1f} s "
              f"({args.rows / first:,.0f} rows/s, {report['created']:,} created)", flush=True)
        again, report = run(work / "gateway.toml", env, data)
        assert report["unchanged"] == args.rows, report
        print(f"{args.rows:,} rows, {backend}: re-run {again:.1f} s ({report['unchanged']:,} unchanged)")
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            admin.dispose()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
