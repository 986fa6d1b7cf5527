"""Versioned SQL migrations: ``NNNN_name.sql`` files applied once, in order.

Each component keeps its own folder and its own row set in
``hookstream_schema_migrations``; every file runs in one transaction under an
advisory lock, so replicas starting together apply it exactly once.
"""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

FILENAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

LEDGER = """
CREATE TABLE IF NOT EXISTS hookstream_schema_migrations (
    component text NOT NULL,
    version int NOT NULL,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


def migrations(folder: Path) -> list[tuple[int, str, str]]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = FILENAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name {path.name!r} is not NNNN_name.sql")
        found.append((int(match.group(1)), path.name, path.read_text()))
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {folder}")
    return found


async def apply(conn: asyncpg.Connection, component: str, folder: Path) -> list[str]:
    """Apply pending migrations of ``component``; returns the names applied."""
    applied: list[str] = []
    lock = zlib.crc32(f"hookstream-migrate-{component}".encode())
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
        await conn.execute(LEDGER)
        done = {r[0] for r in await conn.fetch(
            "SELECT version FROM hookstream_schema_migrations WHERE component = $1", component)}
        for version, name, sql in migrations(folder):
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO hookstream_schema_migrations (component, version, name)"
                " VALUES ($1, $2, $3)", component, version, name)
            log.info("migration applied", extra={"component": component, "migration": name})
            applied.append(name)
    return applied
