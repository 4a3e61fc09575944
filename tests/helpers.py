"""Test helpers: the daemon in a thread, and SMTP/LMTP clients that read every reply."""

from __future__ import annotations

import asyncio
import os
import smtplib
import subprocess
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid, formatdate
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

import uvloop

from gateway.app import App
from gateway.settings import Settings


class ServerThread:
    def __init__(self, settings: Settings, filing: Any = None):
        self.app = App(settings, filing=filing)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="gateway-test-server", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.app.start())
        except BaseException as exc:  # surfaced in start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.app.stop())
        self.loop.close()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(60)
        if self._error:
            raise self._error

    def stop(self) -> None:
        if self.loop and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(60)


@dataclass
class Replies:
    """What the client heard in one mail transaction: MAIL's reply, each RCPT's, DATA's
    (one per accepted recipient on LMTP)."""

    mail: tuple[int, bytes]
    rcpts: list[tuple[int, bytes]]
    data: list[tuple[int, bytes]]
    noop: tuple[int, bytes] | None = None

    @property
    def codes(self) -> list[int]:
        return [c for c, _ in self.data]

    @property
    def rcpt_codes(self) -> list[int]:
        return [c for c, _ in self.rcpts]


def _quote(data: bytes) -> bytes:
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _transaction(client: smtplib.SMTP, lmtp: bool, mail_from: str, rcpts: list[str], data: bytes,
                 mail_options: tuple[str, ...] = (), raw: bool = False) -> Replies:
    mail = client.mail(mail_from, list(mail_options))
    tx = Replies(mail, [], [])
    if mail[0] != 250:
        return tx
    for r in rcpts:
        tx.rcpts.append(client.rcpt(r))
    accepted = sum(1 for c, _ in tx.rcpts if c == 250)
    if accepted == 0:
        client.rset()
        return tx
    client.putcmd("data")
    code, msg = client.getreply()
    if code != 354:
        tx.data.append((code, msg))
        return tx
    client.send(data if raw else _quote(data))
    # RFC 2033 4.2: LMTP gives one reply per accepted recipient; SMTP one in all.
    for _ in range(accepted if lmtp else 1):
        tx.data.append(client.getreply())
    # The next reply must be NOOP's: proves no surplus replies were sent.
    tx.noop = client.noop()
    return tx


def lmtp_transaction(port: int, mail_from: str, rcpts: list[str], data: bytes, **kw: Any) -> Replies:
    with smtplib.LMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo_or_helo_if_needed()
        return _transaction(client, True, mail_from, rcpts, data, **kw)


def smtp_transaction(port: int, mail_from: str, rcpts: list[str], data: bytes, **kw: Any) -> Replies:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo()
        return _transaction(client, False, mail_from, rcpts, data, **kw)


def message(
    *,
    frm: str = "Taro Hashimoto <hashimoto@zylker.example>",
    to: str | None = "Charles <charless@zillum.com>",
    cc: str | None = None,
    subject: str = "Quotation",
    body: str = "Please find the quotation attached.",
    message_id: str | None | bool = True,
    date: str | None | bool = True,
    headers: dict[str, str] | None = None,
    attachments: list[tuple[str, str, bytes]] = (),  # type: ignore[assignment]
) -> bytes:
    m = EmailMessage()
    m["From"] = frm
    if to:
        m["To"] = to
    if cc:
        m["Cc"] = cc
    m["Subject"] = subject
    if date is True:
        m["Date"] = formatdate(localtime=False)
    elif date:
        m["Date"] = date  # type: ignore[assignment]
    if message_id is True:
        m["Message-ID"] = make_msgid(domain="zylker.example")
    elif message_id:
        m["Message-ID"] = message_id  # type: ignore[assignment]
    for k, v in (headers or {}).items():
        m[k] = v
    m.set_content(body)
    for filename, ctype, content in attachments:
        maintype, subtype = ctype.split("/")
        m.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    return m.as_bytes().replace(b"\n", b"\r\n")


def submission_transaction(port: int, login: str, password: str, mail_from: str, rcpts: list[str],
                           data: bytes) -> Replies:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo()
        client.login(login, password)
        return _transaction(client, False, mail_from, rcpts, data)


class Sink:
    """A smarthost on loopback (aiosmtpd), recording what it accepts.

    mode: "accept", "tempfail" (451 at DATA), "permfail" (554 at DATA);
    refuse: recipients answered 550 at RCPT.
    """

    def __init__(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.mode = "accept"
        self.refuse: set[str] = set()
        self._lock = threading.Lock()
        self.controller: Any = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address in self.refuse:
            return "550 5.1.1 No such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if self.mode == "tempfail":
            return "451 4.3.0 Try later"
        if self.mode == "permfail":
            return "554 5.7.1 Rejected by policy"
        with self._lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: queued"

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


class TcpProxy:
    """A loopback TCP proxy that a test can cut and restore (a database going away)."""

    def __init__(self, upstream: tuple[str, int]):
        import socket

        self.upstream = upstream
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._listener: Any = None
        self._sockets: list[Any] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        import socket

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: Any) -> None:
        import socket

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # stopped while this one was connecting: cut it too
                    client.close()
                    upstream.close()
                    continue
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: Any, dst: Any) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self.cut()

    def cut(self) -> None:
        """Cut the open connections (a server restart, as its clients see it); new
        ones are still accepted."""
        import socket

        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: Any, log: Any = None, timeout: float = 60) -> None:
    """Wait until a `gateway serve` process listens on port; fail with its log if it died."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = log.read_text() if log is not None else proc.stderr.read().decode()
            raise AssertionError(f"gateway serve exited {proc.returncode}: {detail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gateway serve did not start listening")


def serve_process(config: Any, env: dict[str, str], log: Any) -> Any:
    """`gateway serve` as a child process, its stderr (the JSON log) going to log."""
    import subprocess
    import sys

    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                                env=env, stdout=subprocess.DEVNULL, stderr=f)


def children(pid: int) -> list[int]:
    """The process's child processes (Linux /proc; none if it is gone)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    except OSError:
        pass
    return found


def kill_tree(proc: Any) -> None:
    """SIGKILL a process and its children (children first: nothing of them runs on
    after the parent is gone), then reap it."""
    import signal

    for pid in children(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def edit_config(path: Path, old: str, new: str, count: int = 1) -> None:
    """Replace ``old`` with ``new`` in a copy of the demo config (gateway.toml, rules/).

    ``old`` must occur exactly ``count`` times: when the shipped file changes, the test
    fails here instead of running silently on the setting it meant to change."""
    text = path.read_text()
    found = text.count(old)
    assert found == count, f"{path.name}: {old!r} occurs {found} time(s), expected {count}"
    path.write_text(text.replace(old, new))


class FailingFiling:
    """A filing function composed into the daemon (RunningGateway(filing=...)): the
    real one, except that inside ``failing(route_type)`` filing for that kind of route
    raises our own error (a bug this message always hits), so the quarantine path can
    be driven through the real daemon."""

    def __init__(self) -> None:
        from gateway import filing

        self._real = filing.file
        self._broken: type | None = None
        self._after = False

    def __call__(self, conn: Any, rules: Any, route: Any, parsed: Any, sender: str) -> Any:
        broken = self._broken is not None and isinstance(route, self._broken)
        if broken and not self._after:
            raise RuntimeError("boom")
        filing = self._real(conn, rules, route, parsed, sender)
        if broken:
            raise RuntimeError("boom after the filing's writes")  # the transaction rolls back
        return filing

    @contextmanager
    def failing(self, route_type: type, after: bool = False) -> Iterator[None]:
        """Filing for ``route_type`` raises: before it writes, or (``after``) once it
        has written everything, events included -- so the transaction is rolled back."""
        self._broken, self._after = route_type, after
        try:
            yield
        finally:
            self._broken, self._after = None, False


def drop_schema(conn: Any, schema: str) -> None:
    """DROP SCHEMA ... CASCADE on an autocommit connection, first ending any session
    still holding a lock in it (a gateway thread cut off mid-transaction by a test):
    a test's cleanup must never wait on it."""
    conn.exec_driver_sql(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s AND l.pid <> pg_backend_pid()",
        {"schema": schema})
    conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def proxied_postgresql(pg_url: str, prefix: str) -> Iterator[tuple[str, "TcpProxy"]]:
    """A fresh schema on the test PostgreSQL, reached through a TcpProxy a test can cut
    and restore: yields (database URL through the proxy, proxy).  On exit the proxy
    stops and the schema is dropped (stop the gateway using it first)."""
    import os
    from urllib.parse import urlsplit

    import sqlalchemy as sa

    from gateway.store import db

    parts = urlsplit(pg_url)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    proxy.start()
    schema = f"t_{prefix}_" + os.urandom(4).hex()
    admin = sa.create_engine(db.normalise_url(pg_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        user = parts.netloc.rpartition("@")[0]
        try:
            yield f"{parts.scheme}://{user}@127.0.0.1:{proxy.port}{parts.path}?options=-csearch_path%3D{schema}", proxy
        finally:
            proxy.stop()
            with admin.connect() as conn:
                drop_schema(conn, schema)
    finally:
        admin.dispose()


def serve_lmtp(config_dir: Path, database_url: str, lmtp: int, log: Path) -> subprocess.Popen:
    """A `gateway serve` process on ``database_url`` with only LMTP on port ``lmtp``,
    once it answers."""
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_LMTP_LISTEN": f"127.0.0.1:{lmtp}",
           "GATEWAY_SMTP_LISTEN": "off", "GATEWAY_SUBMISSION_LISTEN": "off", "GATEWAY_METRICS_LISTEN": "off",
           "GATEWAY_API_LISTEN": "off"}
    proc = serve_process(config_dir / "gateway.toml", env, log)
    wait_port(lmtp, proc, log)
    return proc
