"""Every Prometheus metric of the gateway, defined once.

Conventions (Prometheus naming): one prefix `gateway_`, base units (seconds, bytes),
`_total` for counters, histograms for sizes and durations, and only bounded labels:
listener, stage, outcome, reason, kind, pipeline, method, org, class, component,
result, operation.  Never addresses, message ids or user ids.
"""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics

from gateway import __version__

# No *_created series: they double every counter for little use.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)

_SIZE_BUCKETS = (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 10485760, 20971520)
_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

build_info = Info("gateway_build", "Version of the gateway and of Python", registry=REGISTRY)
build_info.info({"version": __version__, "python": platform.python_version()})
up = Gauge("gateway_up", "1 while the daemon is serving", registry=REGISTRY)

sessions = Counter("gateway_sessions_total", "SMTP/LMTP sessions opened, by listener",
                   ["listener"], registry=REGISTRY)
sessions_active = Gauge("gateway_sessions_active", "SMTP/LMTP sessions open now, by listener",
                        ["listener"], registry=REGISTRY)
recipient_decisions = Counter(
    "gateway_recipient_decisions_total",
    "Replies per recipient: stage (rcpt|data), outcome (accepted|filed|duplicate|dropped|relayed|rejected|deferred), reason",
    ["listener", "stage", "outcome", "reason"], registry=REGISTRY)
message_size = Histogram("gateway_message_size_bytes", "Size of messages received in DATA",
                         ["listener"], buckets=_SIZE_BUCKETS, registry=REGISTRY)
processing_duration = Histogram("gateway_processing_duration_seconds",
                                "Time spent per stage (parse|file|relay|data) of a message",
                                ["stage"], buckets=_TIME_BUCKETS, registry=REGISTRY)
created = Counter("gateway_created_total", "Leads, contacts and records created, by kind and pipeline",
                  ["kind", "pipeline"], registry=REGISTRY)
thread_decisions = Counter("gateway_thread_decisions_total",
                           "How alias mail was threaded: in-reply-to|references|token|none",
                           ["method"], registry=REGISTRY)
reopens = Counter("gateway_reopens_total", "Records reopened by a reply, by pipeline",
                  ["pipeline"], registry=REGISTRY)
quota_refusals = Counter("gateway_quota_refusals_total", "Recipients refused for the daily limit",
                         ["org", "class"], registry=REGISTRY)
relay_attempts = Counter("gateway_relay_attempts_total",
                         "Hand-offs to the smarthost by outcome (relayed|deferred|refused)",
                         ["outcome"], registry=REGISTRY)
relay_duration = Histogram("gateway_relay_duration_seconds", "Time of one hand-off to the smarthost",
                           buckets=_TIME_BUCKETS, registry=REGISTRY)
db_duration = Histogram("gateway_db_operation_duration_seconds", "Duration of database operations",
                        ["operation"], buckets=_TIME_BUCKETS, registry=REGISTRY)
errors = Counter("gateway_errors_total", "Unexpected errors, by component",
                 ["component"], registry=REGISTRY)
quarantined = Counter("gateway_quarantined_total",
                      "Messages put in the quarantine after repeated internal errors, by route kind",
                      ["route"], registry=REGISTRY)
rule_reloads = Counter("gateway_rule_reloads_total", "Rule reloads by result (ok|failed)",
                       ["result"], registry=REGISTRY)
for _result in ("ok", "failed"):  # both series exist from the start, so increase() sees the first failure
    rule_reloads.labels(result=_result)
rules_last_reload = Gauge("gateway_rules_last_reload_timestamp_seconds",
                          "Unix time of the last good rules load", registry=REGISTRY)


@contextmanager
def timed(histogram: Histogram, **labels: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        (histogram.labels(**labels) if labels else histogram).observe(time.perf_counter() - started)
