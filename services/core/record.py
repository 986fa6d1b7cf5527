"""The raw-delivery record: what ingest writes to the raw topic, and how to read it back.

The value is exactly the bytes the provider sent; everything hookstream knows
about the delivery travels in Kafka headers, so nothing has to parse the body
to route, replay or audit it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

# Header names on the raw topic (core/headers.py has every one, for every topic).
from .headers import H_CONTENT_TYPE as H_CONTENT_TYPE
from .headers import H_EVENT_ID as H_EVENT_ID
from .headers import H_ORIGIN as H_ORIGIN
from .headers import H_PROVIDER as H_PROVIDER
from .headers import H_RECEIVED_AT as H_RECEIVED_AT
from .headers import H_REQUEST_ID as H_REQUEST_ID
from .headers import H_ROUTING_KEY as H_ROUTING_KEY
from .headers import H_SOURCE as H_SOURCE
from .headers import H_TEST as H_TEST

ORIGIN_API_BACKFILL = "api-backfill"
# The request header that marks a delivery as a test, and the values that set it.
TEST_REQUEST_HEADER = "x-hookstream-test"
TEST_HEADER_VALUES = frozenset({"1", "true"})

KafkaHeaders = Sequence[tuple[str, bytes]]


@dataclasses.dataclass(slots=True)
class RawDelivery:
    """One accepted delivery, as stored on the raw topic. Treat as immutable (not
    ``frozen``: a frozen dataclass's ``__init__`` costs twice as much, and one is
    built per record on the normalizer's hot path)."""

    source: str
    provider: str
    received_at_ms: int
    request_id: str
    body: bytes
    content_type: str | None = None
    routing_key: str | None = None
    event_id: str | None = None
    test: bool = False  # X-Hookstream-Test: 1 / true on the request
    origin: str | None = None  # H_ORIGIN: None for a webhook delivery

    def headers(self) -> list[tuple[str, bytes]]:
        out = [
            (H_SOURCE, self.source.encode()),
            (H_PROVIDER, self.provider.encode()),
            (H_RECEIVED_AT, str(self.received_at_ms).encode()),
            (H_REQUEST_ID, self.request_id.encode()),
        ]
        if self.content_type is not None:
            out.append((H_CONTENT_TYPE, self.content_type.encode()))
        if self.routing_key is not None:
            out.append((H_ROUTING_KEY, self.routing_key.encode()))
        if self.event_id is not None:
            out.append((H_EVENT_ID, self.event_id.encode()))
        if self.test:
            out.append((H_TEST, b"1"))
        if self.origin is not None:
            out.append((H_ORIGIN, self.origin.encode()))
        return out

    @classmethod
    def from_kafka(cls, headers: KafkaHeaders, value: bytes | None) -> RawDelivery:
        """Rebuild from a consumed record; missing required headers raise ``KeyError``."""
        found = {k: v.decode("utf-8", "replace") for k, v in headers}
        get = found.get
        return cls(found[H_SOURCE], found[H_PROVIDER], int(found[H_RECEIVED_AT]),
                   found[H_REQUEST_ID], value or b"", get(H_CONTENT_TYPE), get(H_ROUTING_KEY),
                   get(H_EVENT_ID), get(H_TEST) == "1", get(H_ORIGIN))


def new_request_id() -> str:
    """A delivery's ``hs-request-id`` (ingest's receipt): 128 random bits as hex
    (``uuid4`` costs 4x more, and ingest makes one per request)."""
    return os.urandom(16).hex()


def now_ms() -> int:
    """``hs-received-at`` for a delivery received now: integer ms since the epoch."""
    return time.time_ns() // 1_000_000


@dataclasses.dataclass
class LocalRecord:
    """A raw record as the normalizer's decoder reads it (the fields of aiokafka's
    ``ConsumerRecord`` it uses), for a delivery that did not come from Kafka:
    ``hookstream load``'s accounting decodes its own deliveries, and tests."""

    value: bytes | None
    headers: list[tuple[str, bytes]]
    topic: str = "raw"
    partition: int = 0
    offset: int = 0
    key: bytes | None = None


def marks_test(value: str | None) -> bool:
    """Whether an ``X-Hookstream-Test`` request header's value marks a test (``1`` or
    ``true``, any case, surrounding blanks ignored); absent or anything else: no."""
    return value is not None and value.strip().lower() in TEST_HEADER_VALUES
