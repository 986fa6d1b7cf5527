"""Every Kafka header name hookstream writes or reads (``hs-*``), in one place.

Lower-case ASCII names; values are UTF-8. docs/catalog.md describes each, per topic.
"""

from __future__ import annotations

# The raw topic (ingest -> normalizer): what hookstream knows of a delivery.
H_SOURCE = "hs-source"  # also on canonical events
H_PROVIDER = "hs-provider"  # also on canonical events
H_RECEIVED_AT = "hs-received-at"  # integer milliseconds since the epoch
H_REQUEST_ID = "hs-request-id"
H_CONTENT_TYPE = "content-type"  # not ours, but set beside ours (canonical: application/json)
H_ROUTING_KEY = "hs-routing-key"  # the provider's event name, when the request carried one
# The provider's delivery/event id when a header carried it (raw topic); the canonical
# event id (canonical topic).
H_EVENT_ID = "hs-event-id"
H_TEST = "hs-test"  # "1": the request carried X-Hookstream-Test (a smoke test of our own)
# Set only on a record that did not come through ingest: "api-backfill" (``hookstream
# backfill``, fetched from a provider's API). Absent: a webhook delivery.
H_ORIGIN = "hs-origin"

# The canonical topic (normalizer -> sinks): sinks filter on it without parsing.
H_EVENT_TYPE = "hs-event-type"

# A sink's retry topic hookstream.sink.<name>.retry.v1 (parked events).
H_ATTEMPT = "hs-retry-attempt"  # the number of the offer to come (1: the first re-offer)
H_NOT_BEFORE = "hs-retry-not-before"  # integer ms since the epoch

# Dead letters (every stage's dead-letter topic): the original headers, plus these.
DLQ_PREFIX = "hs-dlq-"
H_DLQ_REASON = "hs-dlq-reason"  # the stage's closed set: hookstream.core.errors.reasons_of
H_DLQ_STAGE = "hs-dlq-stage"  # "normalizer", "sink:warehouse", ...
H_DLQ_DETAIL = "hs-dlq-detail"  # human-readable, truncated
H_DLQ_ORIGIN = "hs-dlq-origin"  # "<topic>/<partition>/<offset>" of the failed record
H_DLQ_AT = "hs-dlq-at"  # integer ms since the epoch
