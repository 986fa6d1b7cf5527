"""A failed metadata refresh waits before it returns (core.kafka.throttle_metadata_retries):
aiokafka's sender otherwise retries in a tight loop while the broker refuses connections."""

from __future__ import annotations

import time

import pytest

from hookstream.core import kafka
from hookstream.core.config import KafkaSettings
from tests.support import free_port


@pytest.mark.parametrize("make", ["producer", "consumer"])
async def test_failed_refreshes_back_off(make: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "METADATA_RETRY_BACKOFF_S", 0.2)
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}")  # nobody listens
    client = (kafka.make_producer(settings, "test").client if make == "producer"
              else kafka.make_consumer(settings, None, "t")._client)
    started = time.monotonic()
    # What the sender's loop does while no leader is known: refresh, again and again.
    results = [await client._metadata_update(client.cluster, set()) for _ in range(3)]
    elapsed = time.monotonic() - started
    assert results == [False, False, False]
    assert elapsed >= 3 * kafka.METADATA_RETRY_BACKOFF_S * 0.9
