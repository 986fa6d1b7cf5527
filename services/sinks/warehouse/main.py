"""``hookstream-sink-warehouse``: canonical events into PostgreSQL; ``migrate`` applies
the schema migrations and exits."""

from __future__ import annotations

import asyncio
import sys

from ...core.config import PostgresSettings, load
from ..runner import sink_main
from . import schema
from .settings import WarehouseSettings
from .sink import WarehouseSink

DESCRIPTION = ("Write every canonical event into PostgreSQL: the append-only events table, "
               "one row per call with its current state, and analysts' views "
               "(docs/warehouse.md). `hookstream-sink-warehouse migrate` applies the "
               "migrations and exits; the worker also applies them at start.")


async def _migrate() -> None:
    settings = load(WarehouseSettings)
    pool = await schema.create_pool(load(PostgresSettings), settings.schema)
    try:
        applied = await schema.migrate(pool)
        print(f"schema {settings.schema}: "
              + (f"applied {', '.join(applied)}" if applied else "up to date"))
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["migrate"]:
        asyncio.run(_migrate())
        return 0
    return sink_main(
        "warehouse", DESCRIPTION,
        lambda: WarehouseSink(load(PostgresSettings), load(WarehouseSettings)),
        (WarehouseSettings, PostgresSettings), argv)


if __name__ == "__main__":
    sys.exit(main())
