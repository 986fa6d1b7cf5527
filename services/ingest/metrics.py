"""Ingest metrics. Labels come from closed sets: configured source names and statuses."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "hookstream_ingest_requests_total",
    "Webhook requests answered, by source and HTTP status",
    ["source", "status"],
)
RECEIVED_BYTES = Counter(
    "hookstream_ingest_received_bytes_total",
    "Body bytes of accepted deliveries",
    ["source"],
)
ACK_LATENCY = Histogram(
    "hookstream_ingest_ack_latency_seconds",
    "Time from request to the broker's acknowledgement of the raw record",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PRODUCE_FAILURES = Counter(
    "hookstream_ingest_produce_failures_total",
    "Deliveries answered 503 because the raw record was not stored, by reason: the "
    "publisher's (not_connected, overloaded, ack_timeout, kafka_error, spool_full, "
    "spool_error) and the request's (shed_queued: waited for the loop past "
    "HOOKSTREAM_INGEST_SHED_QUEUED_S; deadline: not stored within "
    "HOOKSTREAM_INGEST_ANSWER_WITHIN_S)",
    ["source", "reason"],
)
IN_FLIGHT = Gauge(
    "hookstream_ingest_in_flight_produces",
    "Produces awaiting the broker's acknowledgement",
)
BROKER_READY = Gauge(
    "hookstream_ingest_broker_ready",
    "1 when the producer is connected and the broker answered the last probe",
)
PRODUCER_RESETS = Counter(
    "hookstream_ingest_producer_resets_total",
    "Producers replaced by a new one (a new producer id), by reason: fatal_error "
    "(OutOfOrderSequenceNumber, UnknownProducerId, ...), wedged (its sender ended), "
    "failing (produces kept failing for HOOKSTREAM_INGEST_PRODUCER_RESET_AFTER_S)",
    ["reason"],
)
REFUSED_HEADS = Counter(
    "hookstream_ingest_refused_heads_total",
    "Connections refused at the request head, before any app code: header_bytes and "
    "header_count (431), head_timeout (408), idle (connected, sent nothing; closed), "
    "concurrency (503 + Retry-After: over HOOKSTREAM_INGEST_LIMIT_CONCURRENCY), "
    "overload (503 + Retry-After: shed while the event loop runs late, edge.LagShedder)",
    ["reason"],
)
LOOP_LAG = Gauge(
    "hookstream_ingest_loop_lag_seconds",
    "How late the event loop ran its timer checks (edge.LagShedder; the worst of the "
    "last second): the wait a newly arrived request has before this process reads it",
)
CONNECTIONS = Counter(
    "hookstream_ingest_connections_total",
    "Connections accepted by the webhook listener (each costs far more than a request "
    "on a kept-alive one: bench.shed --close)",
)
ACCEPT_QUEUE = Gauge(
    "hookstream_ingest_accept_queue",
    "Connections waiting in the kernel's accept queue of the webhook listeners (the "
    "longest queue, read once a second): the process is behind on new connections",
)
ADMIT_SHARE = Gauge(
    "hookstream_ingest_admit_share",
    "Share of new requests let through to the app; below 1 the rest are answered 503 + "
    "Retry-After at their head because the event loop runs late (overload)",
)

# The local spool (ADR 7): deliveries the broker did not acknowledge within the spool
# budget, fsync'd to this replica's disk and answered 202, waiting to be drained to Kafka.
SPOOL_RECORDS = Gauge(
    "hookstream_ingest_spool_records",
    "Deliveries in the local spool not yet acknowledged by Kafka",
)
SPOOL_BYTES = Gauge(
    "hookstream_ingest_spool_bytes",
    "Bytes of the local spool's segment files on disk",
)
SPOOL_MAX_BYTES = Gauge(
    "hookstream_ingest_spool_max_bytes",
    "The spool's byte bound (HOOKSTREAM_INGEST_SPOOL_MAX_BYTES); 0 when the spool is disabled",
)
SPOOL_OLDEST_AGE = Gauge(
    "hookstream_ingest_spool_oldest_age_seconds",
    "Age of the oldest delivery in the spool (0 when it is empty)",
)
SPOOL_APPENDED = Counter(
    "hookstream_ingest_spool_appended_total",
    "Deliveries fsync'd to the spool and answered 202, by why Kafka was not used: "
    "ack_budget (no ack within HOOKSTREAM_INGEST_SPOOL_BUDGET_S), not_connected, kafka_error",
    ["reason"],
)
SPOOL_DRAINED = Counter(
    "hookstream_ingest_spool_drained_total",
    "Spooled deliveries forwarded to Kafka and acknowledged (then removed from the spool)",
)
SPOOL_SYNC_SECONDS = Histogram(
    "hookstream_ingest_spool_sync_seconds",
    "Group commit latency: one write + fdatasync of a batch of spooled deliveries",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
SPOOL_ERRORS = Counter(
    "hookstream_ingest_spool_errors_total",
    "Spool failures by operation: write and sync (those deliveries answered 503), read, "
    "checkpoint, corrupt (a segment with a bad frame before its end, moved to corrupt/)",
    ["op"],
)
for _reason in ("ack_budget", "not_connected", "kafka_error"):
    SPOOL_APPENDED.labels(_reason)
for _op in ("write", "sync", "read", "checkpoint", "corrupt"):
    SPOOL_ERRORS.labels(_op)
