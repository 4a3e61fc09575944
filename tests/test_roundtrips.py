"""Round trips to PostgreSQL per filing (issue 17): at most 5 on the dropbox route and
6 on the alias routes, counted at psycopg's send calls by tests/roundtrips.py in a
process of its own (it needs psycopg's pure-Python libpq binding).  Not a timing.

Each route is filed a few times first (psycopg prepares a statement server-side on
its fifth run, a round trip of its own once per connection), then measured three
times; every measured filing must stay within the bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_URL, REPO

pytestmark = pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (GATEWAY_TEST_DATABASE_URL)")

BOUNDS = {"dropbox": 5, "dropbox-attachments": 5, "dropbox-new": 5, "alias-new": 6, "alias-reply": 6, "alias-reopen": 6}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_round_trips_per_filing_within_bounds(config_dir: Path, database_url: str) -> None:
    env = {**os.environ, "PSYCOPG_IMPL": "python", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "tests.roundtrips", str(config_dir), database_url],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ROUNDTRIPS ")]
    assert proc.returncode == 0 and lines, f"probe failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    found = json.loads(lines[-1][len("ROUNDTRIPS "):])
    # The reopen route really reopened (a plain join would be cheaper and prove nothing).
    reopened = found.pop("reopened")
    assert reopened and set(reopened) == {"Reopened"}, reopened
    assert set(found) == set(BOUNDS)
    over = {route: (r["filing"], r["sql"]) for route, r in found.items() if max(r["filing"]) > BOUNDS[route]}
    assert not over, json.dumps(over, indent=1)
    # Each measured filing did talk to the database (the probe saw its calls).
    assert all(min(r["filing"]) >= 3 for r in found.values()), found
    # The dropbox address lookup at RCPT: one round trip (autocommit, no ping); two
    # when psycopg prepares it on that pooled connection's fifth use, or pings a
    # connection idle for 2 s.
    rcpt = found["dropbox"]["rcpt"] + found["dropbox-new"]["rcpt"]
    assert min(rcpt) == 1 and max(rcpt) <= 2, found
    assert found["alias-new"]["rcpt"] == [0, 0, 0], found  # aliases are in the rules
