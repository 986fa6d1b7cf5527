"""``hookstream summary``: what is on each topic and in the warehouse."""

from __future__ import annotations

import argparse
import asyncio
import os

from ..core.config import KafkaSettings, load
from ..core.kafka import scan
from ..core.times import parse_time


async def _summary(kafka: KafkaSettings, since_ms: int | None, schema: str) -> dict[str, int]:
    import asyncpg

    from ..core.config import PostgresSettings
    from ..sinks.warehouse import schema as warehouse

    counts: dict[str, int] = {}
    for label, topic in (("raw", kafka.raw_topic), ("events", kafka.events_topic),
                         ("dead letters", kafka.dlq_topic)):
        counts[label] = sum([len(b) async for b in scan(kafka, topic, since_ms)])
    conn = await asyncpg.connect(load(PostgresSettings).dsn)
    try:
        since = since_ms / 1000 if since_ms is not None else 0.0
        counts["warehouse rows"] = await warehouse.count_events_since(conn, schema, since)
        counts["warehouse calls"] = await warehouse.count_calls_since(conn, schema, since)
    except asyncpg.UndefinedTableError:
        counts["warehouse rows"] = counts["warehouse calls"] = 0
    finally:
        await conn.close()
    return counts


def cmd_summary(args: argparse.Namespace) -> int:
    counts = asyncio.run(_summary(load(KafkaSettings), args.from_, args.schema))
    for label, value in counts.items():
        print(f"{label:<18}{value:>8}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``summary``."""
    summary = sub.add_parser("summary", help="count what is on each topic and in the warehouse",
                             description="Records on the raw, canonical and dead-letter "
                             "topics and rows in the warehouse, optionally since a time.")
    summary.add_argument("--from", dest="from_", type=parse_time,
                         help="only since: ISO 8601, epoch ms, or 10m (ago)")
    summary.add_argument("--schema", default=os.environ.get("HOOKSTREAM_WAREHOUSE_SCHEMA",
                                                            "warehouse"))
    summary.set_defaults(func=cmd_summary)
