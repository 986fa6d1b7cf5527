"""Issue 11's poison pill, through the real stack under load.

A Sarj.ai delivery whose payload carries an extra field nested ~300 levels deep is
accepted by ingest (202: it is authenticated, and nothing accepted is lost). Before
the fix, re-serialising it in the normalizer raised out of the consume loop and
stopped every replica that took its partition, so nothing behind it reached any
sink. Here it is posted before, amid and after hundreds of ordinary deliveries:
every ordinary one must land in the warehouse, each poison one on the DLQ with
reason ``too_deep`` and its raw bytes, and the normalizer must still be running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import orjson
import pytest

from hookstream.cli import signed_request
from hookstream.core import dlq
from hookstream.core.config import KafkaSettings, PostgresSettings, load
from hookstream.core.sources import Source, load_sources
from hookstream.devtools.samples import Sample, samples
from hookstream.ingest.app import build_app
from hookstream.ingest.settings import IngestSettings
from hookstream.normalizer.service import run as run_normalizer
from hookstream.normalizer.settings import NormalizerSettings
from hookstream.sinks.runner import SinkRunner, SinkSettings
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.sink import WarehouseSink

from ..support import SOURCES_FILE, free_port, own_topics, read_topic, serve
from ..unit.normalizer.test_decoder import poison_body

ORDINARY = 600
CONCURRENCY = 16


def ordinary(n: int) -> list[Sample]:
    """Distinct Sarj.ai deliveries (every sample, each with fresh call ids)."""
    bases = [orjson.loads(s.body) for s in samples("sarj")]
    out = []
    for i in range(n):
        payload = dict(bases[i % len(bases)])
        payload["call_id"] = f"call_{uuid.uuid4()}"
        out.append(Sample("sarj", "failed", f"ordinary-{i}", orjson.dumps(payload)))
    return out


@dataclasses.dataclass
class Stack:
    kafka: KafkaSettings
    client: httpx.AsyncClient
    source: Source
    schema: str
    pool: asyncpg.Pool
    normalizer: asyncio.Task[None]

    async def post(self, sample: Sample) -> httpx.Response:
        path, headers = signed_request(self.source, sample, time.time(),
                                       f"msg_{uuid.uuid4().hex}")
        return await self.client.post(path, content=sample.body, headers=headers)

    async def warehouse_rows(self) -> int:
        try:
            return int(await self.pool.fetchval(f"SELECT count(*) FROM {self.schema}.events"))
        except asyncpg.UndefinedTableError:
            return 0


@pytest.fixture
async def running_stack(stack: KafkaSettings) -> AsyncIterator[Stack]:
    run_id = uuid.uuid4().hex[:10]
    kafka = await own_topics(stack, run_id)
    schema = f"test_poison_{run_id}"
    pg = load(PostgresSettings)
    pool = await asyncpg.create_pool(pg.dsn, min_size=1, max_size=2)
    stop = asyncio.Event()
    normalizer = asyncio.create_task(run_normalizer(
        NormalizerSettings(group_id=f"test-normalizer-{run_id}",
                           dedupe_table=f"test_dedupe_{run_id}", poll_timeout_ms=100),
        kafka, pg, stop, serve_http=False))
    warehouse = asyncio.create_task(SinkRunner(
        WarehouseSink(pg, WarehouseSettings(schema=schema)), kafka,
        SinkSettings(poll_timeout_ms=100, backoff_max_s=1),
        group_id=f"test-warehouse-{run_id}").run(stop, False))
    sources = load_sources(SOURCES_FILE)
    port = free_port()
    try:
        async with serve(build_app(sources, IngestSettings(), kafka), port), \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield Stack(kafka, client, sources["sarj-main"], schema, pool, normalizer)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(normalizer, warehouse), 60)
        await pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await pool.execute(f"DROP TABLE IF EXISTS test_dedupe_{run_id}")
        await pool.close()


async def test_poison_dead_letters_and_every_ordinary_delivery_lands(
        running_stack: Stack) -> None:
    s = running_stack
    poison = Sample("sarj", "failed", "poison", poison_body(300))
    # Ingest accepts it: authenticated, stored, never parsed at the edge.
    deadline = time.monotonic() + 20
    while (first := await s.post(poison)).status_code != 202 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # until the producer is connected
    assert first.status_code == 202, first.text

    queue: asyncio.Queue[Sample] = asyncio.Queue()
    deliveries = ordinary(ORDINARY)
    for i, sample in enumerate(deliveries):
        queue.put_nowait(sample)
        if i in (ORDINARY // 2, ORDINARY - 1):
            queue.put_nowait(poison)  # amid the load, and last

    async def sender() -> None:
        while not queue.empty():
            sample = queue.get_nowait()
            response = await s.post(sample)
            assert response.status_code == 202, response.text

    await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))

    deadline = time.monotonic() + 120
    while await s.warehouse_rows() < ORDINARY and time.monotonic() < deadline:
        assert not s.normalizer.done(), s.normalizer.exception()
        await asyncio.sleep(0.5)
    assert await s.warehouse_rows() == ORDINARY
    assert not s.normalizer.done(), "the normalizer stopped"

    letters = await read_topic(s.kafka, s.kafka.dlq_topic, 3)
    assert len(letters) == 3
    for letter in letters:
        assert dlq.header(letter.headers, dlq.H_REASON) == "too_deep"
        assert dlq.header(letter.headers, dlq.H_STAGE) == "normalizer"
        assert letter.value == poison.body  # the raw bytes, replayable
