"""The operator's HTTP endpoint: /metrics (Prometheus), /healthz and /readyz.

Served by prometheus-client's threading WSGI server in its own thread, so a scrape
never waits on the event loop and a busy loop never fails a liveness probe.
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

from gateway import metrics

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
