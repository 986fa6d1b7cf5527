"""The warehouse sink: every canonical event into PostgreSQL (see store.py)."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from ...core.config import PostgresSettings
from ...core.errors import Retryable, sink_reasons
from ...core.postgres import TRANSIENT_ERRORS
from ..base import SinkEvent, WriteOutcome
from .settings import WarehouseSettings
from .store import Unstorable, WarehouseStore

log = logging.getLogger(__name__)

# Dead-letter reasons of this sink; unstorable: not writable as JSON (too deep, an int
# past 64 bits).
REJECTED, UNSTORABLE = sink_reasons("warehouse", "rejected_by_database", "unstorable_event")


class WarehouseSink:
    name = "warehouse"
    default_http_port = 8092
    takes_test_events = True  # kept in `events`, flagged; never folded into calls

    def __init__(self, pg: PostgresSettings, settings: WarehouseSettings) -> None:
        self._pg = pg
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        self._store: WarehouseStore | None = None
        self.rows_written = 0

    def wants(self, event_type: str) -> bool:
        return True  # the warehouse keeps every event

    def ready(self) -> bool:
        return self._store is not None

    async def start(self) -> None:
        self._pool = await WarehouseStore.create_pool(self._pg, self._settings.schema)
        self._store = WarehouseStore(self._pool, self._settings.copy_timeout_s)
        applied = await self._store.migrate()
        log.info("warehouse ready", extra={"schema": self._settings.schema,
                                           "migrations_applied": applied})

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def write(self, events: list[SinkEvent]) -> WriteOutcome:
        outcome = WriteOutcome()
        await self._write_or_split(events, outcome)
        return outcome

    async def _write_or_split(self, items: list[SinkEvent], outcome: WriteOutcome) -> None:
        """Write; if the database rejects the data, halve the batch to find the bad rows."""
        assert self._store is not None
        try:
            self.rows_written += await self._store.write([_valid(i) for i in items])
        except (asyncpg.DataError, _MissingId, Unstorable) as exc:
            if len(items) == 1:
                reason = UNSTORABLE if isinstance(exc, Unstorable) else REJECTED
                outcome.failed.append((items[0], reason, repr(exc)[:500]))
                return
            middle = len(items) // 2
            await self._write_or_split(items[:middle], outcome)
            await self._write_or_split(items[middle:], outcome)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise Retryable(f"warehouse write failed: {exc!r}") from exc


class _MissingId(ValueError):
    pass


def _valid(item: SinkEvent) -> dict[str, Any]:
    if not isinstance(item.event.get("event_id"), str):
        raise _MissingId("canonical event without event_id")
    return item.event
