"""Helpers shared by the tests.

For the integration tests: the local secrets, the stack, running an app on a real port,
reading topics, a throwaway broker, a steady load on ingest.

For the unit tests (the last section): an independent Standard Webhooks signer, a
recording fake of the ingest ``Publisher`` and a few fixed secrets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import uvicorn
from starlette.datastructures import Headers

from hookstream.core.sources import Source, build_source
from hookstream.ingest.publisher import NotStored

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "deploy" / "local" / "stack"
SOURCES_FILE = REPO / "deploy" / "local" / "sources.toml"
SOURCES_ENV = REPO / "deploy" / "local" / "sources.env"


def format_checker() -> Any:
    """The JSON Schema format checker the schemas are held to: the one of
    schemas/providers/check_examples.py (a script, so loaded by path)."""
    import importlib.util

    path = REPO / "schemas" / "providers" / "check_examples.py"
    spec = importlib.util.spec_from_file_location("check_examples", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.format_checker()


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


async def read_from(kafka: Any, start: dict[Any, int], want: int, timeout_s: float = 30
                    ) -> list[Any]:
    """The records after the offsets ``start`` (TopicPartition -> offset, e.g. from
    ``core.kafka.end_offsets`` taken before sending), until ``want`` are read or
    ``timeout_s`` passes."""
    import time

    from hookstream.core.kafka import make_consumer

    consumer = make_consumer(kafka, None)
    await consumer.start()
    out: list[Any] = []
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while len(out) < want and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


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


@contextlib.asynccontextmanager
async def throwaway_broker(state: Path, partitions: int = 3
                           ) -> AsyncIterator[tuple[Any, dict[str, str]]]:
    """A Kafka broker of the caller's own (state dir and ports), for tests that stop or
    kill it; yields its KafkaSettings (topics made) and the env that drives its stack."""
    import os

    from hookstream.core import topics
    from hookstream.core.config import KafkaSettings

    port, controller = free_port(), free_port()
    env = {**os.environ, "HOOKSTREAM_STACK_DIR": str(state), "KAFKA_PORT": str(port),
           "KAFKA_CONTROLLER_PORT": str(controller), "KAFKA_HEAP": "-Xms256m -Xmx512m",
           "KAFKA_STOP_TIMEOUT": "20"}
    await asyncio.to_thread(stack, "up", "kafka", env=env)
    try:
        kafka = KafkaSettings(bootstrap=f"127.0.0.1:{port}")
        await topics.ensure(kafka, topics.plan(kafka, partitions=partitions))
        yield kafka, env
    finally:
        await asyncio.to_thread(stack, "down", "--purge", "kafka", env=env)


def kill_broker(state: Path) -> None:
    """SIGKILL a throwaway broker (its pid file under ``state``)."""
    import os
    import signal

    os.kill(int((state / "kafka" / "kafka.pid").read_text()), signal.SIGKILL)


class SarjLoad:
    """Distinct signed Sarj.ai deliveries, one after another per sender task (about 100/s
    with 4 senders), each answer kept as (send time, status, receipt or None); and
    ``/readyz`` polled every 0.1 s into ``readiness``."""

    def __init__(self, base_url: str, admin_url: str | None = None) -> None:
        import httpx
        import orjson

        from hookstream.core.sources import load_sources
        from hookstream.devtools.samples import samples

        self.client = httpx.AsyncClient(base_url=base_url, timeout=15)
        self.admin = httpx.AsyncClient(base_url=admin_url or base_url, timeout=5)
        self.source = load_sources(SOURCES_FILE)["sarj-main"]
        self.sample = orjson.loads(next(s for s in samples("sarj") if s.name == "failed").body)
        self.answers: list[tuple[float, int, str | None]] = []
        self.latencies: list[tuple[float, float]] = []  # (send time, seconds to the answer)
        self.readiness: list[tuple[float, int]] = []

    async def send_forever(self) -> None:
        import time
        import uuid

        import httpx
        import orjson

        from hookstream.cli import signed_request
        from hookstream.devtools.samples import Sample

        while True:
            body = orjson.dumps({**self.sample, "call_id": f"call_{uuid.uuid4()}"})
            path, headers = signed_request(self.source, Sample("sarj", "failed", "x", body),
                                           time.time(), "m")
            sent = time.monotonic()
            try:
                response = await self.client.post(path, content=body, headers=headers)
                receipt = response.json().get("receipt") if response.status_code == 202 else None
                self.answers.append((sent, response.status_code, receipt))
                self.latencies.append((sent, time.monotonic() - sent))
            except httpx.HTTPError:
                self.answers.append((sent, 0, None))
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.01)

    async def watch_readiness(self) -> None:
        import time

        import httpx

        while True:
            try:
                status = (await self.admin.get("/readyz")).status_code
            except httpx.HTTPError:
                status = 0
            self.readiness.append((time.monotonic(), status))
            await asyncio.sleep(0.1)

    def accepted_again_after(self, since: float) -> float | None:
        """Seconds from ``since`` to the first 202 after which every answer was 202."""
        after = [(t, s) for t, s, _ in self.answers if t >= since]
        for i, (t, status) in enumerate(after):
            if status == 202 and all(s == 202 for _, s in after[i:]):
                return t - since
        return None

    def receipts(self) -> set[str]:
        return {r for _, status, r in self.answers if status == 202 and r}

    @contextlib.asynccontextmanager
    async def running(self, senders: int = 4, readiness: bool = True) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(self.send_forever()) for _ in range(senders)]
        if readiness:
            tasks.append(asyncio.create_task(self.watch_readiness()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.client.aclose()
            await self.admin.aclose()


# --- unit tests ------------------------------------------------------------------
# An independent Standard Webhooks signer, a recording fake of the ingest ``Publisher``
# and a few fixed secrets.
#
# The signers here are written from the Standard Webhooks specification, not via the
# provider modules, so a wrong implementation cannot pass by agreeing with itself.

# 32 random bytes, base64: the decoded bytes are the HMAC key (Standard Webhooks).
RAW_KEY_A = bytes(range(32))
WHSEC_A = "whsec_" + base64.b64encode(RAW_KEY_A).decode()
PLAIN_B = "plain-previous-secret-b"
HEX_SECRET = "hex-secret-value"
SAWT_SECRET = "sawt-shared-secret-value"
BASIC_USER = "sawt-user"
BASIC_PASSWORD = "sawt-basic-password"
PATH_SECRET = "p" * 20 + "Path-Secret-0123456789"  # 42 chars
PATH_SECRET_OLD = "o" * 24 + "-older-path-secret"


def key_of(secret: str) -> bytes:
    """The HMAC key a Standard Webhooks secret stands for."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def std_signature(key: bytes, msg_id: str, timestamp: str | int, body: bytes) -> str:
    """``v1,<base64(hmac_sha256(key, f"{id}.{timestamp}.{body}"))>``."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def std_headers(
    key: bytes, msg_id: str, timestamp: str | int, body: bytes
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": std_signature(key, msg_id, timestamp, body),
    }


def hex_signature(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def signature_headers(key: bytes, body: bytes, *, header: str, encoding: str = "hex",
                      prefix: str = "", signed: str = "body", combined: bool = False,
                      msg_id: str = "msg_1", timestamp: str | int = 0,
                      id_header: str = "webhook-id",
                      timestamp_header: str = "webhook-timestamp") -> dict[str, str]:
    """Headers of a Saaya delivery signed in any of the configurable forms, written
    from the forms' descriptions (docs/sources.md), not via the provider module.

    ``signed`` is ``body``, ``timestamp.body`` or ``id.timestamp.body``; ``combined``
    writes ``<header>: t=<timestamp>,v1=<signature>`` instead of ``<prefix><signature>``.
    """
    parts = {"body": [body],
             "timestamp.body": [str(timestamp).encode(), body],
             "id.timestamp.body": [msg_id.encode(), str(timestamp).encode(), body]}[signed]
    digest = hmac.new(key, b".".join(parts), hashlib.sha256).digest()
    text = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    headers: dict[str, str] = {}
    if signed.startswith("id."):
        headers[id_header] = msg_id
    if combined:
        headers[header] = f"t={timestamp},v1={text}"
    else:
        if "timestamp" in signed:
            headers[timestamp_header] = str(timestamp)
        headers[header] = prefix + text
    return headers


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def H(mapping: Mapping[str, str] | None = None) -> Headers:
    """A case-insensitive header map, as the app passes to verifiers."""
    return Headers(headers=dict(mapping or {}))


ENV: dict[str, str] = {
    "SAAYA_A": WHSEC_A,
    "SAAYA_B": PLAIN_B,
    "SAAYA_HEX": HEX_SECRET,
    "SAWT_SECRET": SAWT_SECRET,
    "SAWT_SECRET_2": "sawt-second-secret",
    "SAWT_USER": BASIC_USER,
    "SAWT_PASSWORD": BASIC_PASSWORD,
    "SAWT_PASSWORD_2": "sawt-second-password",
    "PATH_SECRET": PATH_SECRET,
    "PATH_SECRET_OLD": PATH_SECRET_OLD,
    "SHORT_PATH": "x" * 23,
    "EMPTY": "",
}


def source(name: str, env: Mapping[str, str] | None = None, **table: Any) -> Source:
    return build_source(name, table, ENV if env is None else env)


@dataclasses.dataclass
class Published:
    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> bytes | None:
        found = [v for k, v in self.headers if k == name]
        assert len(found) <= 1, f"header {name} repeated: {found}"
        return found[0] if found else None

    def header_names(self) -> list[str]:
        return [k for k, _ in self.headers]


class FakePublisher:
    """Implements what ingest uses of ``Publisher``; records or refuses publishes."""

    def __init__(self, *, ready: bool = True, fail: str | None = None) -> None:
        self._ready = ready
        self.fail = fail
        self.calls: list[Published] = []
        self.started = 0
        self.stopped: list[float] = []

    @property
    def ready(self) -> bool:
        return self._ready

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    async def start(self) -> None:
        self.started += 1

    async def stop(self, timeout_s: float) -> None:
        self.stopped.append(timeout_s)

    async def publish(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        if self.fail is not None:
            raise NotStored(self.fail)
        self.calls.append(Published(topic, value, key, list(headers)))
