"""Wiring of the normalizer process: clients, health, the consume loop, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from ..core import health
from ..core.config import KafkaSettings, PostgresSettings
from ..core.consumer import ConsumeLoop
from ..core.errors import Retryable
from ..core.headers import H_SOURCE
from ..core.kafka import ProducerKeeper, make_consumer, scan
from ..core.postgres import DATABASE_ERRORS, create_pool
from ..core.schemas import SchemaRegistry
from ..core.sources import load_test_calls
from ..core.stage import LoopSettings, Subscription, consume, serving_health
from ..providers import accepted_versions
from .dedupe import DedupeStore
from .pipeline import Decoder, Normalizer
from .settings import NormalizerSettings

log = logging.getLogger(__name__)

PURGE_INTERVAL_S = 3600


@contextlib.asynccontextmanager
async def normalizer_parts(
    settings: NormalizerSettings, kafka: KafkaSettings, pg: PostgresSettings
) -> AsyncIterator[tuple[Normalizer, DedupeStore, asyncpg.Pool, ProducerKeeper]]:
    """The normalizer with its producer, dedupe store and pool (shared by run and replay)."""
    pool = await create_pool(pg)
    producers = ProducerKeeper(kafka, "normalizer")
    try:
        dedupe = DedupeStore(pool, settings.dedupe_window_s, settings.dedupe_cache_size,
                             settings.dedupe_table)
        await dedupe.migrate()
        await producers.start()
        test_calls = load_test_calls(settings.sources_file) if settings.sources_file else {}
        versions = (settings.versions if settings.versions is not None
                    else accepted_versions())
        decoder = Decoder(SchemaRegistry(), versions,
                          max_depth=settings.max_depth, max_body_bytes=settings.max_body_bytes,
                          test_calls=test_calls)
        yield (Normalizer(kafka, producers, dedupe, decoder, settings.produce_timeout_s),
               dedupe, pool, producers)
    finally:
        await producers.stop(settings.shutdown_timeout_s)
        await pool.close()


async def _purge_forever(dedupe: DedupeStore) -> None:
    while True:
        try:
            removed = await dedupe.purge()
            log.info("dedupe marks past the window removed", extra={"removed": removed})
        except DATABASE_ERRORS as exc:
            log.warning("dedupe purge failed", extra={"error": repr(exc)})
        await asyncio.sleep(PURGE_INTERVAL_S)


async def run(settings: NormalizerSettings, kafka: KafkaSettings, pg: PostgresSettings,
              stop: asyncio.Event, serve_http: bool = True) -> None:
    """Consume the raw topic until ``stop`` is set; then finish the batch, commit, leave."""
    checks = health.Health()
    loops: list[ConsumeLoop] = []
    checks.add_check("consumer", lambda: bool(loops) and loops[0].started)
    async with (serving_health(checks, settings.http_host, settings.http_port, serve_http),
                normalizer_parts(settings, kafka, pg) as (normalizer, dedupe, _, _)):
        purge: list[asyncio.Task[None]] = []

        def consuming() -> None:
            purge.append(asyncio.create_task(_purge_forever(dedupe)))
            log.info("normalizer consuming", extra={"topic": kafka.raw_topic,
                                                    "group": settings.group_id})

        try:
            await consume(
                [Subscription(kafka.raw_topic, settings.group_id, normalizer.complete,
                              normalizer.decode_batch)],
                stop,
                make_consumer=lambda group: make_consumer(
                    kafka, group, max_poll_records=settings.max_batch),
                dead_letter=normalizer.dead_letter,
                settings=LoopSettings(settings.max_batch, settings.poll_timeout_ms,
                                      settings.retry_backoff_max_s,
                                      settings.shutdown_timeout_s),
                loops=loops, on_consuming=consuming)
        finally:
            for task in purge:
                task.cancel()
            log.info("normalizer stopped")


async def replay(
    settings: NormalizerSettings,
    kafka: KafkaSettings,
    pg: PostgresSettings,
    from_ms: int,
    to_ms: int | None,
    source: str | None,
    progress: Any = None,
) -> dict[str, int]:
    """Re-run raw deliveries received in [from_ms, to_ms] through the normalizer.

    Reads the raw topic directly (no consumer group, no commits): deliveries that
    already became canonical events are dropped as duplicates, and those that were
    dead-lettered before (e.g. before a schema fix) are normalised now.
    """
    totals = {"read": 0, "matched": 0, "published": 0, "duplicates": 0, "dead_letters": 0}
    async with normalizer_parts(settings, kafka, pg) as (normalizer, _, _, _):
        async for batch in scan(kafka, kafka.raw_topic, from_ms, to_ms, settings.max_batch):
            totals["read"] += len(batch)
            selected = [r for r in batch
                        if source is None or _source_of(r.headers) == source]
            if selected:
                result = await _handle_with_retry(normalizer, selected)
                totals["matched"] += len(selected)
                totals["published"] += result.published
                totals["duplicates"] += result.duplicates
                totals["dead_letters"] += result.dead_letters
            if progress is not None:
                progress(totals)
    return totals


async def _handle_with_retry(normalizer: Normalizer, records: Sequence[Any]) -> Any:
    delay = 0.5
    for attempt in range(8):
        try:
            return await normalizer.handle(records)
        except Retryable as exc:
            if attempt == 7:
                raise
            log.warning("replay batch failed; retrying", extra={"error": str(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)
    raise AssertionError("unreachable")


def _source_of(headers: Sequence[tuple[str, bytes]]) -> str | None:
    for key, value in headers:
        if key == H_SOURCE:
            return value.decode()
    return None
