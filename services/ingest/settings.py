"""Ingest settings, read once at start from the environment."""

from __future__ import annotations

import dataclasses

from ..core.config import env


@dataclasses.dataclass(frozen=True)
class IngestSettings:
    host: str = env("HOOKSTREAM_INGEST_HOST", "127.0.0.1", "address to listen on")
    port: int = env("HOOKSTREAM_INGEST_PORT", 8080, "port of the webhook listener (public)")
    admin_host: str = env(
        "HOOKSTREAM_INGEST_ADMIN_HOST", "127.0.0.1",
        "address of the admin listener: /healthz, /readyz, /metrics (never on the public port)",
    )
    admin_port: int = env(
        "HOOKSTREAM_INGEST_ADMIN_PORT", 8079, "port of the admin listener"
    )
    sources_file: str = env(
        "HOOKSTREAM_SOURCES_FILE", "deploy/local/sources.toml", "the sources file (TOML)"
    )
    ack_timeout_s: float = env(
        "HOOKSTREAM_INGEST_ACK_TIMEOUT_S", 5.0,
        "longest wait for the broker's ack before answering 503 (inside the 10 s window)",
    )
    answer_within_s: float = env(
        "HOOKSTREAM_INGEST_ANSWER_WITHIN_S", 8.0,
        "every webhook request is answered within this long of its head being parsed: what "
        "is not stored by then is answered 503 (providers give a try 10 s)",
    )
    shed_queued_s: float = env(
        "HOOKSTREAM_INGEST_SHED_QUEUED_S", 2.0,
        "a request whose handler starts this long after its head was parsed (the process is "
        "behind) is answered 503 at once, before its body is read or verified",
    )
    shed_lag_s: float = env(
        "HOOKSTREAM_INGEST_SHED_LAG_S", 0.5,
        "overload: while the event loop runs later than this, a growing share of new "
        "requests is answered 503 + Retry-After at their head, before any app code "
        "(0: off)",
    )
    listeners: int = env(
        "HOOKSTREAM_INGEST_LISTENERS", 8,
        "listening sockets on the webhook port (SO_REUSEPORT): the event loop accepts one "
        "new connection per socket per pass, so this bounds accepts per pass (ADR 8)",
    )
    backlog: int = env(
        "HOOKSTREAM_INGEST_BACKLOG", 2048,
        "the listener's accept queue (listen backlog): connections past it are not taken "
        "by the kernel, and the sender's TCP retries its connect",
    )
    retry_after_s: int = env(
        "HOOKSTREAM_INGEST_RETRY_AFTER_S", 2, "Retry-After sent with every 503"
    )
    body_timeout_s: float = env(
        "HOOKSTREAM_INGEST_BODY_TIMEOUT_S", 5.0, "deadline for reading a request body (408)"
    )
    max_in_flight: int = env(
        "HOOKSTREAM_INGEST_MAX_IN_FLIGHT", 5000,
        "unacknowledged produces allowed before shedding load with 503",
    )
    max_in_flight_bytes: int = env(
        "HOOKSTREAM_INGEST_MAX_IN_FLIGHT_BYTES", 64 * 1024 * 1024,
        "bytes of unacknowledged produces allowed before shedding load with 503",
    )
    limit_concurrency: int = env(
        "HOOKSTREAM_INGEST_LIMIT_CONCURRENCY", 4000,
        "open connections+tasks before uvicorn answers 503 itself",
    )
    max_header_bytes: int = env(
        "HOOKSTREAM_INGEST_MAX_HEADER_BYTES", 16384,
        "largest request head (request line + headers) read before answering 431 and closing",
    )
    max_headers: int = env(
        "HOOKSTREAM_INGEST_MAX_HEADERS", 100,
        "most header lines in one request before answering 431 and closing",
    )
    header_timeout_s: float = env(
        "HOOKSTREAM_INGEST_HEADER_TIMEOUT_S", 5.0,
        "deadline for a request head to arrive, from connect or its first byte (408, closed)",
    )
    keepalive_timeout_s: int = env(
        "HOOKSTREAM_INGEST_KEEPALIVE_TIMEOUT_S", 15, "idle keep-alive connection timeout"
    )
    shutdown_timeout_s: float = env(
        "HOOKSTREAM_INGEST_SHUTDOWN_TIMEOUT_S", 15.0,
        "on SIGTERM: longest wait for in-flight requests and produces to drain",
    )
    producer_reset_after_s: float = env(
        "HOOKSTREAM_INGEST_PRODUCER_RESET_AFTER_S", 10.0,
        "produces failing this long with no success: replace the producer (a fatal "
        "idempotence error or a dead sender replaces it at once)",
    )
    probe_interval_s: float = env(
        "HOOKSTREAM_INGEST_PROBE_INTERVAL_S", 5.0, "how often readiness re-checks the broker"
    )
    spool_dir: str = env(
        "HOOKSTREAM_INGEST_SPOOL_DIR", "",
        "directory of the local spool (ADR 7), one per replica, on a volume that outlives the "
        "process; empty disables it (a delivery Kafka does not ack in time is answered 503)",
    )
    spool_budget_s: float = env(
        "HOOKSTREAM_INGEST_SPOOL_BUDGET_S", 1.0,
        "with the spool on: wait this long for Kafka's ack, then fsync the delivery to the "
        "spool and answer 202",
    )
    spool_max_bytes: int = env(
        "HOOKSTREAM_INGEST_SPOOL_MAX_BYTES", 1024 * 1024 * 1024,
        "spool size bound; past it a delivery that needs the spool is answered 503",
    )
    spool_max_age_s: float = env(
        "HOOKSTREAM_INGEST_SPOOL_MAX_AGE_S", 21600.0,
        "oldest spooled delivery older than this: stop spooling (503); nothing is expired",
    )
    spool_min_free_bytes: int = env(
        "HOOKSTREAM_INGEST_SPOOL_MIN_FREE_BYTES", 64 * 1024 * 1024,
        "free space the spool's filesystem keeps; below it, 503 instead of spooling",
    )
    spool_segment_bytes: int = env(
        "HOOKSTREAM_INGEST_SPOOL_SEGMENT_BYTES", 16 * 1024 * 1024,
        "size at which the spool starts a new segment file",
    )
    spool_drain_batch: int = env(
        "HOOKSTREAM_INGEST_SPOOL_DRAIN_BATCH", 500,
        "spooled deliveries sent to Kafka per drain batch (one checkpoint fsync each)",
    )
    spool_drain_rate: float = env(
        "HOOKSTREAM_INGEST_SPOOL_DRAIN_RATE", 2000.0,
        "most spooled deliveries drained per second, beside live traffic",
    )
