"""Warehouse sink settings."""

from __future__ import annotations

import dataclasses

from ...core.config import env


@dataclasses.dataclass(frozen=True)
class WarehouseSettings:
    schema: str = env("HOOKSTREAM_WAREHOUSE_SCHEMA", "warehouse",
                      "PostgreSQL schema of the warehouse tables")
    copy_timeout_s: float = env("HOOKSTREAM_WAREHOUSE_COPY_TIMEOUT_S", 30.0,
                                "longest COPY of one batch (a dead connection never hangs)")
