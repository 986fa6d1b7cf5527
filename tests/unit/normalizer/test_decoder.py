"""The normalizer's Decoder: every dead-letter reason from bytes and headers, no network."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from hookstream.core import errors
from hookstream.core.errors import Invalid
from hookstream.core.record import LocalRecord, RawDelivery
from hookstream.core.schemas import SchemaRegistry
from hookstream.devtools.samples import samples
from hookstream.normalizer.pipeline import Decoder
from hookstream.providers import PROVIDERS as _PROVIDERS

ADAPTERS = {name: spec.adapter for name, spec in _PROVIDERS.items()}


def record(provider: str, body: bytes, routing_key: str | None = None) -> LocalRecord:
    raw = RawDelivery(source=f"{provider}-main", provider=provider, received_at_ms=1,
                      request_id="r", body=body, routing_key=routing_key)
    return LocalRecord(body, raw.headers())


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(SchemaRegistry())


def reason_of(decoder: Decoder, rec: LocalRecord) -> str:
    with pytest.raises(Invalid) as caught:
        decoder.decode(rec)
    return caught.value.reason


SAAYA = orjson.loads(next(s for s in samples("saaya") if s.event == "session.ended").body)


@pytest.mark.parametrize(("reason", "rec"), [
    (errors.MISSING_METADATA, LocalRecord(b"{}", [])),
    (errors.UNKNOWN_PROVIDER, record("vonage", b"{}")),
    (errors.INVALID_UTF8, record("sarj", b'{"call_id": "\xff"}')),
    (errors.MALFORMED_JSON, record("sarj", b'{"call_id": ')),
    (errors.NOT_AN_OBJECT, record("sarj", b"[1, 2]")),
    (errors.UNKNOWN_EVENT_TYPE, record("sarj", b'{"call_id": "c", "payload": {"type": "x"}}')),
    (errors.UNKNOWN_EVENT_TYPE, record("sawt", b'{"call_id": "c"}', routing_key="call.exploded")),
    (errors.UNKNOWN_VERSION, record("saaya", orjson.dumps({**SAAYA, "version": "1999-01-01"}))),
    (errors.SCHEMA_VIOLATION, record("saaya", orjson.dumps(
        {**SAAYA, "data": {**SAAYA["data"], "durationMs": "long"}}))),
])
def test_each_reason(decoder: Decoder, reason: str, rec: LocalRecord) -> None:
    assert reason_of(decoder, rec) == reason


def test_saaya_versions_restriction(decoder: Decoder) -> None:
    restricted = Decoder(SchemaRegistry(), {"saaya": ("2025-01-01",)})
    rec = record("saaya", orjson.dumps(SAAYA))
    assert reason_of(restricted, rec) == errors.UNKNOWN_VERSION
    assert decoder.decode(rec).type == "session.ended"


def test_a_mapping_bug_is_a_dead_letter_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = ADAPTERS["sarj"]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("oops")

    monkeypatch.setattr(adapter, "to_canonical", broken)
    sample = next(samples("sarj"))
    assert reason_of(Decoder(SchemaRegistry()), record("sarj", sample.body)) == \
        errors.MAPPING_FAILED


def test_every_sample_decodes_with_a_stable_event_id(decoder: Decoder) -> None:
    for sample in samples():
        rk = sample.event if sample.provider == "sawt" else None
        first = decoder.decode(record(sample.provider, sample.body, rk))
        again = decoder.decode(record(sample.provider, sample.body, rk))
        assert first.event_id == again.event_id


def nested(levels: int) -> dict[str, Any]:
    """``{"a": {"a": ... 1 ...}}`` with ``levels`` objects."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value  # type: ignore[no-any-return]


def poison_body(levels: int = 300) -> bytes:
    """Issue 11's poison pill: a valid Sarj.ai ``failed`` delivery with an extra field
    nested ~300 levels deep. orjson parses it (limit 1024) and the schema allows
    unknown fields, but re-serialising it raised (orjson stops at 255)."""
    deep = b'{"a":' * levels + b"1" + b"}" * levels  # orjson.dumps itself stops at 255
    return b'{"call_id":"x","payload":{"type":"failed","x":' + deep + b"}}"


def test_the_poison_delivery_is_too_deep(decoder: Decoder) -> None:
    assert reason_of(decoder, record("sarj", poison_body())) == errors.TOO_DEEP


def test_nesting_beyond_orjsons_own_limit_is_too_deep_not_malformed(decoder: Decoder) -> None:
    body = b'{"call_id":"x","payload":{"type":"failed","x":' + b"[" * 1100 + b"]" * 1100 + b"}}"
    assert reason_of(decoder, record("sarj", body)) == errors.TOO_DEEP


def test_depth_cap_is_exact_and_configurable() -> None:
    capped = Decoder(SchemaRegistry(), max_depth=8)
    # root(1) > payload(2) > x(3) > five more levels = 8: accepted; one more: too deep.
    ok = orjson.dumps({"call_id": "x", "payload": {"type": "failed", "x": nested(6)}})
    deep = orjson.dumps({"call_id": "x", "payload": {"type": "failed", "x": nested(7)}})
    assert capped.decode(record("sarj", ok)).type == "call.not_connected"
    assert reason_of(capped, record("sarj", deep)) == errors.TOO_DEEP
    # Many shallow containers (more brackets than the cap) are not deep.
    wide = orjson.dumps({"call_id": "x", "payload": {"type": "failed",
                                                     "x": [{"a": [1]} for _ in range(50)]}})
    assert capped.decode(record("sarj", wide)).type == "call.not_connected"


def test_a_body_over_the_size_cap_is_too_large() -> None:
    capped = Decoder(SchemaRegistry(), max_body_bytes=100)
    body = orjson.dumps({"call_id": "x", "payload": {"type": "failed", "pad": "p" * 200}})
    assert reason_of(capped, record("sarj", body)) == errors.TOO_LARGE
