"""Fixtures: the real gateway on loopback ports with a real database.

Every test that takes `gw` runs once on SQLite and, when GATEWAY_TEST_DATABASE_URL
is set (CI sets it), once more on PostgreSQL, each in a fresh database (a fresh
schema on PostgreSQL).  The daemon runs in a thread with its own uvloop event loop,
exactly as `gateway serve` composes it; tests talk SMTP/LMTP to it over TCP.
"""

from __future__ import annotations

import os
import secrets
import shutil
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from gateway import settings as settings_mod
from gateway.store import db

from tests.helpers import ServerThread, lmtp_transaction, smtp_transaction, drop_schema

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("GATEWAY_TEST_DATABASE_URL")

BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


def pytest_report_header(config: Any) -> str:
    return f"gateway test databases: {', '.join(BACKENDS)}" + ("" if PG_URL else " (set GATEWAY_TEST_DATABASE_URL for PostgreSQL)")


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    schema = "t_" + secrets.token_hex(6)
    admin = sa.create_engine(db.normalise_url(PG_URL), isolation_level="AUTOCOMMIT")  # type: ignore[arg-type]
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"  # type: ignore[operator]
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            drop_schema(conn, schema)
        admin.dispose()


@pytest.fixture(scope="session")
def dkim_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's DKIM keys, made once per run the way `gateway dkim keygen` makes them."""
    from gateway import signing

    keys = tmp_path_factory.mktemp("keys")
    for domain in ("zylker.example", "lumen.example"):
        signing.generate_key(keys / f"{domain}.gw2026.pem")
    return keys


@pytest.fixture
def config_dir(tmp_path: Path, dkim_keys: Path) -> Path:
    """A copy of the shipped gateway.toml and rules/ (and DKIM keys where the rules
    expect them), for tests that change rules."""
    target = tmp_path / "conf"
    target.mkdir()
    shutil.copy(REPO / "gateway.toml", target / "gateway.toml")
    shutil.copytree(REPO / "rules", target / "rules")
    shutil.copytree(dkim_keys, target / "keys")
    return target


@pytest.fixture
def sink() -> Iterator[Any]:
    """A real SMTP server on loopback standing in for the smarthost."""
    from tests.helpers import Sink

    s = Sink()
    s.start()
    try:
        yield s
    finally:
        s.stop()


class RunningGateway:
    """A running gateway and ways to talk to it."""

    def __init__(self, config_dir: Path, database_url: str, relay_url: str = "smtp://127.0.0.1:9",
                 filing: Any = None):
        self.config_dir = config_dir
        # Composed into the daemon instead of gateway.delivery.file (tests.helpers.FailingFiling).
        self.filing = filing
        self.config = config_dir / "gateway.toml"
        self.database_url = database_url
        self.env = {
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_LMTP_LISTEN": "127.0.0.1:0",
            "GATEWAY_SMTP_LISTEN": "127.0.0.1:0",
            "GATEWAY_SUBMISSION_LISTEN": "127.0.0.1:0",
            "GATEWAY_METRICS_LISTEN": "127.0.0.1:0",
            "GATEWAY_API_LISTEN": "127.0.0.1:0",
            "GATEWAY_RELAY_URL": relay_url,
        }
        self.thread: ServerThread | None = None

    def start(self) -> "RunningGateway":
        s = settings_mod.load(self.config, environ=self.env)
        self.thread = ServerThread(s, filing=self.filing)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread:
            self.thread.stop()
            self.thread = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def app(self):  # type: ignore[no-untyped-def]
        assert self.thread
        return self.thread.app

    @property
    def engine(self) -> sa.Engine:
        return self.app.engine

    @property
    def lmtp_port(self) -> int:
        return self.app.bound["lmtp"][1]

    @property
    def smtp_port(self) -> int:
        return self.app.bound["smtp"][1]

    @property
    def submission_port(self) -> int:
        return self.app.bound["submission"][1]

    @property
    def api_port(self) -> int:
        return self.app.bound["api"][1]

    def token(self, org: str = "zylker", *, scope: str = "write", user: str | None = None,
              name: str = "test") -> str:
        """A new API token (as `gateway token create` makes one, in-process)."""
        from gateway.store import tokens

        user_id = self.app.deliveries.rules.orgs[org].users[user].id if user else None
        return self.app.database.writing(tokens.create, org, name, scope, user_id)[1]

    def api(self, token: str | None = None, **kw: Any):  # type: ignore[no-untyped-def]
        """An HTTP client of the API (/v1), with the bearer token when given."""
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}/v1", headers=headers, timeout=30, **kw)

    def submit(self, data: bytes, rcpts: list[str], *, login: str = "crm@zylker.example",
               password: str = "demo-only", mail_from: str | None = None):  # type: ignore[no-untyped-def]
        """Submit as the CRM would: EHLO, AUTH, MAIL, RCPT..., DATA. Returns the Replies."""
        from tests.helpers import submission_transaction

        return submission_transaction(self.submission_port, login, password, mail_from or login, rcpts, data)

    def lmtp(self, mail_from: str, rcpts: list[str], data: bytes, **kw: Any):  # type: ignore[no-untyped-def]
        return lmtp_transaction(self.lmtp_port, mail_from, rcpts, data, **kw)

    def smtp(self, mail_from: str, rcpts: list[str], data: bytes, **kw: Any):  # type: ignore[no-untyped-def]
        return smtp_transaction(self.smtp_port, mail_from, rcpts, data, **kw)

    def smtp_client(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30)

    def lmtp_client(self) -> smtplib.LMTP:
        client = smtplib.LMTP("127.0.0.1", self.lmtp_port, timeout=30)
        return client

    def export(self, org: str | None = None) -> dict[str, Any]:
        from gateway.export import export

        return export(self.engine, org)

    def dropbox(self, user: str) -> str:
        from gateway.routing import dropbox_address
        from gateway.store import dropboxes

        index = self.app.deliveries.rules
        org = next(o for o in index.orgs.values() if user in o.users)
        token = self.app.database.writing(dropboxes.token, org.id, org.users[user].id)
        return dropbox_address(token, org.gateway_domain)

    def cli(self, *args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env}
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", *args, "--config", str(self.config)],
            env=env, capture_output=True, input=input, timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"gateway {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}")
        return proc

    def record(self, record_id: int) -> dict[str, Any]:
        """What `gateway record show ID --json` prints (in-process; the CLI is tested on its own)."""
        import json

        from gateway import records

        return json.loads(json.dumps(records.show(self.engine, self.app.deliveries.rules, record_id)))

    def move(self, record_id: int, stage: str) -> None:
        from gateway import records

        self.app.database.writing(records.move, self.app.deliveries.rules, record_id, stage)

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


@pytest.fixture
def gw(config_dir: Path, database_url: str) -> Iterator[RunningGateway]:
    g = RunningGateway(config_dir, database_url).start()
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture
def faulty(config_dir: Path, database_url: str) -> Iterator[tuple[RunningGateway, Any]]:
    """A gateway whose filing can be made to fail: (gateway, tests.helpers.FailingFiling)."""
    from tests.helpers import FailingFiling

    faults = FailingFiling()
    g = RunningGateway(config_dir, database_url, filing=faults).start()
    try:
        yield g, faults
    finally:
        g.stop()


@pytest.fixture
def gwr(config_dir: Path, database_url: str, sink) -> Iterator[RunningGateway]:  # type: ignore[no-untyped-def]
    """The gateway relaying to the `sink` smarthost."""
    g = RunningGateway(config_dir, database_url, relay_url=f"smtp://127.0.0.1:{sink.port}").start()
    try:
        yield g
    finally:
        g.stop()
