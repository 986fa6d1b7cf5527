"""ProducerKeeper: the normalizer's and sinks' producer is replaced when it is done for
(issue 12, item 1), without a broker: ``make_producer`` is swapped for a fake."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, OutOfOrderSequenceNumber, UnknownProducerId

from hookstream.core import kafka as core_kafka
from hookstream.core.config import KafkaSettings
from hookstream.core.kafka import ProducerKeeper


class Fake:
    def __init__(self, start_error: Exception | None = None) -> None:
        self.start_error = start_error
        self.started = self.stopped = False

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[Fake]:
    out: list[Fake] = []

    def factory(*args: Any, **kwargs: Any) -> Fake:
        out.append(Fake())
        return out[-1]

    monkeypatch.setattr(core_kafka, "make_producer", factory)
    return out


@pytest.mark.parametrize("error", [OutOfOrderSequenceNumber(), UnknownProducerId()])
async def test_a_fatal_error_replaces_the_producer_at_once(made: list[Fake],
                                                           error: Exception) -> None:
    old = Fake()
    keeper = ProducerKeeper(KafkaSettings(), "normalizer", producer=old)  # type: ignore[arg-type]
    await keeper.failed(error)
    assert keeper.producer is made[0] and made[0].started
    assert old.stopped and keeper.resets == 1


async def test_transient_failures_keep_the_producer_until_the_reset_window(
        made: list[Fake]) -> None:
    old = Fake()
    keeper = ProducerKeeper(KafkaSettings(), "sink-x", reset_after_s=0.2,
                            producer=old)  # type: ignore[arg-type]
    await keeper.failed(KafkaTimeoutError())
    assert keeper.producer is old and not made  # one timeout is no reason
    keeper.succeeded()
    await asyncio.sleep(0.25)
    await keeper.failed(KafkaTimeoutError())
    assert keeper.producer is old  # the window restarted at the success
    await asyncio.sleep(0.25)
    await keeper.failed(KafkaTimeoutError())
    assert keeper.producer is made[0] and old.stopped


async def test_a_replacement_that_cannot_start_keeps_the_old_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    failing = Fake(start_error=OSError("connection refused"))
    monkeypatch.setattr(core_kafka, "make_producer", lambda *a, **k: failing)
    old = Fake()
    keeper = ProducerKeeper(KafkaSettings(), "normalizer", producer=old)  # type: ignore[arg-type]
    await keeper.failed(OutOfOrderSequenceNumber())
    assert keeper.producer is old and not old.stopped and failing.stopped
    assert keeper.resets == 0
