"""Every Prometheus metric of the gateway, defined once.

Conventions (Prometheus naming): one prefix `gateway_`, base units (seconds, bytes),
`_total` for counters, histograms for sizes and durations, and only bounded labels:
listener, stage, outcome, reason, kind, pipeline, method, org, class, component,
result, operation, state.  Never addresses, message ids or user ids.

Label values are names chosen on purpose and listed here or in README.md ("Metrics
and probes"), never derived from Python names: a refactoring must not rename a
series that dashboards and alerts query (issue 11).
"""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram, Info, PlatformCollector,
                               ProcessCollector, disable_created_metrics)

from gateway import __version__

# No *_created series: they double every counter for little use.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
# The standard process_* (memory, CPU, file descriptors), python_gc_* and python_info
# series, as on any Python exporter: prometheus-client registers them only in its own
# default registry, which we do not serve.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# The `operation` label of gateway_db_operation_duration_seconds: every database call
# guarded in gateway/delivery.py names one of these (all exported from the start).
DB_OPERATIONS = (
    "dropbox_lookup",       # RCPT: dropbox token -> its user
    "file_dropbox",         # DATA: file one message for one dropbox recipient
    "file_alias",           # DATA: file one message for one pipeline alias
    "failure_count",        # one more internal failure of a message (quarantine counting)
    "quarantine_keep",      # put a message into the quarantine
    "quota_reserve",        # submission: take (or move) daily quota tokens
    "relay_dedup",          # submission: was this message relayed already?
    "relay_record_lookup",  # submission: the record a reply belongs to
    "relay_store",          # submission: keep the relayed message
    "probe",                # the periodic database probe (gateway_database_up)
    "api_read",             # an API request's reads (GET)
    "api_write",            # an API request's transaction (POST, PATCH, DELETE)
    "events_sequence",      # put committed events in their organisation's feed order
    "events_prune",         # delete events past the retention
    "webhooks",             # webhook deliveries: hand events out, take due ones, record attempts
)

_SIZE_BUCKETS = (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 10485760, 20971520)
_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

build_info = Info("gateway_build", "Version of the gateway and of Python", registry=REGISTRY)
build_info.info({"version": __version__, "python": platform.python_version()})
up = Gauge("gateway_up", "1 while the daemon is serving: listeners bound, not stopping", registry=REGISTRY)
database_up = Gauge("gateway_database_up",
                    "1 if the last database probe (SELECT 1 and a query on our schema, every 5 s, off the "
                    "event loop) succeeded", registry=REGISTRY)
quarantine_messages = Gauge("gateway_quarantine_messages",
                            "Messages in the quarantine not yet replayed, per organisation (database, at each probe)",
                            ["org"], registry=REGISTRY)
deliveries_in_flight = Gauge("gateway_deliveries_in_flight",
                             "DATA transactions under way: from 354 to their last reply", registry=REGISTRY)
big_messages_in_memory = Gauge("gateway_big_messages_in_memory",
                               "Messages over 1 MB buffered now (at most limits.big_messages_in_memory)",
                               registry=REGISTRY)
worker_jobs = Gauge("gateway_worker_jobs",
                    "Jobs of the worker pool: queued (waiting for a slot or a thread) or running",
                    ["state"], registry=REGISTRY)
for _state in ("queued", "running"):
    worker_jobs.labels(state=_state)

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
for _operation in DB_OPERATIONS:  # the documented set, present from the start
    db_duration.labels(operation=_operation)
errors = Counter("gateway_errors_total", "Unexpected errors, by component",
                 ["component"], registry=REGISTRY)
quarantined = Counter("gateway_quarantined_total",
                      "Messages put in the quarantine after repeated internal errors, by route kind",
                      ["route"], registry=REGISTRY)
parse_anomalies = Counter("gateway_parse_anomalies_total",
                          "Messages not wholly understood: parts_skipped (nested too deep or too many parts; "
                          "the raw message keeps them), empty_body (no text and no attachment from a non-blank body), "
                          "new_text_empty (nothing left of a non-blank text once quotes and signature were split "
                          "off), forward_unreadable (a forward whose original's sender could not be read)",
                          ["kind"], registry=REGISTRY)
for _kind in ("parts_skipped", "empty_body", "new_text_empty", "forward_unreadable"):
    parse_anomalies.labels(kind=_kind)
review_held = Counter("gateway_review_held_total", "Messages held for review instead of filed, by reason",
                      ["reason"], registry=REGISTRY)
review_capped = Counter("gateway_review_capped_total",
                        "Alias mail held because its sender opened more new records than [limits] "
                        "new_records_per_sender within the window", registry=REGISTRY)
review_decisions = Counter("gateway_review_decisions_total", "Held messages decided, by decision (approved|rejected)",
                           ["decision"], registry=REGISTRY)
for _decision in ("approved", "rejected"):
    review_decisions.labels(decision=_decision)
review_pending = Gauge("gateway_review_pending", "Messages waiting for review, per organisation", ["org"],
                       registry=REGISTRY)
review_oldest_age = Gauge("gateway_review_oldest_pending_age_seconds",
                          "Age of the oldest message waiting for review, per organisation", ["org"],
                          registry=REGISTRY)
events_sequenced = Counter("gateway_events_sequenced_total",
                           "Events put in their organisation's feed (GET /v1/events, webhooks)", registry=REGISTRY)
events_pruned = Counter("gateway_events_pruned_total",
                        "Events deleted after [events] retention_days, with their webhook deliveries",
                        registry=REGISTRY)
webhook_deliveries = Counter("gateway_webhook_deliveries_total",
                             "Webhook attempts by outcome: delivered (2xx), retry (no 2xx; tried again after "
                             "[webhooks] retry_seconds), failed (no 2xx after the last retry; kept)",
                             ["outcome"], registry=REGISTRY)
for _outcome in ("delivered", "retry", "failed"):
    webhook_deliveries.labels(outcome=_outcome)
events_pending = Gauge("gateway_events_pending",
                       "Webhook deliveries not yet delivered or failed, all active endpoints (database, at "
                       "the outbox's passes)", registry=REGISTRY)
events_oldest_pending_age = Gauge("gateway_events_oldest_pending_age_seconds",
                                  "Age of the event of the oldest pending webhook delivery (0: none pending)",
                                  registry=REGISTRY)
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
