"""gateway.toml: listeners, database, rules directory, limits, logging.

Relative paths are resolved against the folder of gateway.toml itself, so a copy
of gateway.toml with rules/ beside it runs from anywhere.  A few settings can be
overridden per run from the environment (documented in the README):

    GATEWAY_DATABASE_URL       database.url
    GATEWAY_LMTP_LISTEN        listeners.lmtp        (host:port)
    GATEWAY_SMTP_LISTEN        listeners.smtp        (host:port)
    GATEWAY_SUBMISSION_LISTEN  listeners.submission  (host:port)
    GATEWAY_RELAY_URL          relay.url             (smtp://host:port, smtps://, user:password@)
    GATEWAY_METRICS_LISTEN     listeners.metrics     (host:port: /metrics, /healthz, /readyz)
    GATEWAY_API_LISTEN         listeners.api         (host:port: the CRM's HTTP API, /v1)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.errors import ConfigError, ConfigProblem
from gateway.validation import TomlFile

ENV_OVERRIDES = {
    "GATEWAY_DATABASE_URL": ("database", "url"),
    "GATEWAY_LMTP_LISTEN": ("listeners", "lmtp"),
    "GATEWAY_SMTP_LISTEN": ("listeners", "smtp"),
    "GATEWAY_SUBMISSION_LISTEN": ("listeners", "submission"),
    "GATEWAY_RELAY_URL": ("relay", "url"),
    "GATEWAY_METRICS_LISTEN": ("listeners", "metrics"),
    "GATEWAY_API_LISTEN": ("listeners", "api"),
}

DEFAULT_MAX_MESSAGE_BYTES = 10 * 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


class Listeners(_Strict):
    lmtp: str | None = "127.0.0.1:8024"
    smtp: str | None = "127.0.0.1:8025"
    # Authenticated submission of the CRM's outbound mail (relayed, DKIM-signed).
    submission: str | None = None
    # Prometheus /metrics and the /healthz and /readyz probes.
    metrics: str | None = None
    # The CRM's HTTP API (/v1, bearer tokens per organisation: `gateway token create`).
    api: str | None = None

    @field_validator("lmtp", "smtp", "submission", "metrics", "api")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value in (None, "", "off"):
            return None
        parse_listen(value)
        return value


class Database(_Strict):
    url: str = "sqlite:///var/gateway.db"
    timeout_seconds: float = Field(10.0, gt=0, le=600)


class RulesSection(_Strict):
    directory: str = "rules"


class Limits(_Strict):
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    max_recipients: int = Field(100, ge=1, le=10000)
    workers: int = Field(4, ge=1, le=64)
    # How many messages over 1 MB are parsed at once (each costs ~8x its size).
    big_message_slots: int = Field(2, ge=1, le=64)
    # How many messages over 1 MB are held in memory at once; DATA of further big
    # messages is not read until one is answered (TCP back-pressure).
    big_messages_in_memory: int = Field(4, ge=1, le=1000)
    session_timeout_seconds: float = Field(300.0, gt=0)
    # Sessions at once, in all and per client address; beyond them 421 4.7.0.
    max_connections: int = Field(500, ge=1, le=100000)
    max_connections_per_client: int = Field(50, ge=1, le=100000)
    # A message that fails with our own (internal) error this many times is kept whole
    # in the quarantine and answered 250, so the MTA stops retrying it for days.
    quarantine_after_attempts: int = Field(5, ge=1, le=1000)
    # On SIGTERM: how long transactions under way may take to finish.
    shutdown_grace_seconds: float = Field(30.0, ge=0, le=3600)
    # Rule files are checked for changes this often (then reloaded, debounced).
    rules_poll_seconds: float = Field(1.0, ge=0, le=3600)
    # Issue 16, a loop and flood guard: per organisation, at most this many new records
    # from one sender address per window (counted in the database, so several
    # instances agree); beyond it the mail is held for review, never dropped.  0: off.
    new_records_per_sender: int = Field(20, ge=0, le=100000)
    new_records_window_minutes: float = Field(60.0, gt=0, le=10080)
    # Senders the cap does not apply to: addresses or domains (a monitoring system...).
    new_records_exempt: list[str] = Field(default_factory=list, max_length=1000)

    @field_validator("new_records_exempt")
    @classmethod
    def _exempt(cls, value: list[str]) -> list[str]:
        from gateway.addresses import normalise, normalise_domain

        return [normalise(v) if "@" in v else normalise_domain(v) for v in value]


class Submission(_Strict):
    # STARTTLS certificate chain and key (PEM). Without them there is no STARTTLS.
    tls_cert: str | None = None
    tls_key: str | None = None
    # AUTH without TLS is refused, except from loopback clients when this is true.
    auth_without_tls_on_loopback: bool = False


class Relay(_Strict):
    # The smarthost: smtp://host:port (plain, STARTTLS when offered with
    # ?starttls=required|opportunistic|off), smtps://host:port (implicit TLS);
    # user:password@ for AUTH (better given by GATEWAY_RELAY_URL than written here).
    url: str = "smtp://127.0.0.1:25"
    timeout_seconds: float = Field(60.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("expected smtp://host:port or smtps://host:port")
        return value


class Logging(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Server(_Strict):
    hostname: str = "gateway.localdomain"
    # Written by `serve`, read by `gateway reload` (which sends SIGHUP).
    pid_file: str = "var/gateway.pid"


class Postfix(_Strict):
    # The list of valid recipients for Postfix (relay_recipient_maps), rewritten on
    # start, on every rules reload and after a dropbox regenerate.
    recipient_map: str | None = None
    # Run after writing the map; {file} is replaced by its path, e.g. "postmap lmdb:{file}".
    postmap_command: str | None = None


class Events(_Strict):
    """The outbox (issue 14)."""

    # Events (and their webhook deliveries) are deleted this long after they were made.
    retention_days: float = Field(30.0, gt=0, le=3650)
    # How often the daemon looks for events other processes wrote (its own: at once).
    poll_seconds: float = Field(1.0, gt=0, le=60)


class Webhooks(_Strict):
    """Delivery of events to the [[webhooks]] of the rules."""

    # Waits before each retry; after the last, the event is failed for that endpoint.
    retry_seconds: list[float] = Field(default_factory=lambda: [5, 30, 120, 600, 1800, 3600, 10800, 21600],
                                       max_length=50)
    # An attempt that has no 2xx answer within this long has failed.
    timeout_seconds: float = Field(10.0, gt=0, le=300)
    # Attempts in flight per endpoint (one slow endpoint never holds up another).
    concurrency: int = Field(4, ge=1, le=64)

    @field_validator("retry_seconds")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError("every retry wait must be more than 0 seconds")
        return value


class Trust(_Strict):
    """Whom the gateway believes about a received message's sender (issue 16)."""

    # The authserv-ids of the organisation's own MTA: only Authentication-Results
    # headers naming one of these are read (anyone upstream can add the others).
    authserv_ids: list[str] = Field(default_factory=list, max_length=20)
    # Verify DKIM signatures ourselves too (dkimpy; a DNS lookup per signature, in a
    # worker thread).
    verify_dkim: bool = False
    # Alias mail the MTA's filter scored above this (X-Spam-Score, X-Spamd-Result ...)
    # that would open a new record is held for review; replies are filed and flagged.
    # X-Spam-Flag: YES always counts.  None: scores alone never hold.
    spam_score_review: float | None = Field(None, ge=-1000, le=1000)

    @field_validator("authserv_ids")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        ids = [v.strip().lower() for v in value]
        if any(not v or any(c.isspace() or c in ";()" for c in v) for v in ids):
            raise ValueError("an authserv-id is one token, as the MTA writes it first in Authentication-Results "
                             "(e.g. mx.zylker.example)")
        return ids


class Review(_Strict):
    """The review queue: mail held instead of filed (issue 16)."""

    # Approved and rejected messages are deleted this long after the decision.
    retention_days: float = Field(30.0, gt=0, le=3650)


class Settings(_Strict):
    server: Server = Server()
    listeners: Listeners = Listeners()
    database: Database = Database()
    rules: RulesSection = RulesSection()
    limits: Limits = Limits()
    logging: Logging = Logging()
    submission: Submission = Submission()
    relay: Relay = Relay()
    postfix: Postfix = Postfix()
    events: Events = Events()
    webhooks: Webhooks = Webhooks()
    trust: Trust = Trust()
    review: Review = Review()

    # Filled in by load(): where the file was, for resolving relative paths.
    base_dir: Path = Path(".")
    source: str = "gateway.toml"

    @property
    def rules_dir(self) -> Path:
        return resolve_path(self.base_dir, self.rules.directory)

    def path(self, value: str) -> Path:
        """A path from gateway.toml, resolved against gateway.toml's folder."""
        return resolve_path(self.base_dir, value)

    @property
    def database_url(self) -> str:
        return resolve_database_url(self.base_dir, self.database.url)


def resolve_path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def resolve_database_url(base: Path, url: str) -> str:
    """sqlite:///relative.db is relative to gateway.toml's folder; sqlite:////abs stays."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        rest = url[len(prefix):]
        path, sep, query = rest.partition("?")
        return prefix + str(resolve_path(base, path).resolve()) + sep + query
    return url


def load(path: str | Path, environ: dict[str, str] | None = None) -> Settings:
    path = Path(path)
    environ = dict(os.environ if environ is None else environ)
    toml = TomlFile(path, str(path))
    data = toml.data
    problems: list[ConfigProblem] = []
    for var, (section, key) in ENV_OVERRIDES.items():
        value = environ.get(var)
        if value is None or value == "":
            continue
        if key in ("lmtp", "smtp", "submission", "metrics") and value not in ("off",):
            try:
                parse_listen(value)
            except ValueError as exc:
                problems.append(ConfigProblem(f"environment {var}", f"{section}.{key}", None, str(exc)))
                continue
        data.setdefault(section, {})[key] = value
    if problems:
        raise ConfigError(problems)
    data["base_dir"] = path.resolve().parent
    data["source"] = str(path)
    return toml.validate(Settings)
