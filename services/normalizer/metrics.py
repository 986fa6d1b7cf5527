"""Normalizer metrics (labels from closed sets: provider, canonical type, reason)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_IN = Counter("hookstream_normalizer_events_in_total",
                    "Raw deliveries read, by provider", ["provider"])
EVENTS_OUT = Counter("hookstream_normalizer_events_out_total",
                     "Canonical events published, by provider and canonical type",
                     ["provider", "type"])
DUPLICATES = Counter("hookstream_normalizer_duplicates_total",
                     "Deliveries skipped as duplicates of an event already published",
                     ["provider"])
DEAD_LETTERS = Counter("hookstream_normalizer_dead_letters_total",
                       "Deliveries sent to the dead-letter topic, by reason", ["reason"])
BATCH_SIZE = Histogram("hookstream_normalizer_batch_size", "Records per processed batch",
                       buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500))
BATCH_SECONDS = Histogram("hookstream_normalizer_batch_seconds",
                          "Time to process, publish and commit one batch",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
RECEIVE_TO_PUBLISH = Histogram(
    "hookstream_normalizer_receive_to_publish_seconds",
    "From ingest's receive time to the canonical event's ack",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
RETRIES = Counter("hookstream_normalizer_batch_retries_total",
                  "Batches retried after a transient failure, by cause", ["cause"])
