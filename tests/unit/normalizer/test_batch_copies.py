"""Two copies of one event in one batch (a provider's retry right behind its original,
issue 13): the normalizer publishes one, and it is the first copy, bytes and receive
time, not the last. Before, the event kept was the first but the bytes published were
the last copy's, so the warehouse stored the retry's receive time and receipt."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson

from hookstream.core.config import KafkaSettings, load
from hookstream.core.events import CanonicalEvent
from hookstream.core.record import LocalRecord, RawDelivery
from hookstream.core.schemas import SchemaRegistry
from hookstream.devtools.samples import samples
from hookstream.normalizer.pipeline import Decoder, Normalizer


class NoDedupe:
    def __init__(self) -> None:
        self.marked: list[str] = []

    async def seen(self, ids: list[str]) -> set[str]:
        return set()

    async def mark(self, ids: list[str]) -> None:
        self.marked += ids


def test_the_first_copy_in_a_batch_is_the_one_published() -> None:
    sample = next(s for s in samples("sawt") if s.name == "call.updated")
    original = RawDelivery(source="sawt-main", provider="sawt", received_at_ms=1_000,
                           request_id="first", body=sample.body, routing_key="call.updated")
    retry = dataclasses.replace(original, received_at_ms=3_000, request_id="retry")
    dedupe = NoDedupe()
    normalizer = Normalizer(load(KafkaSettings), None, dedupe,  # type: ignore[arg-type]
                            Decoder(SchemaRegistry()))
    published: list[tuple[CanonicalEvent, bytes]] = []

    async def publish(events: list[tuple[CanonicalEvent, bytes]], dead: Any) -> None:
        published.extend(events)

    normalizer._publish = publish  # type: ignore[method-assign]
    records = [LocalRecord(r.body, r.headers()) for r in (original, retry)]
    result = asyncio.run(normalizer.handle(records))
    assert (result.published, result.duplicates) == (1, 1)
    [(event, value)] = published
    assert event.request_id == "first"
    out = orjson.loads(value)
    assert (out["request_id"], out["received_at"]) == ("first", "1970-01-01T00:00:01.000Z")
    assert dedupe.marked == [event.event_id]
