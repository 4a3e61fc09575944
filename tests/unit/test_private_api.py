"""The private library APIs of gateway/private_api.py still exist, with the shape we use.

A failure here means an upgrade moved something the gateway leans on: read the
entry's ``where`` and ``why``, adapt that code, then update the entry (and the cap
in pyproject.toml).  Nothing here talks to the network or a database.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import importlib.metadata
import inspect
import socket
import tomllib
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import pytest
from packaging.requirements import Requirement

from gateway.private_api import PRIVATE_USES, PrivateUse, resolve, shape_of

REPO = Path(__file__).resolve().parents[2]


# --- live objects, for attributes that exist on instances only -------------------------

class _NoHooks:
    pass


async def _smtp_session() -> Any:
    """An aiosmtpd SMTP session on a socket pair, after its greeting; closed again."""
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    server_sock, client_sock = socket.socketpair()
    protocol = SMTP(_NoHooks(), hostname="private-api.test", auth_require_tls=True)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, server_sock)
    reader, writer = await asyncio.open_connection(sock=client_sock)
    try:
        greeting = await asyncio.wait_for(reader.readline(), 5)
        assert greeting.startswith(b"220 "), greeting
        writer.write(b"QUIT\r\n")
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"221")
    finally:
        writer.close()
        await writer.wait_closed()
        transport.close()
        for _ in range(10):  # let connection_lost run and the handler task finish
            await asyncio.sleep(0)
    return protocol


async def _stream_reader() -> asyncio.StreamReader:
    return asyncio.StreamReader()


def _compiled_insert() -> Any:
    """A compiled INSERT like gateway/store/prepared.py makes (SQLite: positional)."""
    from sqlalchemy import Column, DateTime, Integer, MetaData, Table, insert
    from sqlalchemy.dialects import sqlite

    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("at", DateTime))
    return insert(table).compile(dialect=sqlite.dialect(), column_keys=["id", "at"])


LIVE: dict[str, Callable[[], Any]] = {
    "aiosmtpd.smtp:SMTP": lambda: asyncio.run(_smtp_session()),
    "asyncio:StreamReader": lambda: asyncio.run(_stream_reader()),
    "sqlalchemy.sql.compiler:SQLCompiler": _compiled_insert,
}


def _owner_and_name(use: PrivateUse) -> tuple[str, str]:
    owner, _, name = use.target.rpartition(".")
    return owner, name


def _explain(use: PrivateUse, problem: str) -> str:
    version = "" if use.package == "python" else f" {use.package} {importlib.metadata.version(use.package)}:"
    return (f"{use.target} ({use.kind}) moved:{version} {problem}\n"
            f"  used by: {use.where}\n  for: {use.why}\n"
            "  adapt that code, then gateway/private_api.py and the cap in pyproject.toml")


# --- every entry: it exists and has the shape we use ---------------------------------

@pytest.mark.parametrize("use", PRIVATE_USES, ids=lambda use: use.target)
def test_private_api_still_there(use: PrivateUse) -> None:
    if use.shape == "instance attribute":
        owner, name = _owner_and_name(use)
        instance = LIVE[owner]()
        assert hasattr(instance, name), _explain(use, f"a live {owner} has no attribute {name!r}")
        return
    try:
        obj = resolve(use.target)
    except (ImportError, AttributeError) as exc:
        pytest.fail(_explain(use, f"cannot resolve it ({exc!r})"))
    if use.shape == "class":
        assert isinstance(obj, type), _explain(use, f"no longer a class: {obj!r}")
    elif use.shape != "attribute":
        assert callable(obj), _explain(use, f"no longer callable: {obj!r}")
        assert shape_of(obj) == use.shape, _explain(use, f"signature is now {shape_of(obj)}, we use {use.shape}")
    if use.source_sha256 is not None:
        digest = hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
        assert digest == use.source_sha256, _explain(
            use, f"its source changed (sha256 {digest}): we replace it wholesale, so read the "
                 "library's diff, mirror any fix into our replacement, then update source_sha256")


def test_every_instance_attribute_has_a_live_check() -> None:
    owners = {_owner_and_name(use)[0] for use in PRIVATE_USES if use.shape == "instance attribute"}
    assert owners <= LIVE.keys(), f"add a factory to LIVE for {sorted(owners - LIVE.keys())}"


def test_entries_are_well_formed() -> None:
    targets = [use.target for use in PRIVATE_USES]
    assert len(targets) == len(set(targets)), "one entry per attribute"
    for use in PRIVATE_USES:
        assert ":" in use.target and use.where and use.why, use
        assert use.kind in {"private", "internal", "replaced", "public"}, use
        assert (use.kind == "replaced") == (use.source_sha256 is not None), use


# --- the behaviour behind the names ------------------------------------------------------

def test_aiosmtpd_session_internals_behave_as_used() -> None:
    from aiosmtpd.smtp import SMTP

    session = LIVE["aiosmtpd.smtp:SMTP"]()
    # smtp_DATA reads the message from it in chunks, and _unread prepends to its buffer.
    assert isinstance(session._reader, asyncio.StreamReader)
    assert isinstance(session._reader._buffer, bytearray)
    # server.py wraps the command table; aiosmtpd must still build it as a dict of the
    # smtp_* methods and look every command line up with .get (which _Commands overrides).
    assert isinstance(session._smtp_methods, dict)
    assert {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"} <= session._smtp_methods.keys()
    assert "self._smtp_methods.get(command)" in inspect.getsource(SMTP._handle_client)
    # SubmissionSMTP flips it for loopback AUTH; aiosmtpd must still consult it.
    assert session._auth_require_tls is True
    assert "self._auth_require_tls" in inspect.getsource(SMTP.smtp_AUTH)
    # SubmissionSMTP._authenticate only keeps the credentials auth_PLAIN/auth_LOGIN decoded.
    for mechanism in (SMTP.auth_PLAIN, SMTP.auth_LOGIN):
        assert "self._authenticate(" in inspect.getsource(mechanism), mechanism

    # RSET/EHLO reach _set_post_data_state (GatewayProtocol ends the transaction there).
    calls: list[str] = []

    class Probe(SMTP):
        def _set_post_data_state(self) -> None:
            calls.append("post_data")

    Probe._set_rset_state(object.__new__(Probe))
    assert calls == ["post_data"], "aiosmtpd's _set_rset_state no longer calls _set_post_data_state"


def test_stream_reader_buffer_prepend_is_read_first() -> None:
    async def run() -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(b"QUIT\r\n")
        reader._buffer[:0] = b"RSET\r\n"  # what gateway/smtp/server.py _unread does
        reader.feed_eof()
        return await reader.read()

    assert asyncio.run(run()) == b"RSET\r\nQUIT\r\n"


def test_codec_text_flag() -> None:
    assert codecs.lookup("utf-8")._is_text_encoding is True  # type: ignore[attr-defined]
    assert codecs.lookup("base64")._is_text_encoding is False  # type: ignore[attr-defined]


def test_sqlalchemy_compiled_internals_behave_as_used() -> None:
    compiled = _compiled_insert()
    processors = compiled._bind_processors
    assert isinstance(processors, Mapping)
    assert callable(processors.get("at")), "SQLite's DateTime bind processor is gone from _bind_processors"
    assert processors["at"](datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02 03:04:05.000000"
    assert compiled.positional is True and list(compiled.positiontup) == ["id", "at"]
    assert set(compiled.binds) == {"id", "at"}
    assert not compiled.insert_prefetch and not compiled.update_prefetch


def test_sqlalchemy_prefetch_still_reports_python_defaults() -> None:
    # prepared.py refuses statements whose defaults SQLAlchemy computes at execution.
    from sqlalchemy import Column, Integer, MetaData, Table, insert
    from sqlalchemy.dialects import sqlite

    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("n", Integer, default=lambda: 1))
    compiled = insert(table).compile(dialect=sqlite.dialect(), column_keys=["id"])
    assert [column.name for column in compiled.insert_prefetch] == ["n"]


def test_prometheus_server_classes() -> None:
    assert issubclass(resolve("prometheus_client.exposition:_SilentHandler"), WSGIRequestHandler)
    assert issubclass(resolve("prometheus_client.exposition:ThreadingWSGIServer"), WSGIServer)


def test_mailparser_dates_result() -> None:
    result = resolve("mailparser.dates:parse_mail_date")("Mon, 1 Jan 2024 10:00:00 +0200")
    assert result.value == datetime(2024, 1, 1, 8, 0, tzinfo=timezone.utc)


# --- pyproject.toml caps what we lean on --------------------------------------------------

def _requirements() -> dict[str, Requirement]:
    with open(REPO / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return {Requirement(dep).name.lower(): Requirement(dep) for dep in deps}


@pytest.mark.parametrize("package", sorted({use.package for use in PRIVATE_USES if use.package != "python"}))
def test_pyproject_caps_packages_whose_internals_we_use(package: str) -> None:
    requirement = _requirements().get(package.lower())
    assert requirement is not None, f"{package} is used but not a dependency in pyproject.toml"
    kinds = {use.kind for use in PRIVATE_USES if use.package == package}
    if kinds != {"public"}:
        assert any(spec.operator == "<" for spec in requirement.specifier), (
            f"{package}: we use its internals ({sorted(kinds)}), so pyproject.toml needs an upper bound "
            f"below its next minor release, not {requirement}")
    installed = importlib.metadata.version(package)
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{package} {installed} is installed, outside {requirement}: the checks above ran on a version "
        "pyproject.toml does not allow")
