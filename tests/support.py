"""Helpers shared by the tests: the local secrets, running an app on a real port."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "deploy" / "local" / "stack"
SOURCES_FILE = REPO / "deploy" / "local" / "sources.toml"
SOURCES_ENV = REPO / "deploy" / "local" / "sources.env"


def local_secrets() -> dict[str, str]:
    """The throwaway secrets of deploy/local/sources.env (``export K="V"`` lines)."""
    pattern = re.compile(r'^export\s+(\w+)="(.*)"\s*$')
    found: dict[str, str] = {}
    for line in SOURCES_ENV.read_text().splitlines():
        match = pattern.match(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serve(app: Any, port: int,
                config: uvicorn.Config | None = None) -> AsyncIterator[uvicorn.Server]:
    """Run an ASGI app under uvicorn on 127.0.0.1:port in this event loop (or as
    ``config`` says, e.g. ingest's own server configuration)."""
    config = config or uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                      access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def stack(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> None:
    """Run deploy/local/stack; raise with its output if it fails."""
    assert shutil.which("bash")
    result = subprocess.run([str(STACK), *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"stack {' '.join(args)} failed ({result.returncode}):\n"
                           f"{result.stdout}\n{result.stderr}")


async def read_topic(kafka: Any, topic: str, want: int, timeout_s: float = 30) -> list[Any]:
    """Every record of ``topic``, re-reading until at least ``want`` are there (or timeout)."""
    import time

    from hookstream.core.kafka import scan

    deadline = time.monotonic() + timeout_s
    while True:
        found = [r async for batch in scan(kafka, topic) for r in batch]
        if len(found) >= want or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.3)


async def caught_up(kafka: Any, group: str, topic: str, timeout_s: float = 30) -> None:
    """Wait until ``group`` has committed up to the current end of ``topic``."""
    import time

    from aiokafka.admin import AIOKafkaAdminClient

    from hookstream.core.kafka import end_offsets

    ends = await end_offsets(kafka, topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = await admin.list_consumer_group_offsets(group)
            if all(committed.get(tp) is not None and committed[tp].offset >= end
                   for tp, end in ends.items() if end > 0):
                return
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    raise AssertionError(f"group {group} did not catch up with {topic}")


async def own_topics(stack: Any, run_id: str, partitions: int = 3) -> Any:
    """``stack``'s Kafka settings with topics of this test run's own (raw, events, DLQ,
    the sinks' retry and dead-letter prefix), created: runs never see each other's
    records."""
    import dataclasses

    from hookstream.core import topics

    kafka = dataclasses.replace(
        stack, raw_topic=f"test.raw.{run_id}", events_topic=f"test.events.{run_id}",
        dlq_topic=f"test.dlq.{run_id}", sink_topic_prefix=f"test.sink.{run_id}")
    await topics.ensure(kafka, topics.plan(kafka, partitions=partitions))
    return kafka
