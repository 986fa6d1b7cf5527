"""The warehouse schema's one owner, and its public face: what every other part of
hookstream that reads or shares the warehouse uses (the recordings and transcripts
sinks, ``hookstream summary``, the load generator's accounting), instead of the
warehouse sink's internals (``store.py``).

* migrations: :data:`MIGRATIONS` (the SQL files, applied in order) and
  :func:`migrate` (also the monthly partitions of ``events``);
* the pool: :func:`create_pool` (the schema created if missing, and on the
  ``search_path``, so queries name tables unqualified);
* keys: :func:`call_key` (the ``calls`` row of a canonical event) and
  :func:`subject_key` (the same from a provider and a call or session id);
* named queries over the schema, each taking the schema name where it is not on
  the ``search_path`` (:func:`count_events_since`, :func:`count_calls_since`,
  :func:`stored_event_ids`).
"""

from __future__ import annotations

import datetime as dt
import zlib
from pathlib import Path
from typing import Any

import asyncpg

from ...core import migrate as migrations
from ...core.config import PostgresSettings
from ...core.events import is_test
from ...core.postgres import create_pool as create_postgres_pool

MIGRATIONS = Path(__file__).with_name("migrations")

# Lifecycle order: a call's row only moves forward. Rank 0 events (analysis)
# never move the state; they only fill fields that are still empty. A canonical
# type listed here is a lifecycle event: it has a ``calls`` row (``call_key``).
STATE_RANK = {
    "call.analyzed": 0,
    "call.initializing": 10,
    "session.started": 20,
    "call.started": 20,
    "call.updated": 30,
    "session.escalated": 35,
    "call.ended": 40,
    "call.not_connected": 40,
    "session.ended": 40,
    "session.errored": 40,
}


def nul_free(value: Any) -> str | None:
    """A text value as PostgreSQL can store it (NUL dropped); None if not a string."""
    return value.replace("\x00", "") if isinstance(value, str) else None


def nul_free_json(value: Any) -> Any:
    """A JSON value as PostgreSQL's jsonb can store it: NUL dropped from every string,
    keys included (SQLSTATE 22P05 otherwise)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {nul_free_json(k): nul_free_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nul_free_json(v) for v in value]
    return value


def subject_key(provider: str, subject: str) -> str:
    """The ``calls.call_key`` of a call (or session) id of a provider."""
    return f"{provider}:{subject}"


def call_key(event: dict[str, Any]) -> str | None:
    """``<provider>:<call or session id>`` of a lifecycle event, else None (also for a
    test delivery: it is stored in ``events`` but is no call's state)."""
    # NUL-free, as the stored event it is read back from (the key is a query argument):
    # a call id of only NUL is no call id.
    subject = nul_free(event.get("call_id")) or nul_free(event.get("session_id"))
    if str(event.get("type")) not in STATE_RANK or not subject or is_test(event):
        return None
    return subject_key(str(event.get("provider")), subject).replace("\x00", "")


async def create_pool(pg: PostgresSettings, schema: str) -> asyncpg.Pool:
    """A pool on the warehouse: ``schema`` created if missing, first on the search path."""
    admin = await asyncpg.connect(pg.dsn)
    try:
        # Every sink on the warehouse runs this at start, and they start together:
        # two concurrent CREATE SCHEMA IF NOT EXISTS can both miss the schema and
        # one then fails on pg_namespace's unique index. Serialized per schema name.
        async with admin.transaction():
            await admin.execute("SELECT pg_advisory_xact_lock($1)",
                                zlib.crc32(f"hookstream-schema-{schema}".encode()))
            await admin.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        await admin.close()
    return await create_postgres_pool(
        pg, server_settings={"search_path": f'"{schema}", public'})


class Partitions:
    """The monthly partitions of ``events`` known to exist (created when missing)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._months: set[tuple[int, int]] = set()

    async def ensure(self, months: set[tuple[int, int]]) -> None:
        """Monthly partitions of ``events`` (rows of other months go to events_default).

        A month whose rows already sit in the default partition cannot get its own
        partition any more; such rows stay queryable there, so that is not an error.
        """
        if months <= self._months:
            return
        for year, month in sorted(months - self._months):
            nxt = (year + month // 12, month % 12 + 1)
            name = f"events_{year:04d}_{month:02d}"
            try:
                await self._pool.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF events FOR VALUES"
                    f" FROM ('{year:04d}-{month:02d}-01') TO ('{nxt[0]:04d}-{nxt[1]:02d}-01')")
            except asyncpg.exceptions.CheckViolationError:
                pass  # rows of that month are already in events_default
            except (asyncpg.exceptions.DuplicateTableError,
                    asyncpg.exceptions.UniqueViolationError):
                # A concurrent replica created it (IF NOT EXISTS does not serialize:
                # the loser may hit the catalog's unique index instead).
                pass
            self._months.add((year, month))


async def migrate(pool: asyncpg.Pool, partitions: Partitions | None = None) -> list[str]:
    """Apply the migrations not applied yet (every sink that shares the warehouse does
    at start: any of them may start first), and this month's and next month's
    partitions of ``events``; returns the names of those applied now."""
    async with pool.acquire() as conn:
        applied = await migrations.apply(conn, "warehouse", MIGRATIONS)
    today = dt.datetime.now(dt.UTC)
    this, following = (today.year, today.month), (
        today.year + today.month // 12, today.month % 12 + 1)
    await (partitions or Partitions(pool)).ensure({this, following})
    return applied


# ---------------------------------------------------------------- named queries
async def count_events_since(conn: Any, schema: str, since_s: float) -> int:
    """Rows of ``events`` received at or after ``since_s`` (epoch seconds)."""
    return int(await conn.fetchval(
        f'SELECT count(*) FROM "{schema}".events WHERE received_at >= to_timestamp($1)',
        since_s) or 0)


async def count_calls_since(conn: Any, schema: str, since_s: float) -> int:
    """Rows of ``calls`` first or last touched at or after ``since_s`` (epoch seconds)."""
    return int(await conn.fetchval(
        f'SELECT count(*) FROM "{schema}".calls WHERE last_event_at >= to_timestamp($1)'
        " OR first_event_at >= to_timestamp($1)", since_s) or 0)


async def stored_event_ids(conn: Any, schema: str, event_ids: list[str]) -> set[str]:
    """Which of ``event_ids`` the warehouse holds (``event_ids``: the claim of each)."""
    rows = await conn.fetch(
        f'SELECT event_id::text FROM "{schema}".event_ids WHERE event_id = ANY($1::uuid[])',
        event_ids)
    return {r[0] for r in rows}
