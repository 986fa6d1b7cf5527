"""The dedupe record: which canonical event ids were already published.

PostgreSQL is the authority (shared by every replica, survives restarts); an
in-process LRU in front of it saves the round trip for recent ids. A mark is
written only after the event's publish was acknowledged, so a crash in between
republishes (a duplicate the sinks absorb), never loses.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import asyncpg

SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    event_id uuid PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {table}_seen_at ON {table} (seen_at);
"""


class DedupeStore:
    def __init__(self, pool: asyncpg.Pool, window_s: int, cache_size: int,
                 table: str = "hookstream_dedupe") -> None:
        if not table.replace("_", "").isalnum():
            raise ValueError(f"dedupe table name {table!r} must be alphanumeric/underscore")
        self._table = table
        self._pool = pool
        self._window_s = window_s
        self._cache: OrderedDict[str, None] = OrderedDict()
        self._cache_size = cache_size

    async def migrate(self) -> None:
        async with self._pool.acquire() as conn:
            # Serialise concurrent replicas' first start.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(7291001)")
                await conn.execute(SCHEMA.format(table=self._table))

    def _remember(self, ids: Iterable[str]) -> None:
        for event_id in ids:
            self._cache[event_id] = None
            self._cache.move_to_end(event_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def seen(self, ids: list[str]) -> set[str]:
        """The subset of ``ids`` already published within the window."""
        found = {i for i in ids if i in self._cache}
        unknown = [i for i in ids if i not in found]
        if unknown:
            rows = await self._pool.fetch(
                f"SELECT event_id::text FROM {self._table} WHERE event_id = ANY($1::uuid[])"
                " AND seen_at > now() - make_interval(secs => $2)",
                unknown, float(self._window_s),
            )
            stored = {r[0] for r in rows}
            self._remember(stored)
            found |= stored
        return found

    async def mark(self, ids: list[str]) -> None:
        if not ids:
            return
        await self._pool.execute(
            f"INSERT INTO {self._table} (event_id) SELECT unnest($1::uuid[])"
            " ON CONFLICT (event_id) DO UPDATE SET seen_at = now()",
            ids,
        )
        self._remember(ids)

    async def purge(self) -> int:
        """Forget ids older than the window; returns how many."""
        result = await self._pool.execute(
            f"DELETE FROM {self._table} WHERE seen_at < now() - make_interval(secs => $1)",
            float(self._window_s),
        )
        return int(result.split()[-1])
