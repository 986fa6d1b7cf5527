"""Shared pieces of the benchmarks: unique sample traffic, a pre-filled topic, tables."""

from __future__ import annotations

import itertools
import statistics
import time
import uuid
from collections.abc import Iterator

from hookstream.core.config import KafkaSettings
from hookstream.core.kafka import make_producer
from hookstream.core.record import RawDelivery
from hookstream.devtools.samples import fresh_copy, samples
from hookstream.providers import PROVIDERS

SOURCE_OF = {"saaya": "saaya-main", "sawt": "sawt-main", "sarj": "sarj-main"}


def unique_deliveries(count: int) -> Iterator[RawDelivery]:
    """``count`` raw deliveries cycling through every provider's samples, each a
    distinct event (fresh Saaya ``id`` / call ids) so that none is a duplicate."""
    base = list(samples())
    for n, sample in zip(range(count), itertools.cycle(base), strict=False):
        fresh = fresh_copy(sample, f"{n:08d}{uuid.uuid4().hex[:8]}")
        yield RawDelivery(
            source=SOURCE_OF[sample.provider], provider=sample.provider,
            received_at_ms=time.time_ns() // 1_000_000, request_id=uuid.uuid4().hex,
            body=fresh.body, content_type="application/json",
            routing_key=sample.event if sample.provider == "sawt" else None,
        )


async def fill_topic(kafka: KafkaSettings, topic: str, deliveries: list[RawDelivery]) -> None:
    producer = make_producer(kafka, "bench-fill", linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        futures = []
        for d in deliveries:
            # Keyed as ingest keys them (the provider's natural id).
            key = PROVIDERS[d.provider].natural_key(d.body)
            futures.append(await producer.send(topic, value=d.body, key=key,
                                               headers=d.headers()))
        for f in futures:
            await f
    finally:
        await producer.stop()


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """The median of the rounds, with their range when there was more than one."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def rounds_note(rounds: int, ratios: bool = True) -> str:
    if rounds == 1:
        return "1 round"
    note = f"median of {rounds} rounds (range in brackets)"
    return note + ("; each ratio is taken within its round, baseline and ours measured "
                   "back to back" if ratios else "")


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False))
    out = [title, line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join(out)
