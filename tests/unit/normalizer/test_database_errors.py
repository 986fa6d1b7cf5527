"""A database blip is a retry, never a dead letter or an exit: since issue 11 the consume
loop dead-letters whatever a batch raises that is not ``Retryable``, so every
transient database error must be classified as one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asyncpg.exceptions import InternalClientError

from hookstream.core.config import KafkaSettings, load
from hookstream.core.errors import Retryable
from hookstream.core.schemas import SchemaRegistry
from hookstream.devtools.samples import samples
from hookstream.normalizer.pipeline import Decoder, Normalizer

from .test_decoder import record


class BrokenDedupe:
    async def seen(self, ids: list[str]) -> set[str]:
        # What a PostgreSQL restart did to the normalizer once (issue 12).
        raise InternalClientError("cannot switch to state 12; another operation (2) is in "
                                  "progress")

    async def mark(self, ids: list[str]) -> None:
        raise AssertionError("never reached")


def test_internal_client_error_from_the_dedupe_store_is_retryable() -> None:
    normalizer = Normalizer(load(KafkaSettings), None, BrokenDedupe(),  # type: ignore[arg-type]
                            Decoder(SchemaRegistry()))
    sample = next(samples("sarj"))

    async def run() -> Any:
        return await normalizer.handle([record("sarj", sample.body)])

    with pytest.raises(Retryable, match="dedupe lookup failed"):
        asyncio.run(run())
