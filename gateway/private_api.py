"""Every private or undocumented library API the gateway leans on, in one list.

Each entry names the distribution, the attribute as ``module:Qualified.name``, the
code of ours that uses it, why, and the shape we rely on.  tests/unit/test_private_api.py
checks every entry against the installed versions, so an upgrade that moves one
fails there, by name, instead of deep inside a delivery.  pyproject.toml caps each
distribution listed here (other than the standard library) below its next minor
release; lifting a cap means running that test on the new release first.

``shape`` is what the test compares:

* ``"(self, arg)"`` / ``"async (self)"``: a callable's parameter names, kinds and
  defaults (annotations ignored), and whether it is a coroutine function;
* ``"class"``: a class; ``"attribute"``: present on the class (or module);
* ``"instance attribute"``: set on instances only; the test builds a live one.

``kind``: ``private`` (a ``_name``), ``internal`` (no underscore, but undocumented
or documented as internals only), ``replaced`` (a method we replace wholesale:
``source_sha256`` pins the library's version of it, so a change there, often a
security fix such as aiosmtpd 1.4.5's SMTP smuggling one, is read and mirrored),
``public`` (public, but new and imported under ``except Exception``, so a move
would otherwise degrade silently).

This module only lists; the modules named in ``where`` use the APIs directly.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

__all__ = ["PrivateUse", "PRIVATE_USES", "resolve", "shape_of"]


@dataclass(frozen=True)
class PrivateUse:
    package: str  # distribution name as in pyproject.toml; "python" = the standard library
    target: str  # "module:Qualified.name"
    where: str  # our code that uses it
    why: str
    shape: str
    kind: str = "private"
    source_sha256: str | None = None  # for kind "replaced": sha256 of inspect.getsource()


PRIVATE_USES: tuple[PrivateUse, ...] = (
    # --- aiosmtpd: only gateway/smtp/server.py (the protocol classes) uses these ---------
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP.smtp_DATA",
        "gateway/smtp/server.py GatewayProtocol.smtp_DATA",
        "replaced by a chunked reader with per-recipient LMTP replies and RFC 3463 codes; "
        "it mirrors aiosmtpd's checks (HELO, AUTH, RCPT, argument) and smuggling rule",
        "async (self, arg)", kind="replaced",
        source_sha256="3a33f30d3fd6d02f39c7d78a08288bffea9170525b62e2161568041ae7e018df"),
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP._reader",
        "gateway/smtp/server.py GatewayProtocol.smtp_DATA -> read_data",
        "the session's asyncio.StreamReader, read in 256 KiB chunks instead of line by line",
        "instance attribute"),
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP._reset_timeout",
        "gateway/smtp/server.py GatewayProtocol.smtp_DATA (read_data's on_progress)",
        "restart the idle timer per DATA chunk (RFC 5321 4.5.3.2.6)",
        "(self, duration=None)"),
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP._call_handler_hook",
        "gateway/smtp/server.py GatewayProtocol.smtp_DATA",
        "call the handler's handle_DATA the way aiosmtpd's own smtp_DATA does",
        "async (self, command, *args)"),
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP._set_post_data_state",
        "gateway/smtp/server.py GatewayProtocol.smtp_DATA; GatewayProtocol._set_post_data_state "
        "(override)",
        "a fresh envelope after DATA; the override ends our transaction with aiosmtpd's envelope "
        "(submission gives its quota tokens back), relying on aiosmtpd calling it from "
        "_set_rset_state (RSET, EHLO, HELO, STARTTLS)",
        "(self)"),
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP._set_rset_state",
        "gateway/smtp/server.py GatewayProtocol._set_post_data_state (relies on it)",
        "RSET/EHLO must reach _set_post_data_state, or a transaction outlives its envelope "
        "and reserved quota tokens leak",
        "(self)"),
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP._getaddr",
        "gateway/smtp/server.py GatewayProtocol._getaddr (override)",
        "a regex fast path for plain <local@domain> paths; anything else goes to aiosmtpd's",
        "(self, arg)"),
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP._handle_client",
        "gateway/smtp/server.py GatewayProtocol._handle_client (override)",
        "421 instead of the greeting when over the connection limits (RFC 5321 3.1)",
        "async (self)"),
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP._timeout_cb",
        "gateway/smtp/server.py GatewayProtocol._timeout_cb (override)",
        "say 421 4.4.2 before aiosmtpd closes an idle session silently (RFC 5321 4.5.3.2)",
        "(self)"),
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP._smtp_methods",
        "gateway/smtp/server.py GatewayProtocol.__init__ (_Commands)",
        "the command table (name -> bound smtp_* method) that _handle_client looks up with "
        ".get(command) for every line, and HELP reads; wrapped so a line with a NUL octet is "
        "refused 501 5.5.2 before any command sees it",
        "instance attribute"),
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP._auth_require_tls",
        "gateway/smtp/server.py SubmissionSMTP.connection_made",
        "allow AUTH without TLS from loopback when the configuration says so",
        "instance attribute"),
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP._authenticate",
        "gateway/smtp/server.py SubmissionSMTP._authenticate (override)",
        "auth_PLAIN/auth_LOGIN call it synchronously with the decoded credentials; ours only "
        "keeps them, so the scrypt check is awaited off the event loop after",
        "(self, mechanism, auth_data)"),
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP.check_helo_needed",
        "gateway/smtp/server.py GatewayProtocol.smtp_DATA",
        "the same 503 as aiosmtpd's DATA when no HELO/EHLO came first",
        "async (self, helo='HELO')", kind="internal"),
    PrivateUse(
        "aiosmtpd", "aiosmtpd.smtp:SMTP.check_auth_needed",
        "gateway/smtp/server.py GatewayProtocol.smtp_DATA",
        "the same 530 as aiosmtpd's DATA when AUTH is required and missing",
        "async (self, caller_method)", kind="internal"),
    # --- the standard library ---------------------------------------------------------
    PrivateUse(
        "python", "asyncio:StreamReader._buffer",
        "gateway/smtp/server.py _unread",
        "StreamReader has no unread: pipelined commands after the final dot are put back "
        "at the front of its bytearray buffer (RFC 2920 3.1)",
        "instance attribute"),
    PrivateUse(
        "python", "codecs:CodecInfo._is_text_encoding",
        "gateway/parse/charsets.py codecs_for",
        "refuse bytes-to-bytes codecs (base64, zlib, ...) named as a MIME charset; read with "
        "getattr(..., True), so if it vanished every codec would pass silently",
        "attribute"),
    # --- SQLAlchemy: gateway/store/prepared.py runs compiled statements on the cursor ---
    PrivateUse(
        "SQLAlchemy", "sqlalchemy.sql.compiler:SQLCompiler._bind_processors",
        "gateway/store/prepared.py Prepared.__init__",
        "the compiled statement's type conversions (DateTime, JSON, LargeBinary) by bind name, "
        "applied by hand because the values bypass SQLAlchemy's execution context",
        "attribute"),
    PrivateUse(
        "SQLAlchemy", "sqlalchemy.sql.compiler:SQLCompiler.positiontup",
        "gateway/store/prepared.py Prepared.__init__",
        "parameter order for positional paramstyles (psycopg's %s is 'format')",
        "instance attribute", kind="internal"),
    PrivateUse(
        "SQLAlchemy", "sqlalchemy.sql.compiler:SQLCompiler.positional",
        "gateway/store/prepared.py Prepared.__init__",
        "whether the dialect's paramstyle is positional",
        "instance attribute", kind="internal"),
    PrivateUse(
        "SQLAlchemy", "sqlalchemy.sql.compiler:SQLCompiler.binds",
        "gateway/store/prepared.py Prepared.__init__",
        "the names of the statement's bind parameters",
        "instance attribute", kind="internal"),
    PrivateUse(
        "SQLAlchemy", "sqlalchemy.sql.compiler:SQLCompiler.insert_prefetch",
        "gateway/store/prepared.py Prepared.__init__",
        "refuse statements needing Python-side column defaults; read with getattr(..., None), "
        "so if it vanished such statements would pass silently",
        "instance attribute", kind="internal"),
    PrivateUse(
        "SQLAlchemy", "sqlalchemy.sql.compiler:SQLCompiler.update_prefetch",
        "gateway/store/prepared.py Prepared.__init__",
        "as insert_prefetch, for UPDATE",
        "instance attribute", kind="internal"),
    PrivateUse(
        "SQLAlchemy", "sqlalchemy.pool.base:Pool._invalidate",
        "gateway/store/prepared.py _wrap",
        "a connection lost under a statement run on the driver's cursor: the pool drops it and "
        "every older one, as SQLAlchemy does for its own statements (Connection._handle_dbapi_exception)",
        "(self, connection, exception=None, _checkin=True)"),
    # --- psycopg: gateway/store/prepared.py, pipeline mode over a write transaction ------
    PrivateUse(
        "psycopg", "psycopg._connection_base:BaseConnection._get_tx_start_command",
        "gateway/store/prepared.py _enter_pipeline",
        "the BEGIN psycopg would send (with the connection's isolation level), queued by us in "
        "the pipeline: psycopg's own BEGIN syncs the pipeline, a round trip of its own",
        "(self)"),
    # --- uvicorn: gateway/api/server.py runs it on the daemon's loop -----------------------
    PrivateUse(
        "uvicorn", "uvicorn.server:Server.main_loop",
        "gateway/api/server.py _Server.main_loop",
        "replaced by the same tick loop woken at once by stop(): uvicorn's waits for its next "
        "0.1 s tick (every stop of the daemon, every test's)",
        "async (self)", kind="replaced",
        source_sha256="afccb353a119333f206ffa120abc9efdc46a1ac60fe93485acfda2a271d75a62"),
    PrivateUse(
        "uvicorn", "uvicorn.server:Server.shutdown",
        "gateway/api/server.py _Server.shutdown",
        "replaced by the same steps, its fixed 0.1 s pause only taken when connections are open",
        "async (self, sockets=None)", kind="replaced",
        source_sha256="5d01b8b1f116a786a70e30a7e12ecc909e30547d79f87de08bcedaa12a920243"),
    PrivateUse(
        "uvicorn", "uvicorn.server:Server._wait_tasks_to_complete",
        "gateway/api/server.py _Server.shutdown",
        "uvicorn's wait for open connections and running tasks, called as its shutdown does",
        "async (self)"),
    PrivateUse(
        "uvicorn", "uvicorn.server:Server.on_tick",
        "gateway/api/server.py _Server.main_loop",
        "one tick: refreshes the Date header, True once should_exit is set",
        "async (self, counter)", kind="internal"),
    # --- prometheus-client: gateway/probes.py serves /metrics, /healthz, /readyz ---------
    PrivateUse(
        "prometheus-client", "prometheus_client.exposition:_SilentHandler",
        "gateway/probes.py ProbeServer",
        "a WSGI request handler that does not log every scrape and probe to stderr",
        "class"),
    PrivateUse(
        "prometheus-client", "prometheus_client.exposition:ThreadingWSGIServer",
        "gateway/probes.py ProbeServer",
        "a threading WSGI server, so a slow scrape never blocks a liveness probe",
        "class", kind="internal"),
    # --- mail-parser -------------------------------------------------------------------
    PrivateUse(
        "mail-parser", "mailparser.dates:parse_mail_date",
        "gateway/parse/fields.py parse_date",
        "RFC 5322 date interpreter, new in mail-parser 4.8; imported under except Exception "
        "with a stdlib fallback, so a move would silently lose obsolete-syntax dates",
        "(raw)", kind="public"),
)


def resolve(target: str) -> Any:
    """The object ``module:Qualified.name`` names; AttributeError/ImportError if gone."""
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = inspect.getattr_static(obj, part) if isinstance(obj, type) else getattr(obj, part)
    return obj


def shape_of(obj: Any) -> str:
    """``"async (self, duration=None)"``: parameter names, kinds and defaults of a callable."""
    func = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
    parts: list[str] = []
    star_done = False
    for param in inspect.signature(func).parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            parts.append(f"*{param.name}")
            star_done = True
        elif param.kind is param.VAR_KEYWORD:
            parts.append(f"**{param.name}")
        else:
            if param.kind is param.KEYWORD_ONLY and not star_done:
                parts.append("*")
                star_done = True
            # Positional-only parameters render like any other: we pass them positionally.
            parts.append(param.name if param.default is param.empty else f"{param.name}={param.default!r}")
    prefix = "async " if inspect.iscoroutinefunction(func) else ""
    return f"{prefix}({', '.join(parts)})"
