"""Writes canonical events into PostgreSQL: idempotent, batched, call state monotonic.

Per batch, in one transaction: look up which event ids are already stored,
``COPY`` only the new ones into ``event_ids`` (the claim: its primary key is
the authority for "once") and ``events``, then recompute the touched calls
from their stored lifecycle events. A replayed or redelivered event is skipped
and changes nothing. Two writers racing on one id cannot both succeed: the
second ``COPY`` fails on the primary key and its batch is retried.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from ...core.config import PostgresSettings
from ...core.events import is_test
from ...core.times import parse_utc
from .schema import MIGRATIONS as MIGRATIONS
from .schema import STATE_RANK as STATE_RANK
from .schema import Partitions, migrate, nul_free_json
from .schema import call_key as call_key
from .schema import create_pool as create_schema_pool
from .schema import nul_free as _text

EVENT_COLUMNS = ("event_id", "received_at", "occurred_at", "provider", "source", "type",
                 "provider_type", "call_id", "session_id", "agent_id", "campaign_id", "test",
                 "event")

# Fields of ``calls`` taken from the canonical event of the same name.
CALL_FIELDS = ("status", "direction", "customer_number", "started_at", "ended_at",
               "duration_s", "cost", "cost_currency", "sentiment", "sentiment_label",
               "summary", "outcome", "transcript", "transcript_url", "recording_url",
               "agent_id", "campaign_id", "call_id", "session_id")
TIMESTAMPS = {"started_at", "ended_at"}
_CALL_COLUMNS = ("call_key", "provider", "source", *CALL_FIELDS, "last_event_type",
                 "state_rank", "state_at", "state_event_id", "first_event_at", "last_event_at")
# The row is recomputed from all of the call's events (fold_call), so the upsert
# simply overwrites; recording_location (the recordings sink's) is not touched.
UPSERT_CALL = (
    f"INSERT INTO calls AS c ({', '.join(_CALL_COLUMNS)}) VALUES "
    f"({', '.join(f'${i}' for i in range(1, len(_CALL_COLUMNS) + 1))}) "
    "ON CONFLICT (call_key) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _CALL_COLUMNS[1:])
    + ", updated_at = now()"
)
# For each id of a batch, in order: its canonical text and whether it is stored.
KNOWN_IDS = (
    "SELECT t.id::text AS id, e.event_id IS NOT NULL AS known"
    " FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)"
    " LEFT JOIN event_ids e ON e.event_id = t.id ORDER BY t.n"
)
# Every stored lifecycle event of the given calls (the new ones included); test
# deliveries never count towards a call.
CALL_EVENTS = (
    "SELECT event FROM events WHERE type = ANY($1::text[]) AND NOT test"
    " AND (call_id = ANY($2::text[]) OR session_id = ANY($2::text[]))"
)



class Unstorable(ValueError):
    """The event cannot be written as JSON: nested deeper than orjson writes (255; a
    record off the topic may be nested up to 1024), an int past 64 bits or a lone
    surrogate. The sink dead-letters it."""


def event_json(event: Any) -> str:
    try:
        text = orjson.dumps(event)
    except orjson.JSONEncodeError as exc:
        raise Unstorable(f"event not storable as JSON: {exc}") from None
    if b"\\u0000" in text:
        text = orjson.dumps(nul_free_json(event))
    return text.decode()


def event_row(event: dict[str, Any]) -> tuple[Any, ...]:
    received = parse_utc(event.get("received_at")) or dt.datetime.now(dt.UTC)
    return (
        event["event_id"], received, parse_utc(event.get("occurred_at")),
        _text(event.get("provider")) or "", _text(event.get("source")) or "",
        _text(event.get("type")) or "", _text(event.get("provider_type")) or "",
        _text(event.get("call_id")), _text(event.get("session_id")),
        _text(event.get("agent_id")), _text(event.get("campaign_id")), is_test(event),
        event_json(event),
    )


def _field(name: str, value: Any) -> Any:
    if name in TIMESTAMPS:
        return parse_utc(value)
    if name == "transcript":
        return None if value is None else event_json(value)
    if name in ("duration_s", "cost", "sentiment"):
        return float(value) if isinstance(value, int | float) and not isinstance(
            value, bool) else None
    return _text(value)


Precedence = tuple[int, int, dt.datetime, dt.datetime, str]


def _received(event: dict[str, Any]) -> dt.datetime:
    return parse_utc(event.get("received_at")) or dt.datetime.now(dt.UTC)


def chain_surplus(events: list[dict[str, Any]]) -> dict[tuple[int, str], int]:
    """Per (lifecycle rank, status): the events of that rank that move the call into
    the status, minus those that move it out, counting only events that state both
    ends (``previous_status`` -> ``status``, where the provider states both).

    The transitions of one call form a walk. Every status it passes through is
    entered as often as it is left, except its first (one more exit) and its last
    (one more entry): a status with a surplus is where the chain ends, whatever
    order the events were seen in and however often a transition repeats
    (X->Y, Y->X, X->Y leaves Y at +1). A chain with a gap has more than one such
    status; a walk that returns to its start has none. Both are ties that the
    receive time breaks (``_precedence``)."""
    surplus: dict[tuple[int, str], int] = {}
    for event in events:
        before, after = _text(event.get("previous_status")), _text(event.get("status"))
        if before is None or after is None:
            continue
        rank = STATE_RANK[str(event["type"])]
        surplus[(rank, after)] = surplus.get((rank, after), 0) + 1
        surplus[(rank, before)] = surplus.get((rank, before), 0) - 1
    return surplus


def _precedence(event: dict[str, Any], surplus: dict[tuple[int, str], int]) -> Precedence:
    """Lifecycle rank; then, among events of one rank, one that moves the call into
    the end of its transition chain; then the time the provider states (occurred_at),
    else the receive time; then the receive time; then the event id (total order)."""
    rank = STATE_RANK[str(event["type"])]
    status = _text(event.get("status"))
    chain_end = int(status is not None and surplus.get((rank, status), 0) > 0)
    received = _received(event)
    return (rank, chain_end, parse_utc(event.get("occurred_at")) or received, received,
            str(event["event_id"]))


def fold_call(events: list[dict[str, Any]]) -> tuple[Any, ...]:
    """One call's row from all its lifecycle events: a pure function of the *set* of
    events, so every arrival order gives the same row.

    Events are ordered by precedence (``_precedence``: lifecycle rank, chain end,
    occurred_at, received_at, event id); each field takes the value of the
    highest-precedence event that has one (a late ``call.updated`` never overwrites
    what ``call.ended`` said; the analysis fills in what nothing later contradicts);
    the state columns come from the top event.
    """
    surplus = chain_surplus(events)
    keyed = sorted(((_precedence(e, surplus), e) for e in events), key=lambda p: p[0])
    top_key, top = keyed[-1]
    values = {name: None for name in CALL_FIELDS}
    for _, event in keyed:
        for name in CALL_FIELDS:
            value = _field(name, event.get(name))
            if value is not None:
                values[name] = value
    rank, _, state_at, _, state_event = top_key
    times = [k[2] for k, _ in keyed]
    return (call_key(top), _text(top.get("provider")) or "", _text(top.get("source")) or "",
            *(values[name] for name in CALL_FIELDS), top.get("type"), rank, state_at,
            state_event, min(times), max(times))


class WarehouseStore:
    """The warehouse sink's writer (the schema itself is ``schema.py``'s)."""

    def __init__(self, pool: asyncpg.Pool, copy_timeout_s: float = 30.0) -> None:
        self._pool = pool
        self._copy_timeout_s = copy_timeout_s
        self._partitions = Partitions(pool)

    @staticmethod
    async def create_pool(pg: PostgresSettings, schema: str) -> asyncpg.Pool:
        return await create_schema_pool(pg, schema)

    async def ensure_partitions(self, months: set[tuple[int, int]]) -> None:
        await self._partitions.ensure(months)

    async def migrate(self) -> list[str]:
        return await migrate(self._pool, self._partitions)

    async def write(self, events: Sequence[dict[str, Any]]) -> int:
        """Write one batch in one transaction; returns how many events were new."""
        rows = [event_row(e) for e in events]
        months = {(r[1].year, r[1].month) for r in rows}
        await self._partitions.ensure(months)
        async with self._pool.acquire() as conn, conn.transaction():
            # Which ids are already stored, in the database's canonical form (so two
            # spellings of one uuid are one event): one lookup, then only new rows
            # are copied, straight into event_ids (the claim) and events.
            known = await conn.fetch(KNOWN_IDS, [r[0] for r in rows])
            fresh: list[tuple[Any, ...]] = []
            new_ids: set[str] = set()
            touched: set[str] = set()
            for row, event, found in zip(rows, events, known, strict=True):
                if found["known"] or found["id"] in new_ids:
                    continue  # stored before, or earlier in this batch
                new_ids.add(found["id"])
                fresh.append(row)
                if (key := call_key(event)) is not None:
                    touched.add(key)
            if fresh:
                # A concurrent writer of the same id makes this COPY fail on the
                # primary key; the batch is retried and finds the id stored.
                await conn.copy_records_to_table("event_ids", records=[r[:2] for r in fresh],
                                                 columns=("event_id", "received_at"),
                                                 timeout=self._copy_timeout_s)
                await conn.copy_records_to_table("events", records=fresh,
                                                 columns=EVENT_COLUMNS,
                                                 timeout=self._copy_timeout_s)
            if touched:
                # Recompute each touched call from all its stored events (this batch's
                # included): one read, one upsert per call.
                subjects = sorted({k.split(":", 1)[1] for k in touched})
                by_call: dict[str, list[dict[str, Any]]] = {}
                for record in await conn.fetch(CALL_EVENTS, list(STATE_RANK), subjects):
                    event = orjson.loads(record[0])
                    key = call_key(event)
                    if key in touched:
                        by_call.setdefault(key, []).append(event)
                await conn.executemany(UPSERT_CALL, [fold_call(v) for v in by_call.values()])
        return len(new_ids)
