"""A realistic generated load of every provider, signed, at a steady rate.

Traffic is built from the providers' own samples with new identities: each provider
with a ``ProviderSpec.load_mix`` makes its share of conversations (the deliveries one
call or session makes: a call walking its lifecycle, a session calling tools, with
agent, campaign and knowledge-base events between; see each provider's
``load_mix.py``). A small share of deliveries is redelivered (as providers retry) and
a smaller share is malformed, so dedupe and the dead-letter topic have work to do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from ..core.config import KafkaSettings
from ..core.errors import Invalid
from ..core.kafka import make_consumer, topic_partitions
from ..core.postgres import DATABASE_ERRORS
from ..core.record import H_REQUEST_ID, LocalRecord, RawDelivery
from ..core.schemas import SchemaRegistry
from ..core.sources import Source
from ..normalizer.pipeline import Decoder
from ..providers import PROVIDERS
from ..sinks.warehouse import schema as warehouse
from .samples import MediaUrl, Sample, fresh_copy, samples, with_media

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Delivery:
    sample: Sample
    kind: str  # "new", "redelivery" or "malformed"


def _by_event(provider: str) -> dict[str, list[Sample]]:
    """Event name -> its samples, the one named after the event first (one call's
    lifecycle samples share a call id; the numbered variants belong to other calls)."""
    found: dict[str, list[Sample]] = {}
    for sample in samples(provider):
        found.setdefault(sample.event, []).append(sample)
    for event, group in found.items():
        group.sort(key=lambda s: s.name != event)
    return found


def _tweak(sample: Sample, rng: random.Random) -> Sample:
    """Vary the numbers a dashboard would show (durations, costs, sentiment)."""
    body = orjson.loads(sample.body)
    data = PROVIDERS[sample.provider].figures(body)
    if isinstance(data, dict):
        if isinstance(data.get("durationMs"), int):
            data["durationMs"] = rng.randint(20_000, 900_000)
        if isinstance(data.get("duration_s"), int):
            data["duration_s"] = rng.randint(10, 900)
        if isinstance(data.get("sentiment"), dict):
            avg = round(rng.uniform(-0.9, 0.9), 2)
            data["sentiment"] = {"avg": avg, "min": max(-1, avg - 0.3), "max": min(1, avg + 0.3)}
        if isinstance(data.get("user_sentiment"), str):
            data["user_sentiment"] = rng.choice(["POSITIVE", "NEUTRAL", "NEGATIVE"])
    return dataclasses.replace(sample, body=orjson.dumps(body))


def conversations(seed: int | None = None, media: MediaUrl | None = None
                  ) -> Iterator[list[Sample]]:
    """An endless stream of conversations, each the deliveries one call or session makes.
    A seed repeats a stream exactly; without one every run has ids of its own (a second
    run on the same stack must be new events, not redeliveries of the first). ``media``:
    the recordings and transcripts linked are served there (``samples.with_media``)."""
    rng = random.Random(seed)
    # Each provider's share of the conversations, in the registry's (name) order.
    mixes = [(spec.load_mix, _by_event(name)) for name, spec in sorted(PROVIDERS.items())
             if spec.load_mix is not None]
    total = sum(mix.share for mix, _ in mixes)
    for n in itertools.count():
        tag = f"{n:07d}{rng.getrandbits(24):06x}"
        choice = rng.random() * total
        index = 0
        while index < len(mixes) - 1 and choice >= mixes[index][0].share:
            choice -= mixes[index][0].share
            index += 1
        mix, by_event = mixes[index]
        picked = mix.conversation(rng, by_event)
        fresh = [_tweak(fresh_copy(s, tag), rng) for s in picked]
        yield fresh if media is None else [with_media(s, media) for s in fresh]


def deliveries(redeliver: float, malformed: float, seed: int | None = None,
               media: MediaUrl | None = None) -> Iterator[Delivery]:
    """Every sample once (fresh ids: each documented event kind is exercised), then
    generated conversations with some redeliveries and a few malformed bodies.
    ``media``: the recordings and transcripts linked are served there."""
    rng = random.Random(seed)
    first = f"s{rng.getrandbits(32):08x}"
    for sample in samples():
        fresh = fresh_copy(sample, first)
        yield Delivery(fresh if media is None else with_media(fresh, media), "new")
    for conversation in conversations(seed, media):
        for sample in conversation:
            if rng.random() < malformed:
                broken = sample.body[: len(sample.body) // 2]  # cut short: not JSON
                yield Delivery(dataclasses.replace(sample, body=broken), "malformed")
                continue
            yield Delivery(sample, "new")
            if rng.random() < redeliver:
                yield Delivery(sample, "redelivery")


@dataclasses.dataclass
class LoadStats:
    sent: int = 0
    accepted: int = 0
    by_status: Counter[int] = dataclasses.field(default_factory=Counter)
    by_kind: Counter[str] = dataclasses.field(default_factory=Counter)
    latencies_ms: list[float] = dataclasses.field(default_factory=list)


async def run_load(
    url: str,
    sources: dict[str, Source],
    rate: float,
    seconds: float,
    *,
    redeliver: float = 0.02,
    malformed: float = 0.005,
    concurrency: int = 64,
    progress: Callable[[LoadStats], Awaitable[None]] | None = None,
    sign: Callable[[Source, Sample], tuple[str, dict[str, str]]],
    on_accepted: Callable[[Delivery, Source, dict[str, str], str], None] | None = None,
    media: MediaUrl | None = None,
) -> LoadStats:
    """Post deliveries at ``rate`` per second for ``seconds``; returns what was sent.
    ``media``: the recordings and transcripts they link are served there."""
    stats = LoadStats()
    limit = asyncio.Semaphore(concurrency)
    stream = deliveries(redeliver, malformed, media=media)
    started = time.monotonic()
    tasks: set[asyncio.Task[None]] = set()

    async with httpx.AsyncClient(base_url=url, timeout=15,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def post(delivery: Delivery) -> None:
            source = sources[delivery.sample.provider]
            path, headers = sign(source, delivery.sample)
            t0 = time.perf_counter()
            receipt = ""
            try:
                response = await client.post(path, content=delivery.sample.body,
                                             headers=headers)
                status = response.status_code
                if status == 202:
                    receipt = response.json()["receipt"]
            except httpx.HTTPError:
                status = 599
            finally:
                limit.release()
            stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
            stats.by_status[status] += 1
            if status == 202:
                stats.accepted += 1
                stats.by_kind[delivery.kind] += 1
                if on_accepted is not None:
                    on_accepted(delivery, source, headers, receipt)

        last_report = 0.0
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) - stats.sent
            for _ in range(max(0, due)):
                await limit.acquire()
                task = asyncio.create_task(post(next(stream)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                stats.sent += 1
            if progress is not None and elapsed - last_report >= 1:
                await progress(stats)
                last_report = elapsed
            await asyncio.sleep(0.005)
        if tasks:
            await asyncio.gather(*tasks)
    return stats


class Accounting:
    """Where each acknowledged delivery ended: its event in the warehouse (by event id,
    so a redelivery counts with its original) or the delivery on the dead-letter topic
    (by receipt). Exact per delivery, whatever other traffic the pipeline carries."""

    def __init__(self, kafka: KafkaSettings, dsn: str, schema: str) -> None:
        self._kafka = kafka
        self._dsn = dsn
        self._schema = schema
        self._decoder = Decoder(SchemaRegistry())
        self.receipt_event: dict[str, str | None] = {}  # receipt -> expected event id
        self.in_warehouse: set[str] = set()  # event ids found
        self.dead: set[str] = set()  # receipts found on the DLQ
        self._consumer: AIOKafkaConsumer | None = None
        self._pool: asyncpg.Pool | None = None
        self.refresh_errors = 0  # refreshes cut short by a database or broker outage

    def expect(self, delivery: Delivery, source: Source, headers: dict[str, str],
               receipt: str) -> None:
        raw = RawDelivery(source=source.name, provider=source.provider.name,
                          received_at_ms=0, request_id=receipt, body=delivery.sample.body,
                          routing_key=source.recorded_routing_key(
                              source.provider.routing_key(delivery.sample.event)))
        record = LocalRecord(raw.body, raw.headers())
        try:
            self.receipt_event[receipt] = self._decoder.decode(record).event_id
        except Invalid:
            self.receipt_event[receipt] = None  # must show up on the DLQ

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=2)
        self._consumer = make_consumer(self._kafka, None)
        await self._consumer.start()
        partitions = await topic_partitions(self._consumer, self._kafka.dlq_topic)
        self._consumer.assign(partitions)
        for tp, end in (await self._consumer.end_offsets(partitions)).items():
            self._consumer.seek(tp, end)

    async def refresh(self) -> None:
        assert self._pool is not None and self._consumer is not None
        pending = list({e for e in self.receipt_event.values()
                        if e is not None and e not in self.in_warehouse})
        if pending:
            try:
                self.in_warehouse.update(
                    await warehouse.stored_event_ids(self._pool, self._schema, pending))
            except asyncpg.UndefinedTableError:
                pass
            except DATABASE_ERRORS as exc:  # a PostgreSQL restart: look again next time
                self.refresh_errors += 1
                log.warning("warehouse not readable; retrying", extra={"error": repr(exc)})
        try:
            batch = await self._consumer.getmany(timeout_ms=100)
        except KafkaError as exc:  # a broker restart: the consumer reconnects by itself
            self.refresh_errors += 1
            log.warning("dead-letter topic not readable; retrying", extra={"error": repr(exc)})
            return
        for records in batch.values():
            for r in records:
                receipt = next((v.decode() for k, v in r.headers if k == H_REQUEST_ID), None)
                if receipt in self.receipt_event:
                    self.dead.add(receipt)

    def counts(self) -> tuple[int, int, int]:
        """(deliveries whose event is in the warehouse, dead-lettered, neither yet)."""
        stored = sum(1 for r, e in self.receipt_event.items()
                     if e is not None and e in self.in_warehouse and r not in self.dead)
        dead = len(self.dead)
        return stored, dead, len(self.receipt_event) - stored - dead

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._pool is not None:
            await self._pool.close()
