"""Read an administrator-edited TOML file into a pydantic model; check the files the
configuration names (`gateway check`).

Every problem comes back as a ConfigProblem naming the file, the key path and the
line, all at once (pydantic reports every error, not just the first).
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.errors import ConfigError, ConfigProblem
from gateway.tomlloc import LineIndex, dotted

M = TypeVar("M", bound=BaseModel)


class TomlFile:
    """A TOML file's text, data and line index, for validation and later checks."""

    def __init__(self, path: Path, shown_as: str):
        self.path = path
        self.shown_as = shown_as
        try:
            self.text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([ConfigProblem(shown_as, "", None, f"cannot read: {exc}")]) from exc
        try:
            self.data: dict[str, Any] = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            line = _decode_error_line(str(exc))
            raise ConfigError([ConfigProblem(shown_as, "", line, f"invalid TOML: {exc}")]) from exc
        self._lines = LineIndex(self.text)

    def problem(self, path: Sequence[str | int], message: str) -> ConfigProblem:
        return ConfigProblem(self.shown_as, dotted(path), self._lines.line_of(path), message)

    def validate(self, model: type[M], context: dict[str, Any] | None = None) -> M:
        try:
            return model.model_validate(self.data, context=context)
        except ValidationError as exc:
            problems = []
            for err in exc.errors(include_url=False):
                loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
                problems.append(self.problem(loc, _message(err)))
            raise ConfigError(problems) from None


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg


def _decode_error_line(text: str) -> int | None:
    # tomllib: "Expected '=' after a key in a key/value pair (at line 3, column 5)"
    import re

    m = re.search(r"at line (\d+)", text)
    return int(m.group(1)) if m else None


# --- `gateway check`: the files the configuration names ------------------------------
#
# Validating the TOML is not enough: a DKIM key that is missing, unreadable or not a
# key, or a certificate that does not match its key, used to show up only when mail
# flowed (as 451 4.3.0 "internal error" at relay time, or a traceback at start).  The
# check opens every such file the way serve will and names each problem with the
# setting that points at it, the file, and the fix.

if TYPE_CHECKING:
    from gateway.rules.index import DkimEntry, RuleIndex
    from gateway.settings import Settings

# A certificate that ends this soon is worth a warning (ACME renews at 30 days left).
CERT_EXPIRY_WARNING_DAYS = 14


@dataclass
class CheckReport:
    """Errors make `check` exit 1 (and `serve` refuse to start); warnings do not,
    unless `check --strict`."""

    errors: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigProblem] = field(default_factory=list)
    settings: "Settings | None" = None
    rules: "RuleIndex | None" = None
    database: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def strict(self) -> None:
        self.errors += self.warnings
        self.warnings = []


def check_configuration(config: Path, *, database: bool = True, environ: dict[str, str] | None = None) -> CheckReport:
    """Everything `gateway check` looks at; nothing is written anywhere.

    `database`: also open the database read-only and compare its schema revision
    (serve skips that: it migrates the database itself)."""
    from gateway import settings as settings_mod
    from gateway.rules.loader import load_rules

    report = CheckReport()
    try:
        s = settings_mod.load(config, environ)
    except ConfigError as exc:
        report.errors += exc.problems
        return report
    report.settings = s
    toml = TomlFile(Path(s.source), s.source)
    try:
        report.rules = load_rules(s.rules_dir)
    except ConfigError as exc:
        report.errors += exc.problems
    if report.rules is not None:
        _check_dkim(report.rules, report)
        _check_webhook_secrets(report.rules, report, environ)
    _check_tls(s, toml, report, environ)
    _check_writable(s, toml, report, environ)
    if database:
        _check_database(s, toml, report, environ)
    return report


def problem_json(problem: ConfigProblem) -> dict[str, Any]:
    return {"file": problem.file, "line": problem.line, "key": problem.key, "message": problem.message}


def _env_or_line(toml: TomlFile, path: tuple[str, str], var: str | None,
                 environ: dict[str, str] | None) -> Callable[[str], ConfigProblem]:
    """A maker of problems located where the setting came from: the environment
    variable that overrides it, or its line in gateway.toml."""
    env = os.environ if environ is None else environ
    if var and env.get(var):
        return lambda message: ConfigProblem(f"environment {var}", ".".join(path), None, message)
    return lambda message: toml.problem(path, message)


# DKIM ----------------------------------------------------------------------------------


def _check_dkim(index: "RuleIndex", report: CheckReport) -> None:
    # index.files and index.orgs are in the same order (one organisation per file).
    for name, org in zip(index.files, index.orgs.values()):
        toml = TomlFile(Path(name), name)
        for i, entry in enumerate(org.dkim.values()):
            for severity, message in dkim_key_problems(entry):
                found = toml.problem(("dkim", i, "key_file"), message)
                (report.errors if severity == "error" else report.warnings).append(found)


# Webhook secrets ------------------------------------------------------------------------


def _check_webhook_secrets(index: "RuleIndex", report: CheckReport, environ: dict[str, str] | None) -> None:
    """A webhook whose secret cannot be read is a warning, as a missing DKIM key is:
    mail flows, its events wait (pending) until the secret is there."""
    from gateway.webhooks import read_secret

    for name, org in zip(index.files, index.orgs.values()):
        toml = TomlFile(Path(name), name)
        for i, hook in enumerate(org.webhooks):
            _, problem = read_secret(hook, environ)
            if problem:
                key = "secret_env" if hook.secret_env else "secret_file"
                report.warnings.append(toml.problem(("webhooks", i, key), f"{problem}; its events wait until then"))


def dkim_key_problems(entry: "DkimEntry") -> list[tuple[str, str]]:
    """What is wrong with a DKIM key file, as (error|warning, message with the fix)."""
    from gateway import signing

    path = entry.key_path
    keygen = f"gateway dkim keygen {entry.domain} --selector {entry.selector}"
    renew = f"write a new key with `{keygen} --force` and publish the TXT record it prints"
    try:
        st = path.stat()
    except FileNotFoundError:
        return [("warning", f"DKIM key {path} does not exist, so mail from {entry.domain} cannot be signed (it is "
                            f"deferred, 451 4.3.5): run `{keygen}` and publish the TXT record it prints")]
    except OSError as exc:
        return [("error", f"cannot read DKIM key {path}: {exc.strerror}: let the gateway's user reach it "
                          "(directory permissions)")]
    if not stat.S_ISREG(st.st_mode):
        return [("error", f"DKIM key {path} is not a regular file: point key_file at the key, or {renew}")]
    out: list[tuple[str, str]] = []
    if st.st_mode & 0o177:
        out.append(("error", f"DKIM key {path} has mode {stat.S_IMODE(st.st_mode):04o}; a private key must be "
                             f"readable by its owner only: chmod 600 {path}"))
    try:
        data = path.read_bytes()
    except OSError as exc:
        return out + [("error", f"cannot read DKIM key {path}: {exc.strerror}: make it readable by the user the "
                                f"gateway runs as (chown that user, chmod 600)")]
    key, problem = _private_key(data)
    if problem:
        return out + [("error", f"DKIM key {path} {problem}: {renew}")]
    from cryptography.hazmat.primitives.asymmetric import rsa

    if not isinstance(key, rsa.RSAPrivateKey):
        return out + [("error", f"DKIM key {path} is not an RSA key ({type(key).__name__}); the gateway signs "
                                f"with RSA: {renew}")]
    if key.key_size < 1024:
        return out + [("error", f"DKIM key {path} has {key.key_size} bits; receivers ignore signatures with less "
                                f"than 1024 (RFC 8301): {renew}")]
    try:
        signing.sign(b"From: check@" + entry.domain.encode() + b"\r\nSubject: check\r\n\r\ncheck\r\n",
                     entry.domain, entry.selector, data)
    except Exception as exc:  # dkimpy's own errors have no common base worth naming
        out.append(("error", f"DKIM key {path} cannot sign ({type(exc).__name__}: {exc}): {renew}"))
    return out


def _private_key(data: bytes) -> tuple[Any, str | None]:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(data, password=None), None
    except TypeError:
        return None, "is encrypted with a passphrase; the gateway cannot prompt for one"
    except (ValueError, UnsupportedAlgorithm):
        return None, "is not a PEM private key"


# TLS -----------------------------------------------------------------------------------


def _check_tls(s: "Settings", toml: TomlFile, report: CheckReport, environ: dict[str, str] | None) -> None:
    sub = s.submission
    cert_at = _env_or_line(toml, ("submission", "tls_cert"), None, environ)
    key_at = _env_or_line(toml, ("submission", "tls_key"), None, environ)
    if bool(sub.tls_cert) != bool(sub.tls_key):
        given, at = ("tls_cert", cert_at) if sub.tls_cert else ("tls_key", key_at)
        missing = "tls_key" if sub.tls_cert else "tls_cert"
        report.errors.append(at(f"submission.{given} is set without submission.{missing}: STARTTLS needs both the "
                                "certificate chain and its private key; set both, or neither"))
        return
    if not sub.tls_cert or not sub.tls_key:
        listen_at = _env_or_line(toml, ("listeners", "submission"), "GATEWAY_SUBMISSION_LISTEN", environ)
        if s.listeners.submission and not sub.auth_without_tls_on_loopback:
            report.warnings.append(listen_at(
                "the submission listener has no STARTTLS (submission.tls_cert, submission.tls_key) and "
                "auth_without_tls_on_loopback is false, so no client can log in: configure the certificate"))
        return
    cert_path, key_path = s.path(sub.tls_cert), s.path(sub.tls_key)
    certs = _read_certificates(cert_path, cert_at, report)
    key = _read_tls_key(key_path, key_at, report)
    if certs is None or key is None:
        return
    from cryptography.hazmat.primitives import serialization

    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    leaf = certs[0]
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        report.errors.append(key_at(f"the TLS key {key_path} does not match the certificate {cert_path} "
                                    f"({leaf.subject.rfc4514_string()}): use the key the certificate was issued "
                                    "for (your ACME client writes them side by side)"))
        return
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # As serve loads them; a password callback, so nothing ever prompts.
        context.load_cert_chain(cert_path, key_path, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        report.errors.append(cert_at(f"STARTTLS cannot use {cert_path} with {key_path}: {exc}"))


def _read_certificates(path: Path, at: Callable[[str], ConfigProblem], report: CheckReport) -> list[Any] | None:
    from datetime import datetime, timedelta, timezone

    from cryptography import x509

    data = _read(path, "TLS certificate", at, report)
    if data is None:
        return None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        report.errors.append(at(f"TLS certificate {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----): "
                                "point tls_cert at the full chain (e.g. fullchain.pem)"))
        return None
    leaf = certs[0]
    now = datetime.now(timezone.utc)
    if leaf.not_valid_after_utc <= now:
        report.errors.append(at(f"TLS certificate {path} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: "
                                "renew it"))
    elif leaf.not_valid_before_utc > now:
        report.errors.append(at(f"TLS certificate {path} is valid only from "
                                f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: check the clock, or use the "
                                "current certificate"))
    elif leaf.not_valid_after_utc - now < timedelta(days=CERT_EXPIRY_WARNING_DAYS):
        report.warnings.append(at(f"TLS certificate {path} expires on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} "
                                  "UTC: renew it"))
    return certs


def _read_tls_key(path: Path, at: Callable[[str], ConfigProblem], report: CheckReport) -> Any:
    data = _read(path, "TLS key", at, report)
    if data is None:
        return None
    key, problem = _private_key(data)
    if problem:
        report.errors.append(at(f"TLS key {path} {problem}: point tls_key at the certificate's private key "
                                "(e.g. privkey.pem), unencrypted"))
    return key


def _read(path: Path, what: str, at: Callable[[str], ConfigProblem], report: CheckReport) -> bytes | None:
    try:
        if not path.is_file() and path.exists():
            raise IsADirectoryError(21, "not a regular file")
        return path.read_bytes()
    except FileNotFoundError:
        report.errors.append(at(f"{what} {path} does not exist: fix the path (relative paths start at "
                                "gateway.toml's folder)"))
    except OSError as exc:
        report.errors.append(at(f"cannot read {what} {path}: {exc.strerror}: make it readable by the user the "
                                "gateway runs as"))
    return None


# Places serve writes to -------------------------------------------------------------------


def _check_writable(s: "Settings", toml: TomlFile, report: CheckReport, environ: dict[str, str] | None) -> None:
    from sqlalchemy.engine import make_url

    from gateway.store.db import normalise_url

    places: list[tuple[tuple[str, str], Path]] = [(("server", "pid_file"), s.path(s.server.pid_file))]
    if s.postfix.recipient_map:
        places.append((("postfix", "recipient_map"), s.path(s.postfix.recipient_map)))
    try:
        url = make_url(normalise_url(s.database_url))
    except Exception:
        url = None
    if url is not None and url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        places.append((("database", "url"), Path(url.database)))
    for key, path in places:
        reason = _cannot_write(path, directory_too=key == ("database", "url"))
        if reason:
            at = _env_or_line(toml, key, "GATEWAY_DATABASE_URL" if key == ("database", "url") else None, environ)
            report.warnings.append(at(f"serve cannot write {path}: {reason}: fix the path, or make it writable by "
                                      "the user the gateway runs as"))


def _cannot_write(path: Path, directory_too: bool) -> str | None:
    """Why this user could not create or write `path` (None: it could).  SQLite also
    creates -wal and -shm files beside the database: its folder must be writable."""
    if path.exists():
        if path.is_dir():
            return "it is a directory"
        if not os.access(path, os.W_OK):
            return "the file is not writable"
        if directory_too and not os.access(path.parent, os.W_OK | os.X_OK):
            return f"its folder {path.parent} is not writable (SQLite keeps -wal and -shm files there)"
        return None
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the folder {parent} is not writable"
    return None


# The database -----------------------------------------------------------------------------


def _check_database(s: "Settings", toml: TomlFile, report: CheckReport, environ: dict[str, str] | None) -> None:
    """Reachable and at our schema revision; read-only (check never migrates).  A
    missing or older schema is a warning: serve (or `gateway db upgrade`) brings it
    up to date; a newer one is an error: this gateway cannot use it."""
    import sqlalchemy.exc

    from gateway.store import db

    at = _env_or_line(toml, ("database", "url"), "GATEWAY_DATABASE_URL", environ)
    report.database = {"url": safe_url(s.database_url), "revision": None}
    try:
        engine = db.make_readonly_engine(s.database_url, s.database.timeout_seconds)
    except db.SchemaNotCurrent as exc:
        report.database["state"] = exc.state
        report.warnings.append(at(str(exc)))
        return
    try:
        report.database["revision"] = db.require_current_schema(engine)
        report.database["state"] = "current"
    except db.SchemaNotCurrent as exc:
        report.database["state"] = exc.state
        report.database["revision"] = db.current_revision(engine)
        (report.errors if exc.state == "ahead" else report.warnings).append(at(str(exc)))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        report.database["state"] = "unreachable"
        first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
        report.errors.append(at(f"cannot open the database {safe_url(s.database_url)}: {first}: check database.url "
                                "(or GATEWAY_DATABASE_URL), that the server runs and that this user may connect"))
    finally:
        engine.dispose()


def safe_url(url: str) -> str:
    """The URL with its password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable URL)"
