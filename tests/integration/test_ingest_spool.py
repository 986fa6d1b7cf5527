"""Issue 12, item 2: with the spool on, a broker outage costs no delivery, and neither
does a SIGKILL of ingest in the middle of it.

A real ``hookstream-ingest`` process (uvicorn, its spool in a temporary directory) takes
about 100 distinct signed Sarj.ai deliveries/s from 4 senders, on a throwaway broker of the
test's own:

1. the broker is SIGKILLed: every delivery is still answered 202, from the spool, within
   the provider's window, and ``/readyz`` stays 200 (a delivery now would be stored);
2. ingest is SIGKILLed with records in its spool, and started again on the same spool:
   it recovers them and goes on answering 202 while the broker is still down;
3. the broker returns: the spool drains to empty, and every receipt answered 202, before
   and after the kill, is on the raw topic (at least once: a drained copy of a record
   whose produce also landed late is absorbed by the normalizer's dedupe).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from hookstream.core.config import KafkaSettings
from hookstream.core.record import H_REQUEST_ID

from ..support import (
    SOURCES_FILE,
    SarjLoad,
    free_port,
    kill_broker,
    local_secrets,
    read_topic,
    throwaway_broker,
)
from ..support import stack as run_stack

PROVIDER_WINDOW_S = 10.0


@pytest.fixture
async def broker(tmp_path_factory: pytest.TempPathFactory,
                 stack: KafkaSettings) -> AsyncIterator[tuple[KafkaSettings, dict[str, str], Path]]:
    state = tmp_path_factory.mktemp("spool-broker")
    async with throwaway_broker(state, partitions=3) as (kafka, env):
        yield kafka, env, state


@contextmanager
def ingest_process(kafka: KafkaSettings, spool: Path, port: int, admin: int,
                   log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, **local_secrets(),
           "HOOKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap,
           "HOOKSTREAM_SOURCES_FILE": str(SOURCES_FILE),
           "HOOKSTREAM_INGEST_PORT": str(port), "HOOKSTREAM_INGEST_ADMIN_PORT": str(admin),
           "HOOKSTREAM_INGEST_SPOOL_DIR": str(spool),
           "HOOKSTREAM_INGEST_PROBE_INTERVAL_S": "0.5",
           "HOOKSTREAM_INGEST_PRODUCER_RESET_AFTER_S": "5",
           "HOOKSTREAM_LOG_JSON": "true"}
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "hookstream.ingest.main"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_ready(admin: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"http://127.0.0.1:{admin}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"ingest on :{admin} not ready in {timeout_s} s")


async def spool_records(admin: int) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{admin}/metrics")).text
    match = re.search(r"^hookstream_ingest_spool_records (\S+)$", text, re.MULTILINE)
    assert match, "hookstream_ingest_spool_records not exported"
    return float(match.group(1))


async def test_an_outage_and_a_sigkill_of_ingest_lose_nothing_answered_202(
        broker: tuple[KafkaSettings, dict[str, str], Path], tmp_path: Path) -> None:
    kafka, env, state = broker
    spool, log = tmp_path / "spool", tmp_path / "ingest.log"
    port, admin = free_port(), free_port()
    load = SarjLoad(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}")

    first = ingest_process(kafka, spool, port, admin, log)
    process = first.__enter__()
    try:
        await wait_ready(admin)
        async with load.running():
            await asyncio.sleep(3)
            assert any(s == 202 for _, s, _ in load.answers), load.answers[-5:]

            kill_broker(state)
            broker_died = time.monotonic()
            await asyncio.sleep(8)
            in_spool = await spool_records(admin)
            assert in_spool > 100, in_spool

            process.send_signal(signal.SIGKILL)  # mid-outage, with a spool on disk
            process.wait()
            first.__exit__(None, None, None)
            killed = time.monotonic()
            await asyncio.sleep(1)
            second = ingest_process(kafka, spool, port, admin, log)
            process = second.__enter__()
            first = second
            await wait_ready(admin)  # ready from the spool alone: the broker is still down
            restarted = time.monotonic()
            await asyncio.sleep(5)
            assert await spool_records(admin) >= in_spool  # recovered, and still taking more

            await asyncio.to_thread(run_stack, "up", "kafka", env=env)
            back = time.monotonic()
            async with asyncio.timeout(90):
                while await spool_records(admin) > 0:
                    await asyncio.sleep(0.5)
            drained = time.monotonic() - back
            await asyncio.sleep(2)

        # While the broker was away, with ingest up, every answer was a 202 in the window.
        outage = [(t, s) for t, s, _ in load.answers
                  if broker_died <= t < back and not killed - 1 <= t < restarted]
        assert outage and all(s == 202 for _, s in outage), sorted({s for _, s in outage})
        slowest = max(d for t, d in load.latencies if broker_died <= t < back)
        assert slowest < PROVIDER_WINDOW_S / 2, slowest
        readiness = [s for t, s in load.readiness
                     if broker_died + 2 <= t < back and not killed - 1 <= t < restarted]
        assert readiness and all(s == 200 for s in readiness), sorted(set(readiness))

        # aiokafka's sender no longer spins on failed metadata refreshes while the broker
        # refuses connections (it did at ~2,400 a second, as many ERROR lines).
        outage_s = back - broker_died
        spins = log.read_text().count("Unable to update metadata")
        assert spins < 10 * outage_s, (spins, outage_s)

        receipts = load.receipts()
        records = await read_topic(kafka, kafka.raw_topic, len(receipts), timeout_s=60)
        on_topic = {dict(r.headers)[H_REQUEST_ID].decode() for r in records}
        missing = receipts - on_topic
        assert not missing, (f"{len(missing)} of {len(receipts)} receipts not on the raw "
                             f"topic; drained in {drained:.1f} s; see {log}")
    finally:
        first.__exit__(None, None, None)
