"""asyncpg pool factory: bounded statements, patient start-up."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from .config import PostgresSettings

log = logging.getLogger(__name__)

# What a database outage or restart looks like from asyncpg: retry these.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    # A server restart while a pooled connection reconnects can raise "cannot switch
    # to state ..." (asyncpg's InternalClientError, no PostgresError, no OSError): it
    # ended the normalizer once (issue 12). Retry it like any other connection loss.
    asyncpg.exceptions.InternalClientError,
)
# Any failure of a statement whose inputs we control (ids, timestamps): retry.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, asyncpg.PostgresError)


async def create_pool(settings: PostgresSettings, attempts: int = 0,
                      **options: Any) -> asyncpg.Pool:
    """Connect, retrying with backoff (``attempts`` = 0: forever) while the database starts."""
    delay, tried = 0.5, 0
    while True:
        tried += 1
        try:
            return await asyncpg.create_pool(
                settings.dsn, min_size=1, max_size=settings.pool_max,
                command_timeout=settings.command_timeout_s, **options,
            )
        except TRANSIENT_ERRORS as exc:
            if attempts and tried >= attempts:
                raise
            log.warning("database not reachable; retrying", extra={"error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)
