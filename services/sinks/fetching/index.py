"""What a fetching sink keeps in the warehouse: one row per call (its table's key is
``calls.call_key``), saying whose it is and what was fetched. Each sink's row adds
its own columns (where the file is; the document and its turns) and its own upsert;
the lookup by call key and the lock order are the same."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar, Protocol, TypeVar

import asyncpg

RowT = TypeVar("RowT", bound="FetchedRow")
RowT_contra = TypeVar("RowT_contra", bound="FetchedRow", contravariant=True)
KnownT_co = TypeVar("KnownT_co", covariant=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FetchedRow:
    """Whose the fetched thing is, and what was fetched (the columns every fetching
    sink's table has). Keyword-only, here and in each sink's row: a row is built by
    name, so a column added to either never shifts the others."""

    call_key: str  # "<provider>:<call or session id>", as calls.call_key
    provider: str
    call_id: str
    event_id: str  # the event whose URL was fetched
    bytes: int
    sha256: str
    content_type: str | None
    source_url_host: str | None  # the host fetched from (never the URL: it may be signed)


class FetchingIndex(Protocol[RowT_contra, KnownT_co]):
    async def known(self, call_keys: Sequence[str]) -> KnownT_co:
        """What is stored already of ``call_keys`` (each sink's own answer)."""
        ...

    async def record(self, rows: Sequence[RowT_contra]) -> None:
        """Store ``rows`` (upserts, idempotent per call key)."""
        ...


class PgIndex:
    """A fetching sink's table, read by call key."""

    table: ClassVar[str]

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def _stored(self, call_keys: Sequence[str], *columns: str) -> list[asyncpg.Record]:
        """``call_key`` and ``columns`` of the rows of ``call_keys`` stored already."""
        return await self._pool.fetch(  # type: ignore[no-any-return]
            f"SELECT {', '.join(('call_key', *columns))} FROM {self.table} "
            "WHERE call_key = ANY($1::text[])", list(call_keys))


def in_lock_order(rows: Sequence[RowT]) -> list[RowT]:
    """``rows`` by call key: replicas writing the same calls lock them in one order,
    never in a cycle."""
    return sorted(rows, key=lambda r: r.call_key)


def call_lock(kind: str) -> str:
    """The statement that takes a call's transaction-scoped advisory lock for ``kind``
    ($1: the call key). The warehouse's insert trigger of the same kind (0004 for
    transcripts, 0005 for recordings) takes the same expression on the same key, so a
    sink's write and the call's arrival committing together cannot each miss the
    other's: the second to take the lock reads what the first wrote."""
    return f"SELECT pg_advisory_xact_lock(hashtextextended('hookstream-{kind}:' || $1, 0))"
