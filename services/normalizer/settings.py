"""Normalizer settings, read once at start from the environment."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ..core.config import env


@dataclasses.dataclass(frozen=True)
class NormalizerSettings:
    group_id: str = env("HOOKSTREAM_NORMALIZER_GROUP", "hookstream-normalizer",
                        "consumer group on the raw topic")
    max_batch: int = env("HOOKSTREAM_NORMALIZER_MAX_BATCH", 1000,
                         "most records processed (and committed) per batch")
    poll_timeout_ms: int = env("HOOKSTREAM_NORMALIZER_POLL_TIMEOUT_MS", 200,
                               "longest wait for a batch to fill")
    produce_timeout_s: float = env("HOOKSTREAM_NORMALIZER_PRODUCE_TIMEOUT_S", 30.0,
                                   "longest wait for a batch's acks before retrying it")
    dedupe_window_s: int = env("HOOKSTREAM_DEDUPE_WINDOW_S", 7 * 24 * 3600,
                               "how long an event id is remembered (7 days)")
    dedupe_cache_size: int = env("HOOKSTREAM_DEDUPE_CACHE_SIZE", 200_000,
                                 "event ids remembered in-process in front of PostgreSQL")
    dedupe_table: str = env("HOOKSTREAM_DEDUPE_TABLE", "hookstream_dedupe",
                            "PostgreSQL table of published event ids")
    max_depth: int = env("HOOKSTREAM_NORMALIZER_MAX_DEPTH", 64,
                         "deepest JSON nesting accepted (objects and arrays; the root is 1); "
                         "deeper bodies are dead-lettered too_deep")
    max_body_bytes: int = env("HOOKSTREAM_NORMALIZER_MAX_BODY_BYTES", 1_048_576,
                              "largest body accepted (keep >= every source's max_body_bytes); "
                              "larger ones are dead-lettered too_large")
    sources_file: str = env(
        "HOOKSTREAM_NORMALIZER_SOURCES_FILE", "",
        "the sources file (ingest's HOOKSTREAM_SOURCES_FILE) whose test_call_ids / "
        "test_call_id_pattern mark test deliveries; only those settings are read "
        "(empty: no source has test calls; X-Hookstream-Test still marks them)")
    retry_backoff_max_s: float = env("HOOKSTREAM_NORMALIZER_RETRY_BACKOFF_MAX_S", 30.0,
                                     "longest pause between retries of a failing batch")
    http_host: str = env("HOOKSTREAM_NORMALIZER_HTTP_HOST", "127.0.0.1",
                         "address of /healthz, /readyz, /metrics")
    http_port: int = env("HOOKSTREAM_NORMALIZER_HTTP_PORT", 8081,
                         "port of /healthz, /readyz, /metrics")
    shutdown_timeout_s: float = env("HOOKSTREAM_NORMALIZER_SHUTDOWN_TIMEOUT_S", 20.0,
                                    "on SIGTERM: longest wait to finish, commit and leave")
    # Per provider, the payload versions accepted; None: each provider's own setting
    # (ProviderSpec.accepted_versions, e.g. a HOOKSTREAM_<PROVIDER>_VERSIONS variable).
    versions: Mapping[str, tuple[str, ...]] | None = None
