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
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from hookstream.cli import signed_request
from hookstream.core import topics
from hookstream.core.config import KafkaSettings
from hookstream.core.samples import Sample, samples
from hookstream.core.sources import load_sources
from hookstream.ingest.app import build_app
from hookstream.ingest.settings import IngestSettings

from ..support import SOURCES_FILE, free_port, serve
from ..support import stack as run_stack

RECOVERY_S = 15.0  # the bound, from the broker's return


@dataclasses.dataclass
class Load:
    """Distinct Sarj.ai deliveries, ~100/s, each answer recorded with its send time."""

    client: httpx.AsyncClient
    admin: httpx.AsyncClient
    sample: dict[str, object]
    answers: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    readiness: list[tuple[float, int]] = dataclasses.field(default_factory=list)

    async def send_forever(self) -> None:
        sources = load_sources(SOURCES_FILE)
        while True:
            body = orjson.dumps({**self.sample, "call_id": f"call_{uuid.uuid4()}"})
            path, headers = signed_request(sources["sarj-main"],
                                           Sample("sarj", "failed", "x", body), time.time(), "m")
            sent = time.monotonic()
            try:
                status = (await self.client.post(path, content=body, headers=headers)
                          ).status_code
            except httpx.HTTPError:
                status = 0
            self.answers.append((sent, status))
            await asyncio.sleep(0.01)

    async def watch_readiness(self) -> None:
        while True:
            self.readiness.append((time.monotonic(), (await self.admin.get("/readyz")
                                                      ).status_code))
            await asyncio.sleep(0.1)

    def accepted_again_after(self, since: float) -> float | None:
        """Seconds from ``since`` to the first 202 after which every answer was 202."""
        after = [(t, s) for t, s in self.answers if t >= since]
        for i, (t, status) in enumerate(after):
            if status == 202 and all(s == 202 for _, s in after[i:]):
                return t - since
        return None


@pytest.fixture
async def broker(tmp_path_factory: pytest.TempPathFactory,
                 stack: KafkaSettings) -> AsyncIterator[tuple[KafkaSettings, dict[str, str], Path]]:
    state = tmp_path_factory.mktemp("restart-broker")
    port, controller = free_port(), free_port()
    env = {**os.environ, "HOOKSTREAM_STACK_DIR": str(state), "KAFKA_PORT": str(port),
           "KAFKA_CONTROLLER_PORT": str(controller), "KAFKA_HEAP": "-Xms256m -Xmx512m",
           "KAFKA_STOP_TIMEOUT": "20"}
    await asyncio.to_thread(run_stack, "up", "kafka", env=env)
    try:
        kafka = KafkaSettings(bootstrap=f"127.0.0.1:{port}")
        await topics.ensure(kafka, topics.plan(kafka, partitions=3))
        yield kafka, env, state
    finally:
        await asyncio.to_thread(run_stack, "down", "--purge", "kafka", env=env)


async def test_deliveries_are_accepted_again_within_15_s_of_the_brokers_return(
        broker: tuple[KafkaSettings, dict[str, str], Path]) -> None:
    kafka, env, state = broker
    settings = IngestSettings(ack_timeout_s=2.0, probe_interval_s=0.5,
                              producer_reset_after_s=5.0, shutdown_timeout_s=3.0)
    app = build_app(load_sources(SOURCES_FILE), settings, kafka)
    app_port, admin_port = free_port(), free_port()
    sample = orjson.loads(next(s for s in samples("sarj") if s.name == "failed").body)
    async with serve(app, app_port), serve(app.admin, admin_port), \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{app_port}", timeout=15) as client, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}", timeout=5) as admin:
        load = Load(client, admin, sample)
        tasks = [asyncio.create_task(load.send_forever()) for _ in range(4)]
        tasks.append(asyncio.create_task(load.watch_readiness()))
        try:
            await asyncio.sleep(3)
            assert any(s == 202 for _, s in load.answers), load.answers[-5:]

            for how in ("graceful", "sigkill"):
                went = time.monotonic()
                if how == "graceful":
                    await asyncio.to_thread(run_stack, "down", "kafka", env=env)
                else:
                    pid = int((state / "kafka" / "kafka.pid").read_text())
                    os.kill(pid, signal.SIGKILL)
                await asyncio.sleep(5)
                down = [s for t, s in load.readiness if t > went + 3]
                assert down and all(s == 503 for s in down), (how, down)
                await asyncio.to_thread(run_stack, "up", "kafka", env=env)
                back = time.monotonic()
                await asyncio.sleep(RECOVERY_S + 5)
                recovered = load.accepted_again_after(back)
                tail = [s for t, s in load.answers if t > back][-10:]
                assert recovered is not None and recovered <= RECOVERY_S, (how, recovered, tail)
                assert [s for t, s in load.readiness if t > back + RECOVERY_S][-5:] == [200] * 5
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
