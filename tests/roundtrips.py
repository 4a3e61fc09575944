"""Round trips to PostgreSQL per filing, counted at psycopg's send calls (issue 17).

Run by tests/test_roundtrips.py in a process of its own, because it needs psycopg's
pure-Python libpq binding (``PSYCOPG_IMPL=python``, chosen when psycopg is first
imported): its ``PGconn`` is a Python class whose methods can be wrapped, where the
C binding's cannot.  The daemon runs in this process (tests.helpers.ServerThread, as
in every test) on a real PostgreSQL schema; mail goes to it over LMTP.

A round trip is a wait for the server's answer: requests sent (any ``send_*``, a
pipeline sync or flush request), then input read (``consume_input``) -- however
many requests went out before it.  Outside pipeline mode that is one per
statement (BEGIN is one); in pipeline mode one per read of a result or per sync.
Only the calls made while a delivery is filed count -- from the worker's ``Deliveries._work`` frame:
checkout (any ping), BEGIN, the statements, COMMIT, the pool's reset on return.
The RCPT lookup before DATA is counted apart (``rcpt``).

    PSYCOPG_IMPL=python python -m tests.roundtrips CONFIG_DIR DATABASE_URL

prints a line "ROUNDTRIPS {json}": route -> {"filing": [round trips of each measured delivery],
"rcpt": [...], "sql": [the statements of the last one]}.
"""

from __future__ import annotations

import json
import sys
import threading
from email.utils import make_msgid
from pathlib import Path
from typing import Any

SENDS = ("send_query", "send_query_params", "send_prepare", "send_query_prepared", "send_describe_prepared",
         "send_describe_portal", "send_close_prepared", "send_close_portal")
PIPELINE_WAITS = ("pipeline_sync", "send_flush_request")
WARM = 6      # deliveries of each route before measuring (psycopg prepares a query on its 5th run)
MEASURED = 3


class Counter:
    """Every request the wrapped PGconn sends, and every wait for the server's answer,
    tagged with where it came from."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, str]] = []  # (phase, method, sql)
        self.prepared: dict[tuple[int, bytes], str] = {}  # (connection, prepared statement name) -> SQL
        self.pending: set[int] = set()  # connections with requests sent and no answer read yet

    def install(self) -> None:
        from psycopg import pq

        assert pq.__impl__ == "python", f"needs PSYCOPG_IMPL=python, got {pq.__impl__}"
        cls = pq.PGconn
        for name in SENDS + PIPELINE_WAITS + ("consume_input",):
            original = getattr(cls, name)
            setattr(cls, name, self._wrap(name, original))

    def _wrap(self, name: str, original: Any) -> Any:
        counter = self

        def wrapped(pgconn: Any, *args: Any, **kw: Any) -> Any:
            counter.record(pgconn, name, args)
            return original(pgconn, *args, **kw)

        return wrapped

    def record(self, pgconn: Any, name: str, args: tuple[Any, ...]) -> None:
        if name == "send_prepare":
            self.prepared[(id(pgconn), args[0])] = _text(args[1])
        phase = _phase()
        with self.lock:
            if name != "consume_input":
                self.pending.add(id(pgconn))
            elif id(pgconn) in self.pending:  # the answer to what was sent: one round trip
                self.pending.discard(id(pgconn))
                if phase is not None:
                    self.calls.append((phase, "round trip", ""))
                return
            else:
                return
        if phase is None:
            return
        sql = _text(args[0]) if args and isinstance(args[0], (bytes, str)) else ""
        if name == "send_query_prepared":
            sql = self.prepared.get((id(pgconn), args[0]), sql)
        with self.lock:
            self.calls.append((phase, name, " ".join(sql.split())[:160]))

    def take(self) -> list[tuple[str, str, str]]:
        with self.lock:
            calls, self.calls = self.calls, []
        return calls


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _phase() -> str | None:
    """"filing" inside Deliveries._work (the worker's job), "rcpt" inside the dropbox
    address lookup at RCPT (Database.reading(store.dropboxes.owner, ...), checkout
    included)."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_filename.endswith("gateway/delivery.py") and code.co_name in ("_work", "_work_in_batch"):
            return "filing"
        if (code.co_filename.endswith("gateway/store/db.py") and code.co_name == "reading"
                and getattr(frame.f_locals.get("fn"), "__qualname__", "") == "owner"):
            return "rcpt"
        frame = frame.f_back  # type: ignore[assignment]
    return None


def main(config_dir: str, database_url: str) -> None:
    counter = Counter()
    counter.install()

    from gateway import records as records_mod
    from gateway import settings as settings_mod
    from gateway.routing import dropbox_address
    from gateway.store import dropboxes
    from tests.helpers import ServerThread, lmtp_transaction, message

    env = {"GATEWAY_DATABASE_URL": database_url, "GATEWAY_LMTP_LISTEN": "127.0.0.1:0",
           "GATEWAY_SMTP_LISTEN": "off", "GATEWAY_SUBMISSION_LISTEN": "off", "GATEWAY_METRICS_LISTEN": "off",
           "GATEWAY_API_LISTEN": "off", "GATEWAY_RELAY_URL": "smtp://127.0.0.1:9"}
    server = ServerThread(settings_mod.load(Path(config_dir) / "gateway.toml", environ=env))
    server.start()
    app = server.app
    try:
        port = app.bound["lmtp"][1]
        org = app.deliveries.rules.orgs["zylker"]
        token = app.database.writing(dropboxes.token, "zylker", org.users["hashimoto@zylker.example"].id)
        dropbox = dropbox_address(token, org.gateway_domain)
        sales, service = "sales@in.zylker.example", "service@in.zylker.example"
        seq = iter(range(1_000_000))

        def deliver(rcpt: str, sender: str, **kw: Any) -> tuple[int, str]:
            mid = make_msgid(domain="customer.example")
            data = message(frm=sender, message_id=mid, **kw)
            replies = lmtp_transaction(port, sender, [rcpt], data)
            assert replies.codes == [250], replies
            return 250, mid

        def record_of(mid: str) -> int:
            from sqlalchemy import text

            with app.engine.connect() as conn:
                return conn.execute(text(
                    "SELECT l.target_id FROM emails e JOIN links l ON l.email_id = e.id AND l.kind = 'record' "
                    "WHERE e.message_id = :m"), {"m": mid.strip("<>")}).scalar_one()

        def dropbox_existing() -> None:
            deliver(dropbox, "hashimoto@zylker.example", to="Known Customer <known@customer.example>")

        def dropbox_attachments() -> None:  # big mail is attachments: their rows are pipelined too
            deliver(dropbox, "hashimoto@zylker.example", to="Known Customer <known@customer.example>",
                    attachments=[("quotation.pdf", "application/pdf", b"%PDF-1.4 " * 2000),
                                 ("terms.pdf", "application/pdf", b"%PDF-1.4 terms")])

        def dropbox_new() -> None:
            deliver(dropbox, "hashimoto@zylker.example", to=f"New Customer <new{next(seq)}@customer.example>")

        def alias_new() -> None:
            deliver(sales, f"c{next(seq)}@customer.example", to=sales, subject="Question")

        threads: dict[str, list[tuple[str, str]]] = {"sales": [], "service": []}

        def prepare(alias: str, kind: str, count: int) -> None:
            for _ in range(count):
                sender = f"r{next(seq)}@customer.example"
                _, mid = deliver(alias, sender, to=alias, subject="Question")
                threads[kind].append((sender, mid))

        used: list[str] = []

        def stage_of(record_id: int) -> str:
            from sqlalchemy import text

            with app.engine.connect() as conn:
                return conn.execute(text("SELECT stage FROM records WHERE id = :r"), {"r": record_id}).scalar_one()

        def reply(alias: str, kind: str) -> None:
            sender, mid = threads[kind].pop()
            if kind == "service":
                used.append(mid)
            deliver(alias, sender, to=alias, subject="Re: Question",
                    headers={"In-Reply-To": mid, "References": mid})

        def alias_reply() -> None:
            reply(sales, "sales")

        def alias_reopen() -> None:
            reply(service, "service")

        dropbox_existing()  # the customer exists from here on
        prepare(sales, "sales", WARM + MEASURED)
        prepare(service, "service", WARM + MEASURED)
        for _, mid in threads["service"]:
            app.database.writing(records_mod.move, app.deliveries.rules, record_of(mid), "Resolved")
        routes = {"dropbox": dropbox_existing, "dropbox-attachments": dropbox_attachments, "dropbox-new": dropbox_new,
                  "alias-new": alias_new,
                  "alias-reply": alias_reply, "alias-reopen": alias_reopen}
        out: dict[str, Any] = {}
        for name, send in routes.items():
            for _ in range(WARM):
                send()
            counter.take()
            filing, rcpt = [], []
            calls: list[tuple[str, str, str]] = []
            for _ in range(MEASURED):
                send()
                calls = counter.take()
                filing.append(sum(1 for phase, what, _ in calls if phase == "filing" and what == "round trip"))
                rcpt.append(sum(1 for phase, what, _ in calls if phase == "rcpt" and what == "round trip"))
            out[name] = {"filing": filing, "rcpt": rcpt,
                         "sql": [f"{method}: {sql}" for phase, method, sql in calls if phase == "filing"]}
        out["reopened"] = [stage_of(record_of(mid)) for mid in used]
        print("ROUNDTRIPS " + json.dumps(out), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
