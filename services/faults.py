"""``hookstream faults``: inject faults into a pipeline of its own, under load, and
account for every delivery (issue 12, item 3).

For each scenario a fresh pipeline is started as real processes against the running
local stack (hookstream-ingest, hookstream-normalizer, hookstream-sink-warehouse), on
free ports, with topics, consumer groups, a dedupe table and a warehouse schema of its
own, so that runs never see each other's data nor disturb the stack's other users.
The processes are supervised: one that exits is restarted after about a second.

Distinct deliveries (``loadgen``'s generated traffic, no redeliveries) are offered at
a fixed rate, each retried the way its provider retries (``RetryPolicy``). The fault
is injected after a few seconds, the load goes on, then the suite waits (bounded)
until every acknowledged delivery is in the warehouse or on the dead-letter topic,
and prints one table. Only this module's pure parts (policy, recovery time, table)
are imported by the unit tests; nothing of it is imported by the services.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import httpx

    from .core.sources import Source
    from .loadgen import Accounting, Delivery

REPO = Path(__file__).resolve().parents[1]
STACK_SCRIPT = REPO / "deploy" / "local" / "stack"
SOURCES_ENV = REPO / "deploy" / "local" / "sources.env"


# ---------------------------------------------------------------- pure parts
@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a provider retries one delivery: a first try, then ``retries`` more,
    ``delay_s`` apart, each try given up after ``timeout_s``. A try fails on a
    network error, a timeout or a non-2xx answer; when every try failed, the
    provider gives the delivery up (marks it failed on its side)."""

    retries: int = 3
    delay_s: float = 2.0
    timeout_s: float = 10.0

    @property
    def tries(self) -> int:
        return 1 + self.retries

    def after(self, try_number: int, status: int) -> Literal["done", "retry", "given up"]:
        """What the provider does after try ``try_number`` (1-based) was answered
        ``status`` (0: no answer, a network error or the timeout)."""
        if is_2xx(status):
            return "done"
        return "retry" if try_number < self.tries else "given up"

    def given_up(self, statuses: Sequence[int]) -> bool:
        """Whether a delivery whose tries were answered ``statuses`` was given up."""
        return len(statuses) >= self.tries and not any(is_2xx(s) for s in statuses)


# Sarj.ai as documented (../shared/providers, "Retries"): 3 retries 2 s apart, each
# try with a 10 s timeout. Saaya and Sawt do not document theirs: the same shape,
# overridable with --policy.
DEFAULT_POLICIES: dict[str, RetryPolicy] = {
    "sarj": RetryPolicy(retries=3, delay_s=2.0, timeout_s=10.0),
    "saaya": RetryPolicy(retries=3, delay_s=2.0, timeout_s=10.0),
    "sawt": RetryPolicy(retries=3, delay_s=2.0, timeout_s=10.0),
}


def is_2xx(status: int) -> bool:
    return 200 <= status < 300


def parse_policy(text: str) -> tuple[str, RetryPolicy]:
    """``PROVIDER=RETRIES:DELAY_S:TIMEOUT_S``, e.g. ``saaya=5:1:10``."""
    match = re.fullmatch(r"(saaya|sawt|sarj)=(\d+):([0-9.]+):([0-9.]+)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"--policy {text!r}: want PROVIDER=RETRIES:DELAY_S:TIMEOUT_S (saaya, sawt, sarj)")
    provider, retries, delay, timeout = match.groups()
    return provider, RetryPolicy(int(retries), float(delay), float(timeout))


LAG_S = 2.0  # "caught up": nothing acknowledged more than this long ago is unsettled


def caught_up_at(fault_end: float, checks: Iterable[tuple[float, bool]]) -> float | None:
    """When the pipeline caught up for good after the fault: ``checks`` are (time,
    behind), one per look at the warehouse and dead-letter topic, ``behind`` meaning some
    delivery acknowledged more than ``LAG_S`` earlier was in neither. The time of the
    first look after the last look that was behind (the first look at or after the
    fault's end when none was); None if the last look was still behind."""
    after = sorted((t, b) for t, b in checks if t >= fault_end)
    if not after:
        return None
    last_behind = max((i for i, (_, b) in enumerate(after) if b), default=-1)
    if last_behind == len(after) - 1:
        return None
    return after[last_behind + 1][0]


def recovery_seconds(fault_end: float, tries: Iterable[tuple[float, int]],
                     caught_up: float | None) -> float | None:
    """Seconds from the fault's end until the pipeline recovered, or None if it did not.

    Recovered = the later of (a) the send time of the first try, sent at or after the
    fault's end, that was answered 2xx and after which every try sent was 2xx too, and
    (b) ``caught_up`` (``caught_up_at``). ``tries`` are (send time, status) on the same
    clock as ``fault_end``."""
    after = sorted((t, s) for t, s in tries if t >= fault_end)
    if not after or caught_up is None:
        return None
    last_failure = max((i for i, (_, s) in enumerate(after) if not is_2xx(s)), default=-1)
    if last_failure == len(after) - 1:
        return None  # still failing at the end of the load
    accepted_again = after[last_failure + 1][0]
    return max(0.0, max(accepted_again, caught_up) - fault_end)


@dataclasses.dataclass
class Result:
    scenario: str
    offered: int = 0
    answered_2xx: int = 0
    given_up: int = 0
    missing: int = 0
    duplicate_rows: int | None = None  # None: could not be counted
    recover_s: float | None = None
    restarts: dict[str, int] = dataclasses.field(default_factory=dict)
    error: str | None = None  # the scenario itself could not run to the end
    failed_tries: dict[int, int] = dataclasses.field(default_factory=dict)  # status -> n
    try_seconds: tuple[float, float] = (0.0, 0.0)  # p99 and slowest answer to a try
    spool_peak: float = 0.0  # most deliveries in ingest's spool at one look
    loop_lag_s: float = 0.0  # the generator's own worst event-loop stall

    def failed(self, strict_given_up: bool) -> bool:
        return bool(self.error or self.missing or self.duplicate_rows != 0
                    or (strict_given_up and self.given_up))


COLUMNS = ("scenario", "offered", "answered 2xx", "given up by the provider",
           "acknowledged but missing", "duplicate rows", "seconds to recover")


def render_table(results: Sequence[Result]) -> str:
    """The one table, as a Markdown table (it goes into docs/reliability.md as is)."""
    rows = [list(COLUMNS)]
    for r in results:
        rows.append([
            r.scenario + (" (ERROR)" if r.error else ""), str(r.offered), str(r.answered_2xx),
            str(r.given_up), str(r.missing),
            "?" if r.duplicate_rows is None else str(r.duplicate_rows),
            "not recovered" if r.recover_s is None else f"{r.recover_s:.1f}",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-")
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


def exit_status(results: Sequence[Result], strict_given_up: bool) -> int:
    return 1 if any(r.failed(strict_given_up) for r in results) else 0


# ---------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def say(text: str) -> None:
    print(f"faults: {text}", file=sys.stderr, flush=True)


class Supervised:
    """One service process, restarted ~1 s after it exits (as systemd or Kubernetes
    would), until ``stop``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 restart_delay_s: float = 1.0) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.restart_delay_s = restart_delay_s
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        with self.log_path.open("ab") as log_file:
            while not self._stopping:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.argv, env=self.env, stdout=log_file, stderr=log_file,
                    stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
                code = await self.proc.wait()
                if self._stopping:
                    return
                self.restarts += 1
                say(f"{self.name} exited ({code}); restarting in {self.restart_delay_s:g} s "
                    f"(restart {self.restarts})")
                await asyncio.sleep(self.restart_delay_s)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, sig)

    async def stop(self, timeout_s: float = 25.0) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def stack(*args: str, log_path: Path, attempts: int = 1) -> None:
    """``deploy/local/stack ARGS``; raises after ``attempts`` failures."""
    for attempt in range(1, attempts + 1):
        with log_path.open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                str(STACK_SCRIPT), *args, stdout=log_file, stderr=log_file,
                stdin=asyncio.subprocess.DEVNULL)
            code = await proc.wait()
        if code == 0:
            return
        if attempt < attempts:
            await asyncio.sleep(2)
    raise RuntimeError(f"deploy/local/stack {' '.join(args)} failed (exit {code}; "
                       f"log {log_path})")


def stack_dir() -> Path:
    return Path(os.environ.get("HOOKSTREAM_STACK_DIR", str(REPO / ".stack")))


def load_sources_env() -> None:
    """The local sources' throwaway secrets (deploy/local/sources.env), unless set."""
    for line in SOURCES_ENV.read_text().splitlines():
        match = re.fullmatch(r'\s*export\s+(\w+)="(.*)"\s*', line)
        if match:
            os.environ.setdefault(match.group(1), match.group(2))


class Pipeline:
    """ingest, normalizer and warehouse sink of one scenario, with names of its own."""

    def __init__(self, tag: str, logdir: Path, sources_file: str,
                 spool_dir: Path | None = None, ingest_env: dict[str, str] | None = None
                 ) -> None:
        from .core.config import KafkaSettings, PostgresSettings, load

        self.tag = tag  # e.g. f1a2b3_broker_restart
        self.logdir = logdir
        base = load(KafkaSettings)
        self.kafka = dataclasses.replace(
            base, raw_topic=f"hookstream.faults.{tag}.raw.v1",
            events_topic=f"hookstream.faults.{tag}.events.v1",
            dlq_topic=f"hookstream.faults.{tag}.dlq.v1",
            sink_topic_prefix=f"hookstream.faults.{tag}.sink")
        self.dsn = load(PostgresSettings).dsn
        self.schema = f"faults_{tag}"
        self.dedupe_table = f"faults_{tag}_dedupe"
        self.ingest_port = free_port()
        self.ingest_admin = ingest_admin = free_port()
        self.spool_dir = spool_dir
        normalizer_port, warehouse_port = free_port(), free_port()
        env = {**os.environ,
               "HOOKSTREAM_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
               "HOOKSTREAM_RAW_TOPIC": self.kafka.raw_topic,
               "HOOKSTREAM_EVENTS_TOPIC": self.kafka.events_topic,
               "HOOKSTREAM_DLQ_TOPIC": self.kafka.dlq_topic,
               "HOOKSTREAM_SINK_TOPIC_PREFIX": self.kafka.sink_topic_prefix,
               "HOOKSTREAM_PG_DSN": self.dsn,
               "HOOKSTREAM_SOURCES_FILE": str(Path(sources_file).resolve()),
               "HOOKSTREAM_NORMALIZER_GROUP": f"hookstream-faults-{tag}-normalizer",
               "HOOKSTREAM_DEDUPE_TABLE": self.dedupe_table,
               "HOOKSTREAM_WAREHOUSE_SCHEMA": self.schema,
               "HOOKSTREAM_SINK_GROUP": f"hookstream-faults-{tag}-sink-warehouse",
               "HOOKSTREAM_LOG_JSON": "true"}
        self.ready_urls = {
            "ingest": f"http://127.0.0.1:{ingest_admin}/readyz",
            "normalizer": f"http://127.0.0.1:{normalizer_port}/readyz",
            "warehouse": f"http://127.0.0.1:{warehouse_port}/readyz",
        }
        self.services = {
            "ingest": Supervised("ingest", [_exe("hookstream-ingest")], {
                **env, "HOOKSTREAM_INGEST_PORT": str(self.ingest_port),
                "HOOKSTREAM_INGEST_ADMIN_PORT": str(ingest_admin),
                "HOOKSTREAM_INGEST_SPOOL_DIR": str(spool_dir or ""),
                **(ingest_env or {})}, logdir / "ingest.log"),
            "normalizer": Supervised("normalizer", [_exe("hookstream-normalizer")], {
                **env, "HOOKSTREAM_NORMALIZER_HTTP_PORT": str(normalizer_port)},
                logdir / "normalizer.log"),
            "warehouse": Supervised("warehouse", [_exe("hookstream-sink-warehouse")], {
                **env, "HOOKSTREAM_SINK_HTTP_PORT": str(warehouse_port)},
                logdir / "sink-warehouse.log"),
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ingest_port}"

    async def start(self, timeout_s: float = 90) -> None:
        import httpx

        from .core import topics

        await topics.ensure(self.kafka, topics.plan(self.kafka, partitions=3))
        for service in self.services.values():
            service.start()
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2) as client:
            for name, url in self.ready_urls.items():
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(url)).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name} not ready in {timeout_s:g} s "
                                           f"(log {self.services[name].log_path})")
                    await asyncio.sleep(0.2)

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.services.values()))

    def restarts(self) -> dict[str, int]:
        return {n: s.restarts for n, s in self.services.items() if s.restarts}

    async def ingest_gauge(self, name: str) -> float | None:
        """One unlabelled metric of ingest's /metrics (None: ingest not answering)."""
        import httpx

        try:
            async with httpx.AsyncClient(timeout=2) as client:
                text = (await client.get(f"http://127.0.0.1:{self.ingest_admin}/metrics")).text
        except httpx.HTTPError:
            return None
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else None

    async def duplicate_rows(self) -> int | None:
        """Rows of the run's ``events`` beyond one per event id (retried on outages)."""
        import asyncpg

        for _ in range(30):
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
                try:
                    value = await conn.fetchval(
                        f'SELECT count(*) - count(DISTINCT event_id) FROM "{self.schema}".events')
                    return int(value)
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                await asyncio.sleep(1)
        return None

    async def drop(self) -> None:
        """Drop what the run created: schema, dedupe table, topics (best effort)."""
        import asyncpg
        from aiokafka.admin import AIOKafkaAdminClient

        from .core.sink import sink_topics

        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(self.dsn, timeout=5)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
                await conn.execute(f"DROP TABLE IF EXISTS {self.dedupe_table}")
            finally:
                await conn.close()
        with contextlib.suppress(Exception):
            admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka.bootstrap)
            await admin.start()
            try:
                names = [self.kafka.raw_topic, self.kafka.events_topic, self.kafka.dlq_topic,
                         *sink_topics(self.kafka, "warehouse")]
                existing = set(await admin.list_topics())
                await admin.delete_topics([n for n in names if n in existing])
            finally:
                await admin.close()


def _exe(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not on PATH (pip install -e .)")
    return found


# ---------------------------------------------------------------- the load
@dataclasses.dataclass
class Offered:
    """One distinct delivery and every try the provider made of it."""

    provider: str
    tries: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    given_up: bool = False

    @property
    def answered(self) -> bool:
        return any(is_2xx(s) for _, s in self.tries)


CLIENTS = 32  # HTTP clients the load is spread over (see Offer.run)


class Offer:
    """Distinct deliveries at ``rate`` per second, each retried per its provider's policy,
    until ``stop_offering``; every 2xx is handed to the accounting with its time."""

    def __init__(self, url: str, sources: dict[str, Source],
                 policies: dict[str, RetryPolicy], rate: float, accounting: Accounting) -> None:
        self.url, self.sources, self.policies, self.rate = url, sources, policies, rate
        self.accounting = accounting
        self.offered: list[Offered] = []
        self.acked_at: dict[str, float] = {}  # receipt -> when the 2xx came back
        self.latencies: list[float] = []  # seconds from each try's send to its answer
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def stop_offering(self) -> None:
        self._stop.set()

    def all_tries(self) -> list[tuple[float, int]]:
        return [t for o in self.offered for t in o.tries]

    async def run(self) -> None:
        import httpx

        from .loadgen import deliveries

        stream = deliveries(redeliver=0.0, malformed=0.0)
        # Many small clients, not one big one: httpcore's pool does work quadratic in
        # its connections per request, and thousands of tries hang during an outage
        # (one client of 4,000 connections stalled this event loop for 6-10 s).
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=32)
        tls = ssl.create_default_context()  # one, not one per client (plain HTTP anyway)
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(
                httpx.AsyncClient(base_url=self.url, limits=limits, verify=tls))
                for _ in range(CLIENTS)]
            started = time.monotonic()
            sent = 0
            while not self._stop.is_set():
                due = int((time.monotonic() - started) * self.rate) - sent
                for _ in range(max(0, due)):
                    client = clients[sent % CLIENTS]
                    task = asyncio.create_task(self._deliver(client, next(stream)))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    sent += 1
                await asyncio.sleep(0.005)
            if self._tasks:  # every retry chain ends (bounded by the policies)
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        import httpx

        from .cli import signed_request

        provider = delivery.sample.provider
        source, policy = self.sources[provider], self.policies[provider]
        offered = Offered(provider)
        self.offered.append(offered)
        delivery_id = f"msg_{os.urandom(8).hex()}"  # a provider's retry keeps its id
        for number in range(1, policy.tries + 1):
            path, headers = signed_request(source, delivery.sample, time.time(), delivery_id)
            sent = time.monotonic()
            receipt = ""
            try:
                # The provider's timeout bounds the whole try (httpx's bounds each of
                # connect, write, read and the pool wait separately).
                async with asyncio.timeout(policy.timeout_s):
                    response = await client.post(path, content=delivery.sample.body,
                                                 headers=headers,
                                                 timeout=httpx.Timeout(policy.timeout_s))
                status = response.status_code
                if is_2xx(status):
                    receipt = str(response.json().get("receipt", ""))
            except (httpx.HTTPError, ValueError, TimeoutError):
                status = 0
            offered.tries.append((sent, status))
            self.latencies.append(time.monotonic() - sent)
            if is_2xx(status):
                self.acked_at[receipt] = time.monotonic()
                self.accounting.expect(delivery, source, headers, receipt)
            action = policy.after(number, status)
            if action != "retry":
                offered.given_up = action == "given up"
                return
            await asyncio.sleep(policy.delay_s)


# ---------------------------------------------------------------- scenarios
@dataclasses.dataclass
class Context:
    pipeline: Pipeline
    short: bool
    log_path: Path  # the stack commands' output

    async def stack(self, *args: str, attempts: int = 3) -> None:
        await stack(*args, log_path=self.log_path, attempts=attempts)


def _pid(path: Path) -> int:
    return int(path.read_text().split()[0])


async def _broker_restart(ctx: Context) -> None:
    await ctx.stack("down", "kafka", attempts=1)
    await asyncio.sleep(5 if ctx.short else 20)
    await ctx.stack("up", "kafka")


async def _broker_kill(ctx: Context) -> None:
    os.kill(_pid(stack_dir() / "kafka" / "kafka.pid"), signal.SIGKILL)
    await asyncio.sleep(5 if ctx.short else 20)
    await ctx.stack("up", "kafka")


async def _kill_ingest_spooling(ctx: Context) -> None:
    """The broker away long enough for the spool to fill, then ingest SIGKILLed with
    records in it; the supervisor restarts it on the same spool, then the broker returns."""
    await ctx.stack("down", "kafka", attempts=1)
    await asyncio.sleep(5 if ctx.short else 20)
    spooled = await ctx.pipeline.ingest_gauge("hookstream_ingest_spool_records")
    say(f"kill-ingest-spooling: SIGKILL of ingest with {spooled or 0:.0f} deliveries spooled")
    ctx.pipeline.services["ingest"].kill(signal.SIGKILL)
    await asyncio.sleep(5 if ctx.short else 10)
    await ctx.stack("up", "kafka")


async def _spool_disk_full(ctx: Context) -> None:
    """The broker away and the spool's filesystem (a small tmpfs) filled by another file:
    deliveries are answered 503 (never 202) until the space is freed 3 s later; the
    provider's retries land them in the spool; then the broker returns."""
    spool_dir = ctx.pipeline.spool_dir
    assert spool_dir is not None
    await ctx.stack("down", "kafka", attempts=1)
    await asyncio.sleep(2)
    filler = spool_dir / "filler"
    await asyncio.to_thread(_fill, filler)
    say(f"spool-disk-full: {filler} takes the spool's filesystem; deliveries answered 503")
    await asyncio.sleep(3)
    filler.unlink()
    say("spool-disk-full: space freed")
    await asyncio.sleep(3 if ctx.short else 15)
    await ctx.stack("up", "kafka")


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until the filesystem is full (ENOSPC)."""
    with path.open("wb", buffering=0) as file:
        for size in (1 << 20, 4096):  # MiBs, then the last partial one
            with contextlib.suppress(OSError):
                while True:
                    file.write(b"\0" * size)


async def _broker_down_long(ctx: Context) -> None:
    await ctx.stack("down", "kafka", attempts=1)
    await asyncio.sleep(30 if ctx.short else 600)
    await ctx.stack("up", "kafka")


async def _postgres_restart(ctx: Context) -> None:
    for _ in range(3 if ctx.short else 5):
        await ctx.stack("down", "postgres", attempts=1)
        await ctx.stack("up", "postgres")
        await asyncio.sleep(1)


async def _postgres_kill(ctx: Context) -> None:
    os.kill(_pid(stack_dir() / "pg" / "postgres.pid"), signal.SIGKILL)
    await asyncio.sleep(2)
    await ctx.stack("up", "postgres", attempts=10)


def _kill(service: str) -> Callable[[Context], Awaitable[None]]:
    async def inject(ctx: Context) -> None:
        ctx.pipeline.services[service].kill(signal.SIGKILL)
    return inject


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    doc: str
    inject: Callable[[Context], Awaitable[None]]
    default: bool = True  # run when no scenario is named
    spool_fs_bytes: int = 0  # > 0: the spool on a tmpfs of this size (needs root)
    ingest_env: dict[str, str] = dataclasses.field(default_factory=dict)


SCENARIOS = {s.name: s for s in [
    Scenario("broker-restart", "`stack down kafka` (graceful), 5 s (--short) or 20 s down, "
             "`stack up kafka`", _broker_restart),
    Scenario("broker-kill", "SIGKILL of the broker (.stack/kafka/kafka.pid), 5 s or 20 s "
             "down, `stack up kafka`", _broker_kill),
    Scenario("postgres-restart", "`stack down postgres` + `stack up postgres`, 3 times in a "
             "row (--short) or 5", _postgres_restart),
    Scenario("postgres-kill", "SIGKILL of the postmaster (.stack/pg/postgres.pid), "
             "`stack up postgres`", _postgres_kill),
    Scenario("kill-ingest", "SIGKILL of hookstream-ingest; the supervisor restarts it",
             _kill("ingest")),
    Scenario("kill-normalizer", "SIGKILL of hookstream-normalizer; restarted",
             _kill("normalizer")),
    Scenario("kill-warehouse", "SIGKILL of hookstream-sink-warehouse; restarted",
             _kill("warehouse")),
    Scenario("kill-ingest-spooling", "the broker down (`stack down kafka`), after 5 s "
             "(--short) or 20 s SIGKILL of hookstream-ingest with deliveries in its spool; "
             "restarted on the same spool; the broker back 5 s or 10 s later",
             _kill_ingest_spooling),
    Scenario("spool-disk-full", "the spool on a 16 MiB tmpfs; the broker down; after 2 s "
             "the tmpfs is filled by another file (ENOSPC: 503, never 202) and freed 3 s "
             "later; the broker back 3 s (--short) or 15 s after that", _spool_disk_full,
             spool_fs_bytes=16 << 20,
             ingest_env={"HOOKSTREAM_INGEST_SPOOL_MIN_FREE_BYTES": "0"}),
    Scenario("broker-down-long", "`stack down kafka`, 30 s (--short) or 10 minutes down, "
             "`stack up kafka` (only when named)", _broker_down_long, default=False),
]}


@dataclasses.dataclass(frozen=True)
class Settings:
    short: bool
    rate: float
    seconds: float  # load before + after the fault, at least
    lead_s: float  # load before the fault
    tail_s: float  # load after the fault's end, at least
    drain_s: float  # longest wait for the acknowledged deliveries to arrive
    policies: dict[str, RetryPolicy]
    sources_file: str
    keep: bool
    logdir: Path
    spool: bool = True  # ingest's spool on (--no-spool: off, to compare)


async def run_scenario(scenario: Scenario, settings: Settings, run_id: str) -> Result:
    from .core.sources import load_sources
    from .loadgen import Accounting

    result = Result(scenario.name)
    tag = f"{run_id}_{scenario.name.replace('-', '_')}"
    logdir = settings.logdir / scenario.name
    logdir.mkdir(parents=True, exist_ok=True)
    spool_dir = logdir / "spool" if settings.spool else None
    pipeline = Pipeline(tag, logdir, settings.sources_file, spool_dir, scenario.ingest_env)
    ctx = Context(pipeline, settings.short, logdir / "stack.log")
    say(f"{scenario.name}: starting a pipeline of its own (schema {pipeline.schema}, "
        f"logs {logdir})")
    from .cli import pick_sources

    sources = pick_sources(load_sources(settings.sources_file), None)
    accounting: Accounting | None = None
    mounted = False
    try:
        if scenario.spool_fs_bytes:
            if spool_dir is None:
                raise RuntimeError(f"{scenario.name} needs the spool (not --no-spool)")
            spool_dir.mkdir(parents=True, exist_ok=True)
            await _run("mount", "-t", "tmpfs", "-o", f"size={scenario.spool_fs_bytes}",
                       "tmpfs", str(spool_dir))
            mounted = True
        await pipeline.start()
        accounting = Accounting(pipeline.kafka, pipeline.dsn, pipeline.schema)
        await accounting.start()
        offer = Offer(pipeline.url, sources, settings.policies, settings.rate, accounting)
        fault_end: float | None = None
        checks: list[tuple[float, bool]] = []  # (time, behind) of each look

        async def monitor() -> None:
            assert accounting is not None
            while True:
                try:
                    await asyncio.wait_for(accounting.refresh(), 15)
                except Exception as exc:  # the measuring survives the fault
                    say(f"{scenario.name}: accounting refresh cut short ({exc!r})")
                now = time.monotonic()
                settled, dead = accounting.in_warehouse, accounting.dead
                behind = any(
                    not ((e is not None and e in settled) or r in dead)
                    for r, e in list(accounting.receipt_event.items())
                    if offer.acked_at.get(r, now) <= now - LAG_S)
                checks.append((now, behind))
                spooled = await pipeline.ingest_gauge("hookstream_ingest_spool_records")
                result.spool_peak = max(result.spool_peak, spooled or 0.0)
                await asyncio.sleep(0.5)

        def caught_up() -> float | None:
            return None if fault_end is None else caught_up_at(fault_end, checks)

        async def loop_lag() -> None:  # is the generator itself keeping up?
            while True:
                before = time.monotonic()
                await asyncio.sleep(0.1)
                result.loop_lag_s = max(result.loop_lag_s, time.monotonic() - before - 0.1)

        lagging = asyncio.create_task(loop_lag())
        load_started = time.monotonic()
        offering = asyncio.create_task(offer.run())
        watching = asyncio.create_task(monitor())
        try:
            await asyncio.sleep(settings.lead_s)
            say(f"{scenario.name}: injecting the fault: {scenario.doc}")
            fault_started = time.monotonic()
            await scenario.inject(ctx)
            fault_end = time.monotonic()
            say(f"{scenario.name}: fault over after {fault_end - fault_started:.1f} s; "
                "load goes on")
            await asyncio.sleep(max(settings.tail_s,
                                    settings.seconds - (fault_end - load_started)))
            offer.stop_offering()
            await offering
            say(f"{scenario.name}: {len(offer.offered)} offered; waiting (at most "
                f"{settings.drain_s:g} s) for every acknowledged delivery to arrive")
            deadline = time.monotonic() + settings.drain_s
            while time.monotonic() < deadline and (accounting.counts()[2]
                                                   or caught_up() is None):
                await asyncio.sleep(0.5)
        finally:
            offer.stop_offering()
            for task in (watching, lagging):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if not offering.done():
                offering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await offering
        with contextlib.suppress(Exception):
            await asyncio.wait_for(accounting.refresh(), 15)
        result.offered = len(offer.offered)
        result.answered_2xx = sum(1 for o in offer.offered if o.answered)
        result.given_up = sum(1 for o in offer.offered if o.given_up)
        result.missing = accounting.counts()[2]
        lat = sorted(offer.latencies) or [0.0]
        result.try_seconds = (lat[int(len(lat) * 0.99)], lat[-1])
        for _, status in offer.all_tries():
            if not is_2xx(status):
                result.failed_tries[status] = result.failed_tries.get(status, 0) + 1
        result.duplicate_rows = await pipeline.duplicate_rows()
        assert fault_end is not None
        result.recover_s = recovery_seconds(fault_end, offer.all_tries(), caught_up())
    except Exception as exc:  # reported in the table; the suite goes on
        result.error = repr(exc)
        say(f"{scenario.name}: ERROR {exc!r}")
    finally:
        result.restarts = pipeline.restarts()
        if accounting is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(accounting.stop(), 30)
        await pipeline.stop()
        if mounted and spool_dir is not None:
            with contextlib.suppress(Exception):
                await _run("umount", str(spool_dir))
        # Whatever happened, leave the stack up for its other users.
        with contextlib.suppress(Exception):
            await ctx.stack("up", "kafka", "postgres")
        if not settings.keep:
            await pipeline.drop()
    say(f"{scenario.name}: offered {result.offered}, 2xx {result.answered_2xx}, given up "
        f"{result.given_up}, missing {result.missing}, duplicate rows "
        f"{result.duplicate_rows}, restarts {result.restarts or 'none'}")
    return result


async def _run(*command: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): "
                           f"{output.decode(errors='replace').strip()}")


async def run(names: list[str], settings: Settings) -> list[Result]:
    load_sources_env()
    run_id = f"{time.strftime('%H%M%S')}{os.urandom(2).hex()}"
    results = []
    for name in names:
        results.append(await run_scenario(SCENARIOS[name], settings, run_id))
    return results


# ---------------------------------------------------------------- command line
HELP = """\
Each scenario starts a pipeline of its own (hookstream-ingest, -normalizer,
-sink-warehouse as supervised processes on free ports; topics
hookstream.faults.<run>.*, consumer groups, dedupe table and warehouse schema
faults_<run>_<scenario>) against the running local stack (deploy/local/stack up),
offers distinct deliveries at --rate, injects the fault after a few seconds, keeps
the load on, then waits (bounded) until every acknowledged delivery is in the
warehouse or on the dead-letter topic. A supervised service that exits is
restarted after 1 s (restarts are printed under the table).

scenarios:
{scenarios}

columns:
  offered                    distinct deliveries offered
  answered 2xx               deliveries one of whose tries was answered 2xx
  given up by the provider   deliveries every try of which failed (non-2xx, network
                             error or timeout): lost at the source
  acknowledged but missing   answered 2xx, yet neither its event in the warehouse
                             nor the delivery on the dead-letter topic after the wait
  duplicate rows             rows of the run's warehouse `events` table beyond one
                             per event id
  seconds to recover         from the fault's end (the broker or database back: the
                             `stack up` returned; for a service kill, the kill) to
                             the later of: the first try answered 2xx after which
                             every try was 2xx, and the moment the pipeline caught
                             up for good: from then on, at every look (twice a
                             second), every delivery acknowledged more than 2 s
                             earlier was in the warehouse or dead-lettered
                             ("not recovered": either never happened in the run)

retry policies (--policy PROVIDER=RETRIES:DELAY_S:TIMEOUT_S): Sarj.ai as documented,
3 retries 2 s apart, each try with a 10 s timeout; Saaya and Sawt the same unless set.

exit status: 1 when any scenario has acknowledged-but-missing deliveries or
duplicate rows, or could not run (or given-up deliveries, with --strict-given-up).
Logs: <--logs>/<run>/<scenario>/ (ingest's spool in spool/ there). Leaves the stack
up. spool-disk-full mounts a tmpfs, so it needs root.
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    scenarios = "\n".join(f"  {s.name:<18} {s.doc}" for s in SCENARIOS.values())
    parser.description = ("Inject faults into a pipeline of its own under load and "
                          "account for every delivery; prints one table.")
    parser.epilog = HELP.format(scenarios=scenarios)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", default=[],
                        help="scenarios to run (default: every one but broker-down-long)")
    parser.add_argument("--short", action="store_true",
                        help="seconds per scenario (CI): 15 s of load at 50/s, short outages")
    parser.add_argument("--rate", type=float, help="deliveries offered per second "
                        "(default 50 with --short, else 100)")
    parser.add_argument("--seconds", type=float, help="seconds of load per scenario, "
                        "fault included (default 15 with --short, else 60)")
    parser.add_argument("--policy", type=parse_policy, action="append", default=[],
                        help="a provider's retry policy, PROVIDER=RETRIES:DELAY_S:TIMEOUT_S")
    parser.add_argument("--strict-given-up", action="store_true",
                        help="deliveries given up by the provider fail the run too")
    parser.add_argument("--drain-timeout-s", type=float,
                        help="longest wait for acknowledged deliveries (default 60 with "
                        "--short, else 300)")
    parser.add_argument("--sources", default="deploy/local/sources.toml", help="sources file")
    parser.add_argument("--logs", default=str(stack_dir() / "faults"),
                        help="where the services' logs go")
    parser.add_argument("--no-spool", action="store_true",
                        help="run ingest without its spool (HOOKSTREAM_INGEST_SPOOL_DIR "
                        "empty), to compare")
    parser.add_argument("--keep", action="store_true",
                        help="keep each run's schema, dedupe table and topics")


def cmd_faults(args: argparse.Namespace) -> int:
    names = list(args.scenarios) or [s.name for s in SCENARIOS.values() if s.default]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"hookstream faults: unknown scenario(s) {', '.join(unknown)}; "
              f"choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    short: bool = args.short
    run_id_dir = Path(args.logs) / time.strftime("%Y%m%dT%H%M%S")
    settings = Settings(
        short=short, rate=args.rate or (50 if short else 100),
        seconds=args.seconds or (15 if short else 60),
        lead_s=3 if short else 10, tail_s=5 if short else 30,
        drain_s=args.drain_timeout_s or (60 if short else 300),
        policies={**DEFAULT_POLICIES, **dict(args.policy)}, sources_file=args.sources,
        keep=args.keep, logdir=run_id_dir, spool=not args.no_spool)
    # The clients' own reconnect chatter (aiokafka logs every refused connection at
    # ERROR) would drown the table; outages are what this command is for.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("hookstream.loadgen").setLevel(logging.ERROR)
    logging.getLogger("asyncpg").setLevel(logging.ERROR)
    started = time.monotonic()
    results = asyncio.run(run(names, settings))
    print(render_table(results))
    for r in results:
        if r.restarts:
            print(f"  {r.scenario}: supervisor restarts: "
                  + ", ".join(f"{n} {k}" for n, k in sorted(r.restarts.items())))
        if r.spool_peak:
            print(f"  {r.scenario}: at most {r.spool_peak:.0f} deliveries in ingest's spool")
        if r.offered:
            print(f"  {r.scenario}: answer to a try, p99 {r.try_seconds[0]:.1f} s, slowest "
                  f"{r.try_seconds[1]:.1f} s (cut at the policy's timeout); the generator's "
                  f"worst event-loop stall {r.loop_lag_s:.2f} s")
        if r.failed_tries:
            print(f"  {r.scenario}: tries that failed, by answer (0: none in time): "
                  + ", ".join(f"{k}: {n}" for k, n in sorted(r.failed_tries.items())))
        if r.error:
            print(f"  {r.scenario}: could not run to the end: {r.error}")
    print(f"  {len(results)} scenarios in {time.monotonic() - started:.0f} s "
          f"(rate {settings.rate:g}/s; logs {run_id_dir})")
    return exit_status(results, args.strict_given_up)
