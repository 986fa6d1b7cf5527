"""The transcripts in the warehouse: the ``transcripts`` table (migration
0004_transcripts.sql in the warehouse's folder) and ``calls.transcript``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import orjson

from ..fetching.index import FetchedRow, PgIndex, call_lock, in_lock_order


@dataclasses.dataclass(frozen=True, kw_only=True)
class TranscriptRow(FetchedRow):
    document: str  # JSON text
    turns: list[dict[str, str]] | None  # canonical turns, None if the shape is unknown


class TranscriptsIndex(Protocol):
    async def known(self, call_keys: Sequence[str]) -> set[str]:
        """The call keys whose transcript is stored already."""
        ...

    async def record(self, rows: Sequence[TranscriptRow]) -> None:
        """Upsert ``transcripts`` and fill ``calls.transcript``, one call at a time."""
        ...


# The lock 0004_transcripts.sql's trigger takes: the same expression, the same key.
LOCK = call_lock("transcript")

UPSERT = """
INSERT INTO transcripts AS t (call_key, provider, call_id, event_id, document, turns, bytes,
                              sha256, content_type, source_url_host)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9, $10)
ON CONFLICT (call_key) DO UPDATE SET
    event_id = EXCLUDED.event_id, document = EXCLUDED.document, turns = EXCLUDED.turns,
    bytes = EXCLUDED.bytes, sha256 = EXCLUDED.sha256, content_type = EXCLUDED.content_type,
    source_url_host = EXCLUDED.source_url_host, stored_at = now()
WHERE t.sha256 IS DISTINCT FROM EXCLUDED.sha256
"""

# The call's row, when the warehouse has it already (else the trigger fills it in when
# it comes). Never over a transcript the call's own events carried inline.
SET_CALL = """
UPDATE calls SET transcript = $2::jsonb, updated_at = now()
WHERE call_key = $1 AND transcript IS NULL
"""


class PgTranscriptsIndex(PgIndex):
    table = "transcripts"

    async def known(self, call_keys: Sequence[str]) -> set[str]:
        return {r["call_key"] for r in await self._stored(call_keys)}

    async def record(self, rows: Sequence[TranscriptRow]) -> None:
        # One transaction per call: each holds one call's lock at a time, so it can
        # never be half of a lock-order deadlock with the warehouse's batch.
        async with self._pool.acquire() as conn:
            for r in in_lock_order(rows):
                turns = None if r.turns is None else orjson.dumps(r.turns).decode()
                async with conn.transaction():
                    await conn.execute(LOCK, r.call_key)
                    await conn.execute(UPSERT, r.call_key, r.provider, r.call_id, r.event_id,
                                       r.document, turns, r.bytes, r.sha256, r.content_type,
                                       r.source_url_host)
                    if turns is not None:
                        await conn.execute(SET_CALL, r.call_key, turns)
