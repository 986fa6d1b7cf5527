"""RawDelivery: the raw topic's headers, and reading them back."""

from __future__ import annotations

import pytest

from hookstream.core import record
from hookstream.core.record import RawDelivery

FULL = RawDelivery(
    source="sawt-main",
    provider="sawt",
    received_at_ms=1_800_000_000_123,
    request_id="0123456789abcdef0123456789abcdef",
    body=b'{"call_id":"c-1"}',
    content_type="application/json; charset=utf-8",
    routing_key="call.ended",
    event_id="evt-7",
)


def test_headers_full() -> None:
    assert FULL.headers() == [
        ("hs-source", b"sawt-main"),
        ("hs-provider", b"sawt"),
        ("hs-received-at", b"1800000000123"),
        ("hs-request-id", b"0123456789abcdef0123456789abcdef"),
        ("content-type", b"application/json; charset=utf-8"),
        ("hs-routing-key", b"call.ended"),
        ("hs-event-id", b"evt-7"),
    ]
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in FULL.headers())


def test_headers_minimal_omit_optional() -> None:
    minimal = RawDelivery("s", "sarj", 1, "r", b"x")
    assert [k for k, _ in minimal.headers()] == [
        record.H_SOURCE, record.H_PROVIDER, record.H_RECEIVED_AT, record.H_REQUEST_ID]


@pytest.mark.parametrize("delivery", [
    FULL,
    RawDelivery("s", "sarj", 0, "r", b""),
    RawDelivery("s", "saaya", 5, "r", b"\x00\xff not utf-8", event_id="msg_1"),
    RawDelivery("s", "sawt", 5, "r", b"{}", routing_key="x"),
])
def test_round_trip(delivery: RawDelivery) -> None:
    assert RawDelivery.from_kafka(delivery.headers(), delivery.body) == delivery


def test_from_kafka_none_value_and_extra_headers() -> None:
    headers = [*FULL.headers(), ("traceparent", b"00-abc")]
    back = RawDelivery.from_kafka(headers, None)
    assert back.body == b""
    assert back.routing_key == "call.ended"


def test_from_kafka_missing_required_header_raises_key_error() -> None:
    headers = [h for h in FULL.headers() if h[0] != record.H_REQUEST_ID]
    with pytest.raises(KeyError):
        RawDelivery.from_kafka(headers, b"")


def test_from_kafka_bad_received_at() -> None:
    headers = [(k, b"soon" if k == record.H_RECEIVED_AT else v) for k, v in FULL.headers()]
    with pytest.raises(ValueError):
        RawDelivery.from_kafka(headers, b"")
