"""``hookstream load`` must survive the faults it measures (issue 12): its accounting
refresh outlives a PostgreSQL restart and a broker restart."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiokafka.errors import KafkaConnectionError

from hookstream.core.config import KafkaSettings
from hookstream.devtools.loadgen import Accounting


class DownPool:
    async def fetch(self, *args: Any) -> list[Any]:
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")


class DownConsumer:
    async def getmany(self, timeout_ms: int) -> dict[Any, Any]:
        raise KafkaConnectionError("Connection at 127.0.0.1:9092 closed")


async def test_refresh_survives_a_database_and_a_broker_outage() -> None:
    accounting = Accounting(KafkaSettings(), "postgresql://unused", "warehouse")
    accounting.receipt_event["r1"] = "00000000-0000-5000-8000-000000000000"
    accounting._pool = DownPool()  # type: ignore[assignment]
    accounting._consumer = DownConsumer()  # type: ignore[assignment]
    await accounting.refresh()  # no exception: counted, retried on the next refresh
    assert accounting.refresh_errors == 2
    assert accounting.counts() == (0, 0, 1)  # still pending, not lost
