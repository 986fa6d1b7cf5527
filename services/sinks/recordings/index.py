"""The durable locations in the warehouse: the ``recordings`` table (migration
0002_recordings.sql in the warehouse's folder) and ``calls.recording_location``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from ..fetching.index import FetchedRow, PgIndex, call_lock, in_lock_order


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecordingRow(FetchedRow):
    location: str  # where the store put it


@dataclasses.dataclass(frozen=True)
class Known:
    location: str
    bytes: int


class RecordingsIndex(Protocol):
    async def known(self, call_keys: Sequence[str]) -> dict[str, Known]:
        """The recordings already recorded, by call key."""
        ...

    async def record(self, rows: Sequence[RecordingRow]) -> None:
        """Upsert ``recordings`` and set ``calls.recording_location``, in one transaction."""
        ...


UPSERT = """
INSERT INTO recordings AS r (call_key, provider, call_id, event_id, location, bytes, sha256,
                             content_type, source_url_host)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (call_key) DO UPDATE SET
    event_id = EXCLUDED.event_id, location = EXCLUDED.location, bytes = EXCLUDED.bytes,
    sha256 = EXCLUDED.sha256, content_type = EXCLUDED.content_type,
    source_url_host = EXCLUDED.source_url_host, stored_at = now()
WHERE (r.location, r.sha256) IS DISTINCT FROM (EXCLUDED.location, EXCLUDED.sha256)
"""

# The lock 0005_recording_location_lock.sql's trigger takes: the same expression, the
# same key.
LOCK = call_lock("recording")

# The call's row, when the warehouse has it already; when it does not, the insert
# trigger (0002, locked since 0005) copies the location over once it arrives.
SET_CALL = """
UPDATE calls SET recording_location = $2, updated_at = now()
WHERE call_key = $1 AND recording_location IS DISTINCT FROM $2
"""


class PgRecordingsIndex(PgIndex):
    table = "recordings"

    async def known(self, call_keys: Sequence[str]) -> dict[str, Known]:
        rows = await self._stored(call_keys, "location", "bytes")
        return {r["call_key"]: Known(r["location"], r["bytes"]) for r in rows}

    async def record(self, rows: Sequence[RecordingRow]) -> None:
        if not rows:
            return
        # One transaction per call, as the transcripts sink: each holds one call's lock
        # at a time, so it can never be half of a lock-order deadlock with the
        # warehouse's batch, which takes the same locks in its insert trigger.
        async with self._pool.acquire() as conn:
            for r in in_lock_order(rows):
                async with conn.transaction():
                    await conn.execute(LOCK, r.call_key)
                    await conn.execute(UPSERT, r.call_key, r.provider, r.call_id, r.event_id,
                                       r.location, r.bytes, r.sha256, r.content_type,
                                       r.source_url_host)
                    await conn.execute(SET_CALL, r.call_key, r.location)
