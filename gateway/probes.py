"""The operator's HTTP endpoint: /metrics (Prometheus), /healthz and /readyz, and the
periodic database probe behind gateway_database_up and /readyz.

Served by prometheus-client's threading WSGI server in its own thread, so a scrape
never waits on the event loop and a busy loop never fails a liveness probe.  /readyz
answers from the probe's last result: a request never waits on the database either.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Iterable
from wsgiref.simple_server import make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.registry import Collector
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from gateway import metrics
from gateway.store import db, health
from gateway.store import quarantine as store_quarantine, review as store_review

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class QuotaCollector(Collector):
    """gateway_quota_limit / gateway_quota_used, read from the database at scrape
    time, so every instance reports the shared, exact bucket."""

    def __init__(self) -> None:
        self.source: Callable[[], list[dict[str, Any]]] | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        limit = GaugeMetricFamily("gateway_quota_limit", "Daily sending limit per organisation and class",
                                  labels=["org", "class"])
        used = GaugeMetricFamily("gateway_quota_used", "Tokens used today per organisation and class",
                                 labels=["org", "class"])
        source = self.source
        if source is not None:
            try:
                for report in source():
                    for name, c in report["classes"].items():
                        limit.add_metric([report["org"], name], c["limit"])
                        used.add_metric([report["org"], name], c["used"])
            except Exception:
                metrics.errors.labels(component="metrics").inc()
        yield limit
        yield used


QUOTA = QuotaCollector()
metrics.REGISTRY.register(QUOTA)


# How often the database is probed, and how long one probe may take before it counts
# as failed.  A SELECT 1 and one small COUNT every few seconds cost nothing; Prometheus
# scrapes every 15 s, so a cut database shows at the next scrape or the one after.
DATABASE_PROBE_SECONDS = 5.0
DATABASE_PROBE_TIMEOUT_SECONDS = 3.0


class DatabaseProbe:
    """SELECT 1 and the quarantine's size per organisation, on a connection of its own.

    Its own connection, not the delivery pool: a pool busy with deliveries must not
    make the database look down, nor a hung database hold a delivery slot.  SQLite: a
    fresh connection each time, opened read-write *without creating* the file, so a
    database file or folder that went away (or became unreadable) shows as down even
    though the delivery pool's open connections still reach the old file.
    """

    def __init__(self, database_url: str):
        self._review_orgs: set[str] = set()  # organisations whose review gauges were set
        url = make_url(db.normalise_url(database_url))
        if url.get_backend_name() == "sqlite":
            path = url.database or ":memory:"
            if path == ":memory:":  # nothing to lose or reach: the probe sees its own
                self.engine = create_engine("sqlite://", poolclass=NullPool)
            else:
                connect = db.sqlite_opener(path, "rw", DATABASE_PROBE_TIMEOUT_SECONDS)
                self.engine = create_engine("sqlite://", creator=connect, poolclass=NullPool)
        else:
            # Short connect and statement timeouts: a probe must answer within the timeout.
            # A new connection each time (it shows whether one can be made) in autocommit:
            # a probe cut off mid-way, or still running when the daemon stops, never
            # leaves a connection idle in a transaction, holding locks.
            parsed, connect_args = db.pg_connect_args(url, DATABASE_PROBE_TIMEOUT_SECONDS)
            self.engine = create_engine(parsed, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                        connect_args=connect_args)

    def check(self) -> dict[str, int]:
        """The number of quarantined messages not replayed, per organisation (those
        without any left out); raises if the database does not answer SELECT 1 or
        that query: a database without our schema (a new empty SQLite file, a wrong
        search_path) serves no delivery either."""
        with metrics.db_duration.labels(operation="probe").time(), self.engine.connect() as conn:
            health.ping(conn)
            waiting = store_quarantine.waiting_per_org(conn)
            self._review_gauges(store_review.pending_per_org(conn))
            return waiting

    def _review_gauges(self, pending: dict[str, tuple[int, Any]]) -> None:
        """gateway_review_pending and the age of the oldest, per organisation (0 once
        its queue is empty)."""
        from datetime import timezone

        from gateway.store.sql import now

        at = now()
        for org, (count, oldest) in pending.items():
            if oldest.tzinfo is None:  # SQLite hands back naive UTC
                oldest = oldest.replace(tzinfo=timezone.utc)
            metrics.review_pending.labels(org=org).set(count)
            metrics.review_oldest_age.labels(org=org).set(max((at - oldest).total_seconds(), 0.0))
        for org in self._review_orgs - set(pending):
            metrics.review_pending.labels(org=org).set(0)
            metrics.review_oldest_age.labels(org=org).set(0)
        self._review_orgs |= set(pending)

    def dispose(self) -> None:
        self.engine.dispose()


def _app(ready: Readiness) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(metrics.REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            ok, detail = ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps({"ready": ok, **detail}).encode() + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


class ProbeServer:
    def __init__(self, host: str, port: int, ready: Readiness):
        self._server = make_server(host, port, _app(ready), ThreadingWSGIServer, handler_class=_SilentHandler)
        self._server.daemon_threads = True
        self.address = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="gateway-probes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
