"""Issue 12, item 1: after a broker restart, ingest accepts deliveries again.

A throwaway broker (its own state dir and ports) is restarted under load twice:
gracefully (``stack down kafka`` / ``up kafka``), then by SIGKILL. Before producer
recovery, a graceful restart left aiokafka's idempotent producer failing every
send with ``OutOfOrderSequenceNumber`` for good (in two of three tries): every
delivery was answered 503 while ``/readyz`` said ready. Here, each time, readiness
must drop while the broker is away, and deliveries must be accepted again within
15 s of the broker's return, every one of them from then on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hookstream.core.config import KafkaSettings
from hookstream.core.sources import load_sources
from hookstream.ingest.app import build_app
from hookstream.ingest.settings import IngestSettings

from ..support import SOURCES_FILE, SarjLoad, free_port, kill_broker, serve, throwaway_broker
from ..support import stack as run_stack

RECOVERY_S = 15.0  # the bound, from the broker's return


@pytest.fixture
async def broker(tmp_path_factory: pytest.TempPathFactory,
                 stack: KafkaSettings) -> AsyncIterator[tuple[KafkaSettings, dict[str, str], Path]]:
    state = tmp_path_factory.mktemp("restart-broker")
    async with throwaway_broker(state) as (kafka, env):
        yield kafka, env, state


async def test_deliveries_are_accepted_again_within_15_s_of_the_brokers_return(
        broker: tuple[KafkaSettings, dict[str, str], Path]) -> None:
    kafka, env, state = broker
    settings = IngestSettings(ack_timeout_s=2.0, probe_interval_s=0.5,
                              producer_reset_after_s=5.0, shutdown_timeout_s=3.0)
    app = build_app(load_sources(SOURCES_FILE), settings, kafka)
    app_port, admin_port = free_port(), free_port()
    async with serve(app, app_port), serve(app.admin, admin_port):
        load = SarjLoad(f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{admin_port}")
        async with load.running():
            await asyncio.sleep(3)
            assert any(s == 202 for _, s, _ in load.answers), load.answers[-5:]

            for how in ("graceful", "sigkill"):
                went = time.monotonic()
                if how == "graceful":
                    await asyncio.to_thread(run_stack, "down", "kafka", env=env)
                else:
                    kill_broker(state)
                await asyncio.sleep(5)
                down = [s for t, s in load.readiness if t > went + 3]
                assert down and all(s == 503 for s in down), (how, down)
                await asyncio.to_thread(run_stack, "up", "kafka", env=env)
                back = time.monotonic()
                await asyncio.sleep(RECOVERY_S + 5)
                recovered = load.accepted_again_after(back)
                tail = [s for t, s, _ in load.answers if t > back][-10:]
                assert recovered is not None and recovered <= RECOVERY_S, (how, recovered, tail)
                assert [s for t, s in load.readiness if t > back + RECOVERY_S][-5:] == [200] * 5
