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

Scenarios that need more of the pipeline say so (``Scenario.normalizers``,
``Scenario.sinks``): a second normalizer in the same consumer group, the CRM sink with
the CRM stand-in (tests/fakes/crm.py, in a process of its own), the alerts sink with
the stack's Alertmanager, the recordings and transcripts sinks with the media stand-in
(tests/fakes/media.py, which the load's recording and transcript URLs then point at:
``ProviderSpec.point_media``). Their destinations are accounted for exactly too
(``Destination``): what each should hold is computed from the run's warehouse rows
(every event exactly once), and compared with what it holds; the figures are printed
under the table, one line per destination.
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
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..providers import PROVIDERS

if TYPE_CHECKING:
    import aiohttp
    import asyncpg
    import httpx

    from ..core.sources import Source
    from ..sinks.alerts.rules import Rules
    from .loadgen import Accounting, Delivery
    from .samples import MediaUrl

REPO = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO / "deploy" / "local" / "stack"
SOURCES_ENV = REPO / "deploy" / "local" / "sources.env"
ALERT_RULES = REPO / "deploy" / "local" / "alerts.toml"
CRM_TOKEN = "fake-crm-token"  # the CRM stand-in's (tests/fakes/crm.py), as the demo uses it


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


# Each provider's as its spec states (``ProviderSpec.sender_retries``: as documented,
# or an assumed shape where its document states none), overridable with --policy.
DEFAULT_POLICIES: dict[str, RetryPolicy] = {
    name: RetryPolicy(spec.sender_retries.retries, spec.sender_retries.delay_s,
                      spec.sender_retries.timeout_s)
    for name, spec in PROVIDERS.items()
}


def policies_help() -> str:
    """One line per provider: its default retry policy, and whether it is documented."""
    lines = []
    for name, spec in sorted(PROVIDERS.items()):
        r = spec.sender_retries
        lines.append(f"{name} ({spec.title}): {r.retries} retries {r.delay_s:g} s apart, each "
                     f"try with a {r.timeout_s:g} s timeout"
                     f"{' (documented)' if r.documented else ' (assumed: none documented)'}")
    return "\n".join(lines)


def is_2xx(status: int) -> bool:
    return 200 <= status < 300


def parse_policy(text: str) -> tuple[str, RetryPolicy]:
    """``PROVIDER=RETRIES:DELAY_S:TIMEOUT_S``, e.g. ``<provider>=5:1:10``."""
    names = "|".join(re.escape(name) for name in sorted(PROVIDERS))
    match = re.fullmatch(rf"({names})=(\d+):([0-9.]+):([0-9.]+)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"--policy {text!r}: want PROVIDER=RETRIES:DELAY_S:TIMEOUT_S "
            f"({', '.join(sorted(PROVIDERS))})")
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
    notes: list[str] = dataclasses.field(default_factory=list)  # printed under the table
    # Destinations beside the warehouse (CRM, Alertmanager): what one should hold and
    # never got, and what it got more than once.
    sink_missing: int = 0
    sink_duplicates: int = 0

    def failed(self, strict_given_up: bool) -> bool:
        return bool(self.error or self.missing or self.duplicate_rows != 0
                    or self.sink_missing or self.sink_duplicates
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


def destination_figures(expected: Iterable[str], applied: Mapping[str, int]
                        ) -> tuple[int, int, int]:
    """How a destination beside the warehouse did: (missing: keys it should hold and
    never got; duplicates: applications beyond one per key; unexpected: keys it got
    that nothing owed it). ``applied``: key -> times applied."""
    wanted = set(expected)
    got = {key for key, n in applied.items() if n > 0}
    return (len(wanted - got), sum(n - 1 for n in applied.values() if n > 1),
            len(got - wanted))


def per_event_alert_rules(text: str) -> str:
    """The alert rules ``text`` (TOML, as deploy/local/alerts.toml) with ``event_id``
    added to every rule's ``group_by``. Which events hit which rule is unchanged, but
    every hit becomes an alert of its own (Alertmanager merges alerts with equal
    labels, and the repeat window suppresses a rule's hits per grouping key), so the
    alerts in Alertmanager can be counted one by one against the events."""
    import tomllib

    document = tomllib.loads(text)
    out = ["# Derived by `hookstream faults` from deploy/local/alerts.toml: the same rules,",
           "# grouped by event_id too, so that each hit is an alert of its own.", ""]
    out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in document.items() if k != "rule"]
    for rule in document.get("rule") or []:
        group_by = list(rule.get("group_by") or [])
        rule = {**rule, "group_by": group_by + ([] if "event_id" in group_by else ["event_id"])}
        out += ["", "[[rule]]", *(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in rule.items())]
    return "\n".join(out) + "\n"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: the same escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def metric_samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in a Prometheus text exposition whose labels
    include ``labels``: (all its labels, value)."""
    found = []
    for match in re.finditer(rf"^{re.escape(name)}(?:\{{(.*?)\}})? (\S+)$", text, re.MULTILINE):
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            found.append((have, float(match.group(2))))
    return found


def metric_total(text: str | None, name: str, **labels: str) -> float:
    """The sum of ``metric_samples`` (0 when ``text`` is None)."""
    return sum(v for _, v in metric_samples(text or "", name, **labels))


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
                 restart_delay_s: float = 1.0, cwd: Path | None = None) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.restart_delay_s = restart_delay_s
        self.cwd = cwd
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
                    stdin=asyncio.subprocess.DEVNULL, start_new_session=True, cwd=self.cwd)
                code = await self.proc.wait()
                if self._stopping:
                    return
                self.restarts += 1
                say(f"{self.name} exited ({code}); restarting in {self.restart_delay_s:g} s "
                    f"(restart {self.restarts})")
                await asyncio.sleep(self.restart_delay_s)

    def kill(self, sig: int = signal.SIGKILL, *, restart: bool = True) -> None:
        """Send ``sig`` (SIGSTOP and SIGCONT too); ``restart=False``: the process is
        not restarted when it exits (a replica gone for good)."""
        if not restart:
            self._stopping = True
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


async def stack(*args: str, log_path: Path, attempts: int = 1, reuse: bool = True) -> None:
    """``deploy/local/stack ARGS``; raises after ``attempts`` failures. ``reuse=False``:
    ``up`` fails rather than take a server it did not start for its own."""
    env = {**os.environ, "HOOKSTREAM_STACK_REUSE": "1" if reuse else "0"}
    for attempt in range(1, attempts + 1):
        with log_path.open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                str(STACK_SCRIPT), *args, stdout=log_file, stderr=log_file,
                stdin=asyncio.subprocess.DEVNULL, env=env)
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


def alertmanager_url() -> str:
    """The Alertmanager the alerts sink posts to: HOOKSTREAM_ALERTMANAGER_URL (the
    sink's own setting), else the stack's on ALERTMANAGER_PORT."""
    return (os.environ.get("HOOKSTREAM_ALERTMANAGER_URL")
            or f"http://127.0.0.1:{os.environ.get('ALERTMANAGER_PORT', '9095')}")


class Pipeline:
    """ingest, normalizer(s) and warehouse sink of one scenario, with names of its own;
    ``sinks``: "crm" (the CRM sink and the CRM stand-in), "alerts" (the alerts sink,
    posting to the stack's Alertmanager), "recordings" (the recordings sink, storing in
    ``recordings_dir``) and/or "transcripts" (the transcripts sink), the last two
    fetching from the media stand-in."""

    def __init__(self, tag: str, logdir: Path, sources_file: str,
                 spool_dir: Path | None = None, ingest_env: dict[str, str] | None = None,
                 normalizers: int = 1, sinks: Sequence[str] = (), edge: bool = False) -> None:
        from ..core.config import KafkaSettings, PostgresSettings, load

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
        self.normalizer_group = f"hookstream-faults-{tag}-normalizer"
        self.sinks = tuple(sinks)
        warehouse_port = free_port()
        env = {**os.environ,
               "HOOKSTREAM_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
               "HOOKSTREAM_RAW_TOPIC": self.kafka.raw_topic,
               "HOOKSTREAM_EVENTS_TOPIC": self.kafka.events_topic,
               "HOOKSTREAM_DLQ_TOPIC": self.kafka.dlq_topic,
               "HOOKSTREAM_SINK_TOPIC_PREFIX": self.kafka.sink_topic_prefix,
               "HOOKSTREAM_PG_DSN": self.dsn,
               "HOOKSTREAM_SOURCES_FILE": str(Path(sources_file).resolve()),
               "HOOKSTREAM_NORMALIZER_GROUP": self.normalizer_group,
               "HOOKSTREAM_DEDUPE_TABLE": self.dedupe_table,
               "HOOKSTREAM_WAREHOUSE_SCHEMA": self.schema,
               "HOOKSTREAM_SINK_GROUP": f"hookstream-faults-{tag}-sink-warehouse",
               "HOOKSTREAM_LOG_JSON": "true"}
        # name -> port of its /readyz and /metrics
        self.http_ports = {"ingest": ingest_admin, "warehouse": warehouse_port}
        self.services = {
            "ingest": Supervised("ingest", [_exe("hookstream-ingest")], {
                **env, "HOOKSTREAM_INGEST_PORT": str(self.ingest_port),
                "HOOKSTREAM_INGEST_ADMIN_PORT": str(ingest_admin),
                "HOOKSTREAM_INGEST_SPOOL_DIR": str(spool_dir or ""),
                **(ingest_env or {})}, logdir / "ingest.log"),
            "warehouse": Supervised("warehouse", [_exe("hookstream-sink-warehouse")], {
                **env, "HOOKSTREAM_SINK_HTTP_PORT": str(warehouse_port)},
                logdir / "sink-warehouse.log"),
        }
        for n in range(1, normalizers + 1):  # one consumer group
            name = "normalizer" if n == 1 else f"normalizer-{n}"
            self.http_ports[name] = port = free_port()
            self.services[name] = Supervised(name, [_exe("hookstream-normalizer")], {
                **env, "HOOKSTREAM_NORMALIZER_HTTP_PORT": str(port)}, logdir / f"{name}.log")
        self.crm_url = ""
        if "crm" in self.sinks:
            standin = free_port()
            self.crm_url = f"http://127.0.0.1:{standin}"
            self.services["crm-standin"] = Supervised(
                "crm-standin", [sys.executable, "-m", "tests.fakes.crm", "--port", str(standin)],
                env, logdir / "crm-standin.log", cwd=REPO)
            self._add_sink("crm", env, {
                "HOOKSTREAM_SINK_MAX_BATCH": "50",  # as docs/sinks-crm.md advises
                "HOOKSTREAM_CRM_ADAPTER": "hubspot", "HOOKSTREAM_CRM_URL": self.crm_url,
                "HOOKSTREAM_CRM_TOKEN": CRM_TOKEN})
        self.alertmanager_url = ""
        self.alert_label = ("faults_run", tag)  # on every alert of the run
        self.alert_rules_file = logdir / "alerts.toml"
        if "alerts" in self.sinks:
            self.alertmanager_url = alertmanager_url()
            self.alert_rules_file.write_text(per_event_alert_rules(ALERT_RULES.read_text()))
            self._add_sink("alerts", env, {
                "HOOKSTREAM_ALERT_RULES_FILE": str(self.alert_rules_file),
                "HOOKSTREAM_ALERTMANAGER_URL": self.alertmanager_url,
                "HOOKSTREAM_ALERT_WEBHOOK_URL": "",
                "HOOKSTREAM_ALERT_LABELS": "=".join(self.alert_label)})
        # The fetching sinks download from the media stand-in (tests/fakes/media.py, in a
        # process of its own), which the load's recording and transcript URLs point at.
        self.media_url = ""
        self.recordings_dir = logdir / "recordings"  # the recordings sink's local store
        if {"recordings", "transcripts"} & set(self.sinks):
            standin = free_port()
            self.media_url = f"http://127.0.0.1:{standin}"
            self.services["media-standin"] = Supervised(
                "media-standin",
                [sys.executable, "-m", "tests.fakes.media", "--port", str(standin)],
                env, logdir / "media-standin.log", cwd=REPO)
        if "recordings" in self.sinks:
            self._add_sink("recordings", env, {
                "HOOKSTREAM_RECORDINGS_STORE": "local",
                "HOOKSTREAM_RECORDINGS_DIR": str(self.recordings_dir),
                "HOOKSTREAM_RECORDINGS_ALLOWED_HOSTS": "127.0.0.1",
                "HOOKSTREAM_RECORDINGS_ALLOW_PRIVATE_ADDRESSES": "true"})
        if "transcripts" in self.sinks:
            self._add_sink("transcripts", env, {
                "HOOKSTREAM_TRANSCRIPTS_ALLOWED_HOSTS": "127.0.0.1",
                "HOOKSTREAM_TRANSCRIPTS_ALLOW_PRIVATE_ADDRESSES": "true",
                "HOOKSTREAM_TRANSCRIPTS_AUTHORIZATION": ""})
        self.ready_urls = {name: f"http://127.0.0.1:{port}/readyz"
                           for name, port in self.http_ports.items()}
        if self.crm_url:
            self.ready_urls["crm-standin"] = f"{self.crm_url}/healthz"
        if self.media_url:
            self.ready_urls["media-standin"] = f"{self.media_url}/healthz"
        self.edge_port = 0  # with ``edge``: deliveries go to the edge proxy in front of ingest
        if edge:
            haproxy = shutil.which("haproxy")
            if haproxy is None:
                raise RuntimeError("this scenario runs ingest behind the edge proxy (deploy/"
                                   "edge): it needs haproxy (apt-get install haproxy; "
                                   "deploy/local/test installs it)")
            self.edge_port, stats = free_port(), free_port()
            self.services["edge"] = Supervised("edge", [haproxy, "-db", "-f", str(EDGE_CONFIG)], {
                **env, **EDGE_ENV, "HOOKSTREAM_EDGE_BIND": f"127.0.0.1:{self.edge_port}",
                "HOOKSTREAM_EDGE_INGEST": f"127.0.0.1:{self.ingest_port}",
                "HOOKSTREAM_EDGE_STATS": f"127.0.0.1:{stats}",
                "HOOKSTREAM_EDGE_ERRORS": str(EDGE_CONFIG.parent / "errors")},
                logdir / "edge.log")
            self.ready_urls["edge"] = f"http://127.0.0.1:{stats}/healthz"

    def _add_sink(self, name: str, env: Mapping[str, str], settings: Mapping[str, str]
                  ) -> None:
        """``hookstream-sink-<name>`` in a consumer group of the run's own, with its
        /readyz and /metrics on a free port and ``settings`` beside the run's env."""
        self.http_ports[name] = port = free_port()
        self.services[name] = Supervised(name, [_exe(f"hookstream-sink-{name}")], {
            **env, "HOOKSTREAM_SINK_HTTP_PORT": str(port),
            "HOOKSTREAM_SINK_GROUP": f"hookstream-faults-{self.tag}-sink-{name}",
            **settings}, self.logdir / f"sink-{name}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port or self.ingest_port}"

    async def start(self, timeout_s: float = 90) -> None:
        import httpx

        from ..core import topics

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
        text = await self.metrics("ingest")
        if text is None:
            return None
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else None

    async def metrics(self, service: str) -> str | None:
        """A service's /metrics (None: not answering)."""
        import httpx

        try:
            async with httpx.AsyncClient(timeout=2) as client:
                response = await client.get(
                    f"http://127.0.0.1:{self.http_ports[service]}/metrics")
                response.raise_for_status()
                return response.text
        except httpx.HTTPError:
            return None

    async def assigned(self, service: str) -> list[int] | None:
        """The raw topic's partitions a normalizer holds (None: not answering), from its
        consumer-lag gauge, which has a series per assigned partition."""
        text = await self.metrics(service)
        if text is None:
            return None
        return sorted(int(labels["partition"]) for labels, _ in metric_samples(
            text, "hookstream_consumer_lag", topic=self.kafka.raw_topic))

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

        from ..sinks.runner import sink_topics

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
                         *(topic for sink in ("warehouse", *self.sinks)
                           for topic in sink_topics(self.kafka, sink))]
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


class Offer:
    """Distinct deliveries at ``rate`` per second, each retried per its provider's policy,
    until ``stop_offering``; every 2xx is handed to the accounting with its time.

    Open loop: every try is its own task on one aiohttp session, so a slow answer
    never holds the next delivery back, as with real providers.
    aiohttp, not httpx: under overload this process makes thousands of tries a second
    on the same 2 cores as the pipeline, and httpx's per-request cost held the offered
    rate under 300/s (aiohttp parses in C, and its pool does not grow quadratically)."""

    def __init__(self, url: str, sources: dict[str, Source],
                 policies: dict[str, RetryPolicy], rate: float, accounting: Accounting,
                 media: MediaUrl | None = None) -> None:
        self.url, self.sources, self.policies, self.rate = url, sources, policies, rate
        self.accounting = accounting
        self.media = media  # where the deliveries' recordings and transcripts are served
        self.offered: list[Offered] = []
        self.acked_at: dict[str, float] = {}  # receipt -> when the 2xx came back
        self.latencies: list[float] = []  # seconds from each try's send to its answer
        self.no_retry_after = 0  # 503s answered without Retry-After
        self.session: aiohttp.ClientSession | None = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def stop_offering(self) -> None:
        self._stop.set()

    def all_tries(self) -> list[tuple[float, int]]:
        return [t for o in self.offered for t in o.tries]

    async def run(self) -> None:
        import aiohttp

        from .loadgen import deliveries

        stream = deliveries(redeliver=0.0, malformed=0.0, media=self.media)
        # No connection limit: deliveries of independent senders do not queue behind
        # each other in one pool (a pool of 1,024 measured the same under overload).
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
        async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=False, skip_auto_headers=("User-Agent",)) as session:
            self.session = session
            last = time.monotonic()
            due = 0.0  # deliveries owed by the rate so far (``rate`` may change meanwhile)
            while not self._stop.is_set():
                now = time.monotonic()
                due += (now - last) * self.rate
                last = now
                while due >= 1:
                    task = asyncio.create_task(self._deliver(next(stream)))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    due -= 1
                await asyncio.sleep(0.005)
            if self._tasks:  # every retry chain ends (bounded by the policies)
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _post(self, delivery: Delivery, delivery_id: str, timeout_s: float
                    ) -> tuple[int, str, bool, dict[str, str]]:
        """One try: (status, receipt, whether a 503 lacked Retry-After, headers sent);
        status 0 for no answer within ``timeout_s`` (the provider's, for the whole try)
        or a network error."""
        import aiohttp
        import orjson

        from ..cli.send import signed_request

        assert self.session is not None
        source = self.sources[delivery.sample.provider]
        path, headers = signed_request(source, delivery.sample, time.time(), delivery_id)
        try:
            async with asyncio.timeout(timeout_s):
                async with self.session.post(self.url + path, data=delivery.sample.body,
                                             headers=headers) as response:
                    status = response.status
                    body = await response.read()
                    bare_503 = status == 503 and "Retry-After" not in response.headers
            receipt = str(orjson.loads(body).get("receipt", "")) if is_2xx(status) else ""
            return status, receipt, bare_503, headers
        except (aiohttp.ClientError, OSError, ValueError, TimeoutError):
            return 0, "", False, headers

    async def _deliver(self, delivery: Delivery) -> None:
        provider = delivery.sample.provider
        source, policy = self.sources[provider], self.policies[provider]
        offered = Offered(provider)
        self.offered.append(offered)
        delivery_id = f"msg_{os.urandom(8).hex()}"  # a provider's retry keeps its id
        for number in range(1, policy.tries + 1):
            sent = time.monotonic()
            status, receipt, bare_503, headers = await self._post(
                delivery, delivery_id, policy.timeout_s)
            self.no_retry_after += bare_503
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


    async def capacity(self, senders: int, seconds: float) -> float:
        """Deliveries/s ingest acknowledges with ``senders`` trying one after another as
        fast as they are answered (a closed loop) for ``seconds``: its capacity now.
        The probes acknowledged are accounted for like any other delivery."""
        from .loadgen import deliveries

        stream = deliveries(redeliver=0.0, malformed=0.0, media=self.media)
        acked = 0
        deadline = time.monotonic() + seconds

        async def sender() -> None:
            nonlocal acked
            while time.monotonic() < deadline:
                delivery = next(stream)
                status, receipt, _, headers = await self._post(
                    delivery, f"msg_{os.urandom(8).hex()}", 10.0)
                if is_2xx(status):
                    acked += 1
                    self.acked_at[receipt] = time.monotonic()
                    self.accounting.expect(delivery, self.sources[delivery.sample.provider],
                                           headers, receipt)

        while self.session is None:  # run() opens it
            await asyncio.sleep(0.05)
        await asyncio.gather(*(sender() for _ in range(senders)))
        return acked / seconds


# ---------------------------------------------------------------- other destinations
class Destination:
    """Exact accounting of a destination beside the warehouse (the CRM stand-in,
    Alertmanager). What it should hold is computed from the run's warehouse rows (every
    event exactly once; ``expect`` turns one event into the keys it owes, e.g. its
    event id), and compared with what the destination holds (``observe``: key ->
    times applied). ``look`` does both, once a second while the scenario runs."""

    name = ""

    def __init__(self, types: Iterable[str]) -> None:
        self.types = sorted(types)  # the canonical types that may owe something
        self.keys: dict[str, frozenset[str]] = {}  # event id -> keys it owes
        self.observed: Counter[str] = Counter()  # at the last look that could read it
        self.checks: list[tuple[float, bool]] = []  # (time, behind), as for the warehouse
        self.pending = -1  # keys owed and not observed at the last look (-1: no look yet)

    def expect(self, event: dict[str, Any]) -> frozenset[str]:
        raise NotImplementedError

    async def observe(self, client: httpx.AsyncClient) -> Counter[str]:
        """What the destination holds; raises httpx.HTTPError when it cannot be read."""
        raise NotImplementedError

    def owed(self) -> set[str]:
        return {key for keys in self.keys.values() for key in keys}

    async def look(self, pool: asyncpg.Pool, schema: str, client: httpx.AsyncClient) -> None:
        """One look: ``behind`` when a key owed by an event the warehouse has held for
        more than ``LAG_S`` is not in the destination (or it cannot be read)."""
        import httpx
        import orjson

        rows = await pool.fetch(
            f'SELECT event_id::text AS id, written_at < now() - make_interval(secs => $2)'
            f' AS old FROM "{schema}".events WHERE type = ANY($1::text[])',
            self.types, LAG_S)
        new = [r["id"] for r in rows if r["id"] not in self.keys]
        if new:
            for r in await pool.fetch(
                    f'SELECT event_id::text AS id, event::text AS event FROM "{schema}".events'
                    " WHERE event_id = ANY($1::uuid[])", new):
                self.keys[r["id"]] = self.expect(orjson.loads(r["event"]))
        readable = True
        try:
            self.observed = await self.observe(client)
        except (httpx.HTTPError, ValueError):
            readable = False
        old = {key for r in rows if r["old"] for key in self.keys.get(r["id"], ())}
        behind = (not readable and bool(old)) or any(not self.observed[k] for k in old)
        self.checks.append((time.monotonic(), behind))
        self.pending = len(self.owed() - {k for k, n in self.observed.items() if n > 0})

    def report(self, fault_end: float, metrics: str | None) -> tuple[str, int, int]:
        """(the line under the table, missing, duplicates), after the last look."""
        raise NotImplementedError

    def _caught_up(self, fault_end: float) -> str:
        at = caught_up_at(fault_end, self.checks)
        return ("not caught up in the run" if at is None
                else f"caught up {at - fault_end:.1f} s after the fault's end")


class CRMDestination(Destination):
    """The CRM stand-in (tests/fakes/crm.py): every finished-call event the CRM sink can
    map owes one upsert, applied exactly once (the stand-in counts, per event id, the
    call writes that brought it: a second activity for a call applies it again)."""

    name = "CRM"

    def __init__(self, url: str) -> None:
        from ..sinks.crm.mapping import FINISHED_TYPES

        super().__init__(FINISHED_TYPES)
        self.url = url
        self.unmappable = 0
        self.state: dict[str, Any] = {}

    def expect(self, event: dict[str, Any]) -> frozenset[str]:
        from ..sinks.crm.mapping import Unmappable, activity

        try:
            return frozenset({activity(event).event_id})
        except Unmappable:  # dead-lettered crm_unmappable by the sink: owes nothing
            self.unmappable += 1
            return frozenset()

    async def observe(self, client: httpx.AsyncClient) -> Counter[str]:
        response = await client.get(f"{self.url}/_admin/state")
        response.raise_for_status()
        self.state = response.json()
        return Counter({str(k): int(v) for k, v in self.state["applied"].items()})

    async def set_mode(self, client: httpx.AsyncClient, **mode: Any) -> None:
        (await client.post(f"{self.url}/_admin/faults", json=mode)).raise_for_status()

    def report(self, fault_end: float, metrics: str | None) -> tuple[str, int, int]:
        owed = self.owed()
        missing, duplicates, unexpected = destination_figures(owed, self.observed)
        faulted = ", ".join(f"{k}: {n}" for k, n in (self.state.get("faulted") or {}).items())
        parked = metric_total(metrics, "hookstream_sink_events_total", sink="crm",
                              outcome="deferred")
        dead = metric_total(metrics, "hookstream_sink_events_total", sink="crm",
                            outcome="dead_letter")
        retried = metric_total(metrics, "hookstream_sink_batch_retries_total", sink="crm")
        line = (f"CRM: {len(owed)} upserts owed (finished-call events in the warehouse"
                + (f"; {self.unmappable} unmappable" if self.unmappable else "")
                + f"), {sum(1 for k in owed if self.observed[k])} applied by the stand-in: "
                f"missing {missing}, applied twice {duplicates}, not owed {unexpected} "
                f"(activities beyond one per call: {self.state.get('duplicate_activities')}, "
                f"writes that applied nothing new: {self.state.get('redundant_writes')}); "
                f"forced answers of the stand-in: {faulted or 'none'}; the CRM sink parked "
                f"{parked:.0f} events on its retry topic, retried {retried:.0f} batches in "
                f"place, dead-lettered {dead:.0f}; {self._caught_up(fault_end)}")
        return line, missing, duplicates


class AlertsDestination(Destination):
    """Alertmanager: every rule hit of the run's events owes one alert (the rules are
    grouped by event id too, see ``per_event_alert_rules``), found by the run's label.
    Alertmanager keeps alerts in memory only, so the alerts it held when it was stopped
    (``before``, read by the scenario) count as delivered even when its restart lost
    them; every other alert owed must be in it after its return."""

    name = "alerts"

    def __init__(self, url: str, label: tuple[str, str], rules: Rules) -> None:
        super().__init__(rules.types)
        self.url = url.rstrip("/")
        self.label = label
        self.rules = rules
        self.before: set[str] = set()  # in Alertmanager when it was stopped
        self.current: set[str] = set()  # at the last look

    def expect(self, event: dict[str, Any]) -> frozenset[str]:
        return frozenset(f"{rule.name} {event.get('event_id')}"
                         for rule in self.rules.matching(event))

    async def fetch(self, client: httpx.AsyncClient) -> set[str]:
        name, value = self.label
        response = await client.get(f"{self.url}/api/v2/alerts",
                                    params={"filter": f'{name}="{value}"'})
        response.raise_for_status()
        return {f"{a['labels'].get('rule')} {a['labels'].get('event_id')}"
                for a in response.json()}

    async def observe(self, client: httpx.AsyncClient) -> Counter[str]:
        self.current = await self.fetch(client)
        return Counter(self.before | self.current)

    def report(self, fault_end: float, metrics: str | None) -> tuple[str, int, int]:
        owed = self.owed()
        missing, _, unexpected = destination_figures(owed, self.observed)
        after = owed - self.before
        retried = metric_total(metrics, "hookstream_sink_batch_retries_total", sink="alerts")
        errors = metric_total(metrics, "hookstream_alerts_sent_total",
                              destination="alertmanager", outcome="error")
        dead = metric_total(metrics, "hookstream_sink_events_total", sink="alerts",
                            outcome="dead_letter")
        line = (f"alerts: {len(owed)} owed (rule hits of the warehouse's events, an alert "
                f"each), {len(owed & self.before)} in Alertmanager when it was stopped, "
                f"{len(after)} owed after that: {len(after & self.current)} in Alertmanager "
                f"after its return, missing {missing} (not owed {unexpected}; duplicates "
                "cannot be seen: Alertmanager merges equal labels); "
                f"{len(self.before - self.current)} of those held before the stop are gone "
                "after its restart (Alertmanager keeps alerts in memory; the sink sends an "
                f"alert once); the alerts sink retried {retried:.0f} batches in place "
                f"({errors:.0f} alerts refused by a down Alertmanager), dead-lettered "
                f"{dead:.0f}; {self._caught_up(fault_end)}")
        return line, missing, 0


@dataclasses.dataclass(frozen=True)
class MediaRow:
    """One row of a fetching sink's table in the run's schema: the call it is for, the
    bytes it says were fetched, and (recordings) the stored file it points at."""

    call_key: str
    bytes: int
    path: str | None = None  # the local store's file (from ``location``), if any
    on_call: bool = True  # the call's row in ``calls`` carries it too


@dataclasses.dataclass(frozen=True)
class MediaFigures:
    """How a fetching sink's table (and store) compares with what the events owe."""

    owed: int  # calls owed a row: an event in the warehouse links their media
    held: int  # of those, with a row of the size the stand-in served (and its file)
    missing: int  # owed and not held (no row, or a wrong one)
    wrong: int  # of the missing: a row whose size, or file, is not what was served
    extra_rows: int  # rows beyond one per call
    orphans: int  # stored files no row points at
    unexpected: int  # rows of calls nothing owed
    fetches: int  # the stand-in's fetches of the owed calls' media
    refetched: int  # owed calls fetched more than once
    extra_fetches: int  # fetches beyond one per owed call

    @property
    def duplicates(self) -> int:
        return self.extra_rows + self.orphans


def media_figures(owed: Mapping[str, str], rows: Iterable[MediaRow],
                  served: Mapping[str, int], fetches: Mapping[str, int],
                  files: Mapping[str, int] | None = None
                  ) -> tuple[MediaFigures, Counter[str]]:
    """Figures of a fetching sink, and the calls it holds (call key -> good rows).

    ``owed``: call key -> the stand-in path of its media (every event in the warehouse
    that links some); ``rows``: the sink's table; ``served``: path -> bytes the stand-in
    served it (each fetch of a path gets the same bytes); ``fetches``: path -> fetches;
    ``files``: the store's files (path -> size), None for a sink without one. A row
    holds its call when its size is what was served and, with a store, its file is
    there with that size; a refetch is no duplicate, a second row or a file without a
    row is."""
    rows = list(rows)
    per_key = Counter(r.call_key for r in rows)
    held: Counter[str] = Counter()
    wrong = set()
    for row in rows:
        path = owed.get(row.call_key)
        if path is None:
            continue
        good = (served.get(path) == row.bytes
                and (files is None or (row.path is not None
                                       and files.get(row.path) == row.bytes)))
        if good:
            held[row.call_key] += 1
        else:
            wrong.add(row.call_key)
    pointed = {r.path for r in rows if r.path is not None}
    orphans = 0 if files is None else sum(1 for f in files if f not in pointed)
    missing = sum(1 for key in owed if not held[key])
    counts = [fetches.get(path, 0) for path in owed.values()]
    return MediaFigures(
        owed=len(owed), held=sum(1 for key in owed if held[key]), missing=missing,
        wrong=len(wrong - set(held)), extra_rows=sum(n - 1 for n in per_key.values() if n > 1),
        orphans=orphans, unexpected=sum(1 for key in per_key if key not in owed),
        fetches=sum(counts), refetched=sum(1 for n in counts if n > 1),
        extra_fetches=sum(n - 1 for n in counts if n > 1)), held


class MediaDestination(Destination):
    """A fetching sink (recordings, transcripts) and the media stand-in it fetches from
    (tests/fakes/media.py): every event in the warehouse that links media (``url_field``;
    test events aside: the sinks skip them) owes its call one row in the sink's table of
    the run's schema, of the size the stand-in served (``media_figures``)."""

    table = ""  # the sink's table
    url_field = ""  # the canonical field of the link
    what = ""  # how the report names the events that owe, e.g. "call.ended events"
    call_column = ""  # the column of ``calls`` the sink fills too
    sink = ""  # the sink's name (its metrics)

    def __init__(self, types: Iterable[str], standin_url: str) -> None:
        super().__init__(types)
        self.standin_url = standin_url.rstrip("/")
        self.paths: dict[str, str] = {}  # call key -> the stand-in path of its media
        self.rows: list[MediaRow] = []  # at the last look
        self.files: dict[str, int] | None = None  # the store's, at the last look
        self.state: dict[str, Any] = {}  # the stand-in's, at the last look
        self.figures: MediaFigures | None = None

    def expect(self, event: dict[str, Any]) -> frozenset[str]:
        from urllib.parse import unquote, urlsplit

        from ..sinks.warehouse.schema import subject_key

        url = event.get(self.url_field)
        subject = event.get("call_id") or event.get("session_id")
        provider = event.get("provider")
        if (event.get("test") or not isinstance(url, str) or not url
                or not isinstance(subject, str) or not isinstance(provider, str)):
            return frozenset()
        key = subject_key(provider, subject)
        self.paths[key] = unquote(urlsplit(url).path)
        return frozenset({key})

    async def read_rows(self, pool: asyncpg.Pool, schema: str) -> list[MediaRow]:
        raise NotImplementedError

    def read_files(self) -> dict[str, int] | None:
        return None

    async def look(self, pool: asyncpg.Pool, schema: str, client: httpx.AsyncClient) -> None:
        import asyncpg

        try:
            self.rows = await self.read_rows(pool, schema)
        except asyncpg.UndefinedTableError:  # the sink has not migrated yet
            self.rows = []
        self.files = await asyncio.to_thread(self.read_files)
        await super().look(pool, schema, client)

    async def observe(self, client: httpx.AsyncClient) -> Counter[str]:
        response = await client.get(f"{self.standin_url}/_admin/state")
        response.raise_for_status()
        self.state = response.json()
        self.figures, held = media_figures(
            {key: self.paths[key] for key in self.owed()}, self.rows,
            {str(k): int(v) for k, v in self.state["served"].items()},
            {str(k): int(v) for k, v in self.state["fetches"].items()}, self.files)
        return held

    def report(self, fault_end: float, metrics: str | None) -> tuple[str, int, int]:
        f = self.figures
        if f is None:
            return f"{self.name}: never read", len(self.owed()), 0
        owed = self.owed()
        not_on_call = sum(1 for r in self.rows if r.call_key in owed and not r.on_call)
        faulted = ", ".join(f"{k}: {n}" for k, n in (
            (self.state.get("faulted") or {}).get(self.table) or {}).items())
        parked = metric_total(metrics, "hookstream_sink_events_total", sink=self.sink,
                              outcome="deferred")
        dead = metric_total(metrics, "hookstream_sink_events_total", sink=self.sink,
                            outcome="dead_letter")
        line = (f"{self.name}: {f.owed} owed ({self.what} in the warehouse with a "
                f"{self.url_field}, a row each), {f.held} held{self.held_means()}: missing "
                f"{f.missing} (a wrong row: {f.wrong}), duplicates {f.duplicates} (rows beyond "
                f"one per call {f.extra_rows}{self.orphans_note(f)}), not owed {f.unexpected}; "
                f"calls.{self.call_column} empty for {not_on_call} of the rows; the media "
                f"stand-in served {f.fetches} fetches of them, {f.refetched} fetched again "
                f"({f.extra_fetches} fetches beyond one a call; not duplicates), forced "
                f"answers: {faulted or 'none'}; the sink parked {parked:.0f} events on its "
                f"retry topic, dead-lettered {dead:.0f} (since its last start); "
                f"{self._caught_up(fault_end)}")
        return line, f.missing, f.duplicates

    def held_means(self) -> str:
        return " (a row of the size the stand-in served)"

    def orphans_note(self, figures: MediaFigures) -> str:
        return ""


class RecordingsDestination(MediaDestination):
    """The recordings sink: a ``recordings`` row per call and its file in the local
    store (``store_dir``), both of the size the stand-in served; a stored file no row
    points at is a duplicate (the spool's ``.partial`` leftovers are not stored files)."""

    name = "recordings"
    sink = "recordings"
    table = "recordings"
    url_field = "recording_url"
    what = "call.ended events"
    call_column = "recording_location"

    def __init__(self, standin_url: str, store_dir: Path) -> None:
        from ..sinks.recordings.sink import RecordingsSink

        super().__init__(RecordingsSink.wanted, standin_url)
        self.store_dir = store_dir
        self.partial = 0  # spool files left in .partial at the last look

    async def read_rows(self, pool: asyncpg.Pool, schema: str) -> list[MediaRow]:
        from urllib.parse import unquote, urlsplit

        rows = await pool.fetch(
            f'SELECT r.call_key, r.bytes, r.location, c.recording_location IS NOT NULL'
            f' AS on_call FROM "{schema}".recordings r'
            f' LEFT JOIN "{schema}".calls c USING (call_key)')
        return [MediaRow(r["call_key"], int(r["bytes"]),
                         unquote(urlsplit(r["location"]).path)
                         if str(r["location"]).startswith("file://") else None,
                         bool(r["on_call"])) for r in rows]

    def read_files(self) -> dict[str, int] | None:
        files: dict[str, int] = {}
        self.partial = 0
        root = self.store_dir.resolve()
        for directory, subdirs, names in os.walk(root):
            if Path(directory) == root and ".partial" in subdirs:
                subdirs.remove(".partial")
                with contextlib.suppress(OSError):
                    self.partial = len(os.listdir(root / ".partial"))
            for name in names:
                path = Path(directory) / name
                with contextlib.suppress(FileNotFoundError):
                    files[str(path)] = path.stat().st_size
        return files

    def held_means(self) -> str:
        return " (a row and a stored file, of the size the stand-in served)"

    def orphans_note(self, figures: MediaFigures) -> str:
        return (f", stored files without a row {figures.orphans}; spool leftovers in "
                f".partial {self.partial}")


class TranscriptsDestination(MediaDestination):
    """The transcripts sink: a ``transcripts`` row per call or session, of the size the
    stand-in served."""

    name = "transcripts"
    sink = "transcripts"
    table = "transcripts"
    url_field = "transcript_url"
    what = "session.ended/.errored events"
    call_column = "transcript"

    def __init__(self, standin_url: str) -> None:
        from ..sinks.transcripts.sink import TranscriptsSink

        super().__init__(TranscriptsSink.wanted, standin_url)

    async def read_rows(self, pool: asyncpg.Pool, schema: str) -> list[MediaRow]:
        rows = await pool.fetch(
            f'SELECT t.call_key, t.bytes, c.transcript IS NOT NULL AS on_call'
            f' FROM "{schema}".transcripts t LEFT JOIN "{schema}".calls c USING (call_key)')
        return [MediaRow(r["call_key"], int(r["bytes"]), None, bool(r["on_call"]))
                for r in rows]


async def set_media_mode(client: httpx.AsyncClient, standin_url: str, **mode: Any) -> None:
    """Switch the media stand-in's failure mode (its /_admin/faults)."""
    (await client.post(f"{standin_url}/_admin/faults", json=mode)).raise_for_status()


# ---------------------------------------------------------------- scenarios
@dataclasses.dataclass
class Context:
    pipeline: Pipeline
    short: bool
    log_path: Path  # the stack commands' output
    notes: list[str] = dataclasses.field(default_factory=list)  # printed under the table
    destinations: dict[str, Destination] = dataclasses.field(default_factory=dict)
    # Watchers an injection leaves running (how the fault played out); cancelled, if
    # still running, once the run has drained.
    watchers: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    client: httpx.AsyncClient | None = None
    offer: Offer | None = None  # the load, for scenarios that change its rate
    violations: list[str] = dataclasses.field(default_factory=list)  # fail the scenario

    async def stack(self, *args: str, attempts: int = 3) -> None:
        # A scenario restarts what it stopped: whatever else answers on that port
        # (another checkout's broker) must not stand in for it, or the run measures
        # a stranger (it once cost a CI run 1,125 deliveries).
        await stack(*args, log_path=self.log_path, attempts=attempts, reuse=False)

    def note(self, text: str) -> None:
        self.notes.append(text)
        say(text)

    def watch(self, watcher: Awaitable[None]) -> None:
        async def run() -> None:
            await watcher
        self.watchers.append(asyncio.create_task(run()))


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


EDGE_CONFIG = REPO / "deploy" / "edge" / "haproxy.cfg"
# The edge proxy's settings in the scenarios: its documented defaults (deploy/edge).
EDGE_ENV = {"HOOKSTREAM_EDGE_INGEST_MAXCONN": "64", "HOOKSTREAM_EDGE_QUEUE_S": "3s"}
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")  # cgroup v1's cpu controller (root)
OVERLOAD_CPU = 0.05  # of one CPU, for ingest during the overload scenario


def _limit_cpu(pid: int, fraction: float, name: str) -> Path:
    """Hold process ``pid`` (all its threads) to ``fraction`` of one CPU: a cgroup of
    its own under cgroup v1's cpu controller. Returns the group (for ``_unlimit``)."""
    if not (CGROUP_CPU / "cgroup.procs").exists():
        raise RuntimeError(f"overload needs cgroup v1's cpu controller at {CGROUP_CPU} "
                           "(and root) to hold ingest to a fraction of a CPU")
    group = CGROUP_CPU / name
    group.mkdir(exist_ok=True)
    (group / "cpu.cfs_period_us").write_text("100000")
    (group / "cpu.cfs_quota_us").write_text(str(int(100000 * fraction)))
    (group / "cgroup.procs").write_text(str(pid))
    return group


def _unlimit(group: Path) -> None:
    with contextlib.suppress(OSError):
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (CGROUP_CPU / "cgroup.procs").write_text(pid)
        group.rmdir()


async def _watch_shedding(url: str, out: Path) -> None:
    """Once a second, ingest's own view of the overload (loop lag, admitted share,
    answers so far) as a table in ``out``, to read next to the scenario's figures."""
    import httpx

    wanted = ("hookstream_ingest_loop_lag_seconds", "hookstream_ingest_admit_share",
              'hookstream_ingest_refused_heads_total{reason="overload"}',
              'hookstream_ingest_refused_heads_total{reason="concurrency"}',
              "hookstream_ingest_accept_queue", "hookstream_ingest_connections_total")
    with out.open("w") as table:
        table.write("seconds\tloop_lag_s\tadmit_share\tshed_at_head\tshed_concurrency"
                    "\taccept_queue\tconnections\tanswered_202\tanswered_503\n")
        began = time.monotonic()
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    text = (await client.get(url)).text
                    values = dict.fromkeys(wanted, 0.0)
                    served = {"202": 0.0, "503": 0.0}
                    for line in text.splitlines():
                        name, _, value = line.rpartition(" ")
                        if name in values:
                            values[name] = float(value)
                        elif name.startswith("hookstream_ingest_requests_total{"):
                            status = re.search(r'status="(\d+)"', name)
                            if status and status[1] in served:
                                served[status[1]] += float(value)
                    table.write("\t".join(f"{v:g}" for v in (
                        round(time.monotonic() - began), *values.values(), *served.values()))
                        + "\n")
                    table.flush()
                await asyncio.sleep(1)


async def _overload(ctx: Context) -> None:
    """Ingest held to 5 % of a CPU (so that this generator can outrun it); its capacity
    measured (64 senders in a closed loop, 5 s); then twice that offered, open loop,
    for 30 s (--short) or 60 s, each delivery retried per its provider's policy. Every
    try must be answered inside the provider's 10 s, 202 or 503 + Retry-After."""
    offer, ingest = ctx.offer, ctx.pipeline.services["ingest"]
    assert offer is not None and ingest.proc is not None
    group = _limit_cpu(ingest.proc.pid, OVERLOAD_CPU, f"hookstream-faults-{ctx.pipeline.tag}")
    try:
        base = offer.rate
        offer.rate = 0.0  # the capacity probe alone
        capacity = await offer.capacity(64, 5.0)
        offered_rate = max(2 * capacity, base * 2)
        ctx.note(f"overload: ingest held to {OVERLOAD_CPU:.0%} of a CPU acknowledges "
                 f"{capacity:.0f} deliveries/s (64 senders, closed loop, 5 s); offering "
                 f"{offered_rate:.0f}/s")
        started = time.monotonic()
        offer.rate = offered_rate
        watching = asyncio.create_task(_watch_shedding(
            f"http://127.0.0.1:{ctx.pipeline.ingest_admin}/metrics",
            ctx.pipeline.logdir / "overload-ingest.tsv"))
        await asyncio.sleep(30 if ctx.short else 60)
        offer.rate = base
        ended = time.monotonic()
        watching.cancel()
        # The retries of deliveries offered in the window go on after it: count every
        # try of a delivery whose first try fell in the window, once they are done.
        await asyncio.sleep(3 * 12)
    finally:
        _unlimit(group)
    window = [o for o in offer.offered if o.tries and started <= o.tries[0][0] < ended]
    tries = [status for o in window for _, status in o.tries]
    answered = Counter(tries)
    late = answered.get(0, 0)
    ctx.note(f"overload: {len(window)} deliveries offered in the {ended - started:.0f} s "
             f"at {offered_rate:.0f}/s, {len(tries)} tries: 202 {answered.get(202, 0)}, "
             f"503 {answered.get(503, 0)} ({offer.no_retry_after} without Retry-After), "
             f"no answer within the provider's 10 s {late}, other "
             f"{sum(n for s, n in answered.items() if s not in (0, 202, 503))}; "
             f"{sum(1 for o in window if o.given_up)} given up after every try was shed")
    if late:
        ctx.violations.append(f"overload: {late} tries not answered within 10 s")
    if offer.no_retry_after:
        ctx.violations.append(f"overload: {offer.no_retry_after} 503s without Retry-After")


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


SPLIT_WITHIN_S = 90.0
AFTERWARDS_S = 60.0  # longest wait for a scenario's notes after its run


async def _normalizer_rebalance(ctx: Context) -> None:
    """Two normalizers share the raw topic's partitions; one is SIGKILLed and stays
    dead: the group rebalances (once the broker sees its session expire) and the
    survivor takes its partitions over, from their last committed offsets."""
    pipeline = ctx.pipeline
    # The second normalizer joins once the pipeline is up; the group's first rebalance
    # waits for the first member's poll loop, which on 2 busy cores took over 30 s.
    deadline = time.monotonic() + SPLIT_WITHIN_S
    while True:  # a real split first: each of the two holds partitions
        held = {n: await pipeline.assigned(n) for n in ("normalizer", "normalizer-2")}
        if all(held.values()) and sum(len(p or ()) for p in held.values()) == 3:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the two normalizers did not share the raw topic's "
                               f"partitions within {SPLIT_WITHIN_S:g} s ({held})")
        await asyncio.sleep(0.5)
    pipeline.services["normalizer-2"].kill(signal.SIGKILL, restart=False)
    killed = time.monotonic()
    ctx.note(f"SIGKILL of normalizer-2 (not restarted) holding raw partitions "
             f"{held['normalizer-2']}; normalizer held {held['normalizer']}")

    async def takeover() -> None:
        while True:
            held = await pipeline.assigned("normalizer")
            if held is not None and len(held) == 3:
                ctx.note(f"normalizer held all of {held} {time.monotonic() - killed:.1f} s "
                         "after the kill")
                return
            await asyncio.sleep(0.5)
    ctx.watch(takeover())


async def _raw_partitions_added(ctx: Context) -> None:
    """The raw topic goes from 3 to 6 partitions under load (the Kafka admin API, as
    `kafka-topics --alter --partitions 6` does). Ingest's readiness probe learns the
    new partitions and sends to them; the normalizer's group must be assigned them."""
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

    kafka = ctx.pipeline.kafka
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap,
                                request_timeout_ms=kafka.request_timeout_ms)
    await admin.start()
    try:
        await admin.create_partitions({kafka.raw_topic: NewPartitions(total_count=6)})
    finally:
        await admin.close()
    added = time.monotonic()
    ctx.note("the raw topic's partitions raised from 3 to 6")

    async def assigned() -> None:
        while True:
            held = await ctx.pipeline.assigned("normalizer")
            if held is not None and len(held) == 6:
                ctx.note(f"the normalizer held all 6 raw partitions "
                         f"{time.monotonic() - added:.1f} s after they were added")
                return
            await asyncio.sleep(0.5)
    ctx.watch(assigned())


async def _new_partitions_read(ctx: Context) -> None:
    """After the run: how many records ingest put on the new raw partitions, and up to
    where the normalizer's group committed them."""
    from aiokafka.admin import AIOKafkaAdminClient

    from ..core.kafka import end_offsets

    kafka = ctx.pipeline.kafka
    ends = {tp.partition: end for tp, end in (await end_offsets(kafka, kafka.raw_topic)).items()}
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        committed = {tp.partition: meta.offset for tp, meta in (
            await admin.list_consumer_group_offsets(ctx.pipeline.normalizer_group)).items()
            if tp.topic == kafka.raw_topic}
    finally:
        await admin.close()
    new = [p for p in sorted(ends) if p >= 3]
    ctx.note(f"records on the new raw partitions {new}: "
             f"{sum(ends[p] for p in new)} (committed by the normalizer's group: "
             f"{sum(max(0, committed.get(p, 0)) for p in new)}); on the first three: "
             f"{sum(ends[p] for p in ends if p < 3)}")


async def _crm_429_5xx(ctx: Context) -> None:
    """The CRM stand-in answers every request 429 (Retry-After: 1) or a 5xx, in turns,
    for 30 s (--short) or a minute, then recovers."""
    crm = ctx.destinations["crm"]
    assert isinstance(crm, CRMDestination) and ctx.client is not None
    await crm.set_mode(ctx.client, mode="storm", statuses=[429, 500, 429, 503, 429, 502],
                       retry_after="1")
    await asyncio.sleep(30 if ctx.short else 60)
    await crm.set_mode(ctx.client, mode="up")


async def _alertmanager_down(ctx: Context) -> None:
    """`stack down alertmanager`, 30 s (--short) or a minute, `stack up alertmanager`.
    Right before the stop, the alerts sink is paused (SIGSTOP) for the time it takes to
    read what Alertmanager holds and to stop it, so that the alerts delivered before the
    stop are known exactly (Alertmanager keeps alerts in memory: its restart loses them)."""
    alerts = ctx.destinations["alerts"]
    assert isinstance(alerts, AlertsDestination) and ctx.client is not None
    sink = ctx.pipeline.services["alerts"]
    paused = time.monotonic()
    sink.kill(signal.SIGSTOP)
    try:
        await asyncio.sleep(0.5)  # answers already on their way are in
        alerts.before = await alerts.fetch(ctx.client)
        await ctx.stack("down", "alertmanager", attempts=1)
    finally:
        sink.kill(signal.SIGCONT)
    ctx.note(f"{len(alerts.before)} alerts of the run in Alertmanager when it was stopped "
             f"(the alerts sink paused {time.monotonic() - paused:.1f} s for that)")
    await asyncio.sleep(30 if ctx.short else 60)
    await ctx.stack("up", "alertmanager")


def _kill_fetching(service: str) -> Callable[[Context], Awaitable[None]]:
    """SIGKILL of a fetching sink with fetches in flight: the media stand-in answers
    every fetch 1 s late from 2 s before the kill until it (then on time again)."""
    async def inject(ctx: Context) -> None:
        assert ctx.client is not None
        url = ctx.pipeline.media_url
        await set_media_mode(ctx.client, url, mode="slow", delay_s=1.0)
        try:
            await asyncio.sleep(2)
            ctx.pipeline.services[service].kill(signal.SIGKILL)
        finally:
            await set_media_mode(ctx.client, url, mode="up")
    return inject


async def _media_5xx(ctx: Context) -> None:
    """The media stand-in answers every fetch 500, 502, 503 or 504, in turns, for 30 s
    (--short) or a minute, then recovers."""
    assert ctx.client is not None
    url = ctx.pipeline.media_url
    await set_media_mode(ctx.client, url, mode="down", statuses=[500, 502, 503, 504])
    await asyncio.sleep(30 if ctx.short else 60)
    await set_media_mode(ctx.client, url, mode="up")


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    doc: str
    inject: Callable[[Context], Awaitable[None]]
    default: bool = True  # run when no scenario is named
    spool_fs_bytes: int = 0  # > 0: the spool on a tmpfs of this size (needs root)
    ingest_env: dict[str, str] = dataclasses.field(default_factory=dict)
    normalizers: int = 1  # instances in the normalizer's consumer group
    # Beside the warehouse: "crm" (with the CRM stand-in), "alerts", "recordings" and
    # "transcripts" (with the media stand-in).
    sinks: tuple[str, ...] = ()
    edge: bool = False  # deliveries through the edge proxy (deploy/edge: HAProxy) to ingest
    # After the run has drained: notes on how the fault played out.
    afterwards: Callable[[Context], Awaitable[None]] | None = None


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
    Scenario("normalizer-rebalance", "two normalizers in one consumer group; SIGKILL of "
             "one, not restarted: the survivor takes its partitions over (a rebalance "
             "under load)", _normalizer_rebalance, normalizers=2),
    Scenario("raw-partitions-added", "the raw topic's partitions raised from 3 to 6 under "
             "load (Kafka admin API)", _raw_partitions_added,
             afterwards=_new_partitions_read),
    Scenario("crm-429-5xx", "with the CRM sink: the CRM stand-in answers 429 "
             "(Retry-After) and 5xx in turns for 30 s (--short) or a minute, then recovers",
             _crm_429_5xx, sinks=("crm",)),
    Scenario("alertmanager-down", "with the alerts sink: `stack down alertmanager`, 30 s "
             "(--short) or a minute, `stack up alertmanager`", _alertmanager_down,
             sinks=("alerts",)),
    Scenario("kill-crm", "with the CRM sink: SIGKILL of hookstream-sink-crm; restarted",
             _kill("crm"), sinks=("crm",)),
    Scenario("kill-alerts", "with the alerts sink: SIGKILL of hookstream-sink-alerts; "
             "restarted", _kill("alerts"), sinks=("alerts",)),
    Scenario("kill-recordings", "with the recordings sink: SIGKILL of "
             "hookstream-sink-recordings with downloads in flight (the media stand-in "
             "answering 1 s late for the 2 s before); restarted",
             _kill_fetching("recordings"), sinks=("recordings",)),
    Scenario("kill-transcripts", "with the transcripts sink: SIGKILL of "
             "hookstream-sink-transcripts with fetches in flight (the media stand-in "
             "answering 1 s late for the 2 s before); restarted",
             _kill_fetching("transcripts"), sinks=("transcripts",)),
    Scenario("media-5xx", "with the recordings and transcripts sinks: the media stand-in "
             "answers every fetch 5xx for 30 s (--short) or a minute, then recovers",
             _media_5xx, sinks=("recordings", "transcripts")),
    Scenario("overload", "ingest held to 5 % of a CPU (cgroup, needs root) behind the edge "
             "proxy (deploy/edge: HAProxy); its capacity measured, then twice that offered for "
             "30 s (--short) or 60 s: every try answered inside 10 s, 202 or 503 + "
             "Retry-After", _overload, edge=True,
             ingest_env={"HOOKSTREAM_INGEST_ANSWER_WITHIN_S": "5"}),
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
    from ..core.sources import load_sources
    from .loadgen import Accounting
    from .samples import media_urls

    result = Result(scenario.name)
    tag = f"{run_id}_{scenario.name.replace('-', '_')}"
    logdir = settings.logdir / scenario.name
    logdir.mkdir(parents=True, exist_ok=True)
    spool_dir = logdir / "spool" if settings.spool else None
    pipeline = Pipeline(tag, logdir, settings.sources_file, spool_dir, scenario.ingest_env,
                        scenario.normalizers, scenario.sinks, scenario.edge)
    ctx = Context(pipeline, settings.short, logdir / "stack.log")
    say(f"{scenario.name}: starting a pipeline of its own (schema {pipeline.schema}, "
        f"logs {logdir})")
    from ..cli.send import pick_sources

    sources = pick_sources(load_sources(settings.sources_file), None)
    accounting: Accounting | None = None
    mounted = False
    watching_destinations: asyncio.Task[None] | None = None
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
        watching_destinations = await _start_destinations(ctx)
        offer = ctx.offer = Offer(pipeline.url, sources, settings.policies, settings.rate,
                                  accounting, media_urls(pipeline.media_url)
                                  if pipeline.media_url else None)
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
            while time.monotonic() < deadline and (
                    accounting.counts()[2] or caught_up() is None
                    or any(d.pending != 0 or caught_up_at(fault_end, d.checks) is None
                           for d in ctx.destinations.values())):
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
        for watcher in ctx.watchers:
            watcher.cancel()
        if scenario.afterwards is not None:
            # Notes only (how the fault played out): bounded, as its Kafka admin calls
            # once waited for ever on a group coordinator (raw-partitions-added).
            try:
                await asyncio.wait_for(scenario.afterwards(ctx), AFTERWARDS_S)
            except TimeoutError:
                ctx.note(f"the notes after the run timed out after {AFTERWARDS_S:g} s")
        if watching_destinations is not None:
            watching_destinations.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching_destinations
        for name, destination in ctx.destinations.items():
            await _last_look(ctx, destination)
            line, missing, duplicates = destination.report(
                fault_end, await pipeline.metrics(name))
            ctx.notes.append(line)
            result.sink_missing += missing
            result.sink_duplicates += duplicates
        if ctx.violations:
            result.error = "; ".join(ctx.violations)
    except Exception as exc:  # reported in the table; the suite goes on
        result.error = repr(exc)
        say(f"{scenario.name}: ERROR {exc!r}")
    finally:
        result.notes = ctx.notes
        for leftover in (*ctx.watchers, watching_destinations):
            if leftover is not None and not leftover.done():
                leftover.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await leftover
        if ctx.client is not None:
            await ctx.client.aclose()
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
            await ctx.stack("up", "kafka", "postgres",
                            *(("alertmanager",) if "alerts" in scenario.sinks else ()))
        if not settings.keep:
            await pipeline.drop()
    say(f"{scenario.name}: offered {result.offered}, 2xx {result.answered_2xx}, given up "
        f"{result.given_up}, missing {result.missing}, duplicate rows "
        f"{result.duplicate_rows}, restarts {result.restarts or 'none'}")
    return result


async def _start_destinations(ctx: Context) -> asyncio.Task[None] | None:
    """The scenario's destinations beside the warehouse, and a task that looks at each
    once a second (until cancelled)."""
    import asyncpg
    import httpx

    from ..sinks.alerts.rules import load_rules

    pipeline = ctx.pipeline
    ctx.client = httpx.AsyncClient(timeout=5)
    if pipeline.crm_url:
        ctx.destinations["crm"] = CRMDestination(pipeline.crm_url)
    if pipeline.alertmanager_url:
        ctx.destinations["alerts"] = AlertsDestination(
            pipeline.alertmanager_url, pipeline.alert_label,
            load_rules(pipeline.alert_rules_file))
    if "recordings" in pipeline.sinks:
        ctx.destinations["recordings"] = RecordingsDestination(
            pipeline.media_url, pipeline.recordings_dir)
    if "transcripts" in pipeline.sinks:
        ctx.destinations["transcripts"] = TranscriptsDestination(pipeline.media_url)
    if not ctx.destinations:
        return None
    pool = await asyncpg.create_pool(pipeline.dsn, min_size=1, max_size=1)
    client = ctx.client

    async def watch() -> None:
        try:
            while True:
                for destination in ctx.destinations.values():
                    try:
                        await asyncio.wait_for(
                            destination.look(pool, pipeline.schema, client), 15)
                    except Exception as exc:  # the measuring survives the fault
                        say(f"{destination.name}: look cut short ({exc!r})")
                await asyncio.sleep(1)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)
    return asyncio.create_task(watch())


async def _last_look(ctx: Context, destination: Destination) -> None:
    """A last look at the warehouse and the destination, retried while either cannot
    be read (the figures come from it)."""
    import asyncpg
    import httpx

    assert ctx.client is not None
    for attempt in range(10):
        try:
            pool = await asyncpg.create_pool(ctx.pipeline.dsn, min_size=1, max_size=1)
            try:
                await destination.look(pool, ctx.pipeline.schema, ctx.client)
                # The look passes over a destination it cannot read; this raises then.
                destination.observed = await destination.observe(ctx.client)
                return
            finally:
                await pool.close()
        except (OSError, asyncpg.PostgresError, httpx.HTTPError, ValueError) as exc:
            if attempt == 9:
                raise RuntimeError(f"{destination.name} could not be read: {exc!r}") from exc
            await asyncio.sleep(1)


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

Some scenarios run more: normalizer-rebalance a second normalizer in the same
group; crm-429-5xx the CRM sink (hookstream-sink-crm) and the CRM stand-in
(python -m tests.fakes.crm, driven over its /_admin/ routes); alertmanager-down
the alerts sink (hookstream-sink-alerts: deploy/local/alerts.toml's rules grouped
by event_id too, so that every hit is an alert of its own, labelled
faults_run=<run>) posting to the stack's Alertmanager (HOOKSTREAM_ALERTMANAGER_URL,
else http://127.0.0.1:$ALERTMANAGER_PORT, default port 9095); kill-recordings,
kill-transcripts and media-5xx the recordings sink (hookstream-sink-recordings, a
local store in the scenario's log directory) and/or the transcripts sink
(hookstream-sink-transcripts), fetching from the media stand-in (python -m
tests.fakes.media, 127.0.0.1 allowed) that the load's recording and transcript URLs
point at. Their destinations are accounted for exactly too, a line under the table
each: what the CRM, Alertmanager or a fetching sink's table should hold is computed
from the run's warehouse rows and compared with what it holds (missing; applied
twice, where the destination can tell; for the fetching sinks a second row for a
call or a stored file without a row, and the stand-in's fetches: refetches are
counted, not duplicates).

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

retry policies (--policy PROVIDER=RETRIES:DELAY_S:TIMEOUT_S), unless set:
{policies}

exit status: 1 when any scenario has acknowledged-but-missing deliveries or
duplicate rows, events missing from or applied twice at the CRM stand-in,
Alertmanager or a fetching sink's table, or could not run (or given-up
deliveries, with --strict-given-up).
Logs: <--logs>/<run>/<scenario>/ (ingest's spool in spool/ there). Leaves the stack
up. spool-disk-full mounts a tmpfs, so it needs root.
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    scenarios = "\n".join(f"  {s.name:<18} {s.doc}" for s in SCENARIOS.values())
    parser.description = ("Inject faults into a pipeline of its own under load and "
                          "account for every delivery; prints one table.")
    parser.epilog = HELP.format(scenarios=scenarios, policies=policies_help())
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
    logging.getLogger("hookstream.devtools.loadgen").setLevel(logging.ERROR)
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
        for note in r.notes:
            print(f"  {r.scenario}: {note}")
        if r.error:
            print(f"  {r.scenario}: could not run to the end: {r.error}")
    print(f"  {len(results)} scenarios in {time.monotonic() - started:.0f} s "
          f"(rate {settings.rate:g}/s; logs {run_id_dir})")
    return exit_status(results, args.strict_given_up)
