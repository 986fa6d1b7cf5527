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
    "Deliveries answered 503 because the raw record was not stored, by reason",
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
    "header_count (431), head_timeout (408), idle (connected, sent nothing; closed)",
    ["reason"],
)
