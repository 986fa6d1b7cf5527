"""The normalizer's Decoder: every dead-letter reason from bytes and headers, no network."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from hookstream.core import errors
from hookstream.core.errors import Invalid
from hookstream.core.record import RawDelivery
from hookstream.core.samples import samples
from hookstream.core.schemas import SchemaRegistry
from hookstream.normalizer.adapters import ADAPTERS
from hookstream.normalizer.pipeline import Decoder


@dataclasses.dataclass
class Record:
    value: bytes | None
    headers: list[tuple[str, bytes]]
    topic: str = "raw"
    partition: int = 0
    offset: int = 0
    key: bytes | None = None


def record(provider: str, body: bytes, routing_key: str | None = None) -> Record:
    raw = RawDelivery(source=f"{provider}-main", provider=provider, received_at_ms=1,
                      request_id="r", body=body, routing_key=routing_key)
    return Record(body, raw.headers())


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(SchemaRegistry())


def reason_of(decoder: Decoder, rec: Record) -> str:
    with pytest.raises(Invalid) as caught:
        decoder.decode(rec)
    return caught.value.reason


SAAYA = orjson.loads(next(s for s in samples("saaya") if s.event == "session.ended").body)


@pytest.mark.parametrize(("reason", "rec"), [
    (errors.MISSING_METADATA, Record(b"{}", [])),
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
def test_each_reason(decoder: Decoder, reason: str, rec: Record) -> None:
    assert reason_of(decoder, rec) == reason


def test_saaya_versions_restriction(decoder: Decoder) -> None:
    restricted = Decoder(SchemaRegistry(), saaya_versions=("2025-01-01",))
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
