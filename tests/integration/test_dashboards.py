"""Every panel of the Grafana dashboard shows data, from a real Prometheus scraping the
real services under real traffic.

The test's own Prometheus (deploy/local/stack's ``prometheus`` component, in a state dir
and on a port of its own, scraping every second) loads deploy/prometheus/prometheus.yml
and its rule files. Its scrape targets are the fixed local ports of that file, so the
services run there, as deploy/local/demo starts them (console scripts, the local secrets
and alert rules, the CRM stand-in), but on topics, a normalizer group, a dedupe table, a
warehouse schema and sink topics of this test's own. ``hookstream load`` drives them for
about ten seconds; then every target expression of the dashboard, with Grafana's
variables filled in as "All" does, must return at least one series.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import httpx
import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient

from hookstream.core import topics
from hookstream.core.config import KafkaSettings, PostgresSettings, load
from hookstream.sinks.runner import topic_plan

from ..support import REPO, SOURCES_FILE, free_port, local_secrets
from ..support import stack as run_stack

PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
EDGE_JOB = "hookstream-edge"  # HAProxy in front of ingest, not a hookstream process
EDGE_CONFIG = REPO / "deploy" / "edge" / "haproxy.cfg"
RULES_DIR = REPO / "deploy" / "prometheus" / "rules"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "hookstream-overview.json"
ALERT_RULES = REPO / "deploy" / "local" / "alerts.toml"
FAKE_CRM_PORT = 8099  # as deploy/local/demo
# Grafana's values for the dashboard's variables: "All" of a multi-value variable is
# its allValue (.*); a 1 s scrape interval makes $__rate_interval 4 s, 1m is safer.
VARIABLES = {"$__rate_interval": "1m", "$source": ".*", "$sink": ".*"}
LOAD_RATE, LOAD_SECONDS = 50, 10
MIN_SAMPLES = 5  # seconds of samples (one a second) every target must have


def scrape_targets() -> dict[str, int]:
    """{job: port} of the hookstream jobs in prometheus.yml (job name = console script)."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    found: dict[str, int] = {}
    for job in config["scrape_configs"]:
        if job["job_name"].startswith("hookstream-"):
            (target,) = [t for sc in job["static_configs"] for t in sc["targets"]]
            host, port = target.rsplit(":", 1)
            assert host == "127.0.0.1", f"{job['job_name']}: {target} is not on loopback"
            found[job["job_name"]] = int(port)
    return found


def port_env(job: str, port: int) -> dict[str, str]:
    """The variables that put ``job``'s /metrics on ``port``."""
    if job == "hookstream-ingest":  # /metrics on its admin port, not the webhook port
        return {"HOOKSTREAM_INGEST_ADMIN_PORT": str(port)}
    if job == "hookstream-normalizer":
        return {"HOOKSTREAM_NORMALIZER_HTTP_PORT": str(port)}
    assert job.startswith("hookstream-sink-"), job
    return {"HOOKSTREAM_SINK_HTTP_PORT": str(port)}


def panel_targets(panels: list[dict[str, Any]], within: str = "") -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every target, panels inside rows (and legacy rows) included."""
    for panel in panels:
        title = f"{within}{panel.get('title') or '(untitled)'}"
        for target in panel.get("targets", []):
            if target.get("expr") and not target.get("hide"):
                yield title, target["expr"]
        for key in ("panels", "rows"):
            yield from panel_targets(panel.get(key, []), f"{title} / ")


def promql(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclasses.dataclass
class Service:
    name: str
    port: int
    proc: asyncio.subprocess.Process
    log: Path
    health: str = "/readyz"

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (log {self.log}) ---\n" + "\n".join(text.splitlines()[-lines:])


def open_log(path: Path) -> TextIO:
    return path.open("w")


class Pipeline:
    """The services on the scrape targets' ports, as subprocesses."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.services: list[Service] = []

    async def start(self, name: str, port: int, *command: str, health: str = "/readyz",
                    env: dict[str, str] | None = None) -> Service:
        log = self.logs / f"{name}.log"
        with open_log(log) as out:
            proc = await asyncio.create_subprocess_exec(
                *command, cwd=REPO, env={**self.env, **(env or {})},
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT)
        service = Service(name, port, proc, log, health)
        self.services.append(service)
        return service

    async def ready(self, service: Service, timeout_s: float = 45) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if service.proc.returncode is not None:
                    raise AssertionError(f"{service.name} exited ({service.proc.returncode}) "
                                         f"during start-up\n{service.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    url = f"http://127.0.0.1:{service.port}{service.health}"
                    if (await client.get(url)).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise AssertionError(f"{service.name} not ready on :{service.port} in {timeout_s:g} s"
                             f"\n{service.tail()}")

    async def stop(self) -> None:
        """SIGTERM to everyone (drain, flush, commit), then wait; SIGKILL after 30 s."""
        running = [s for s in self.services if s.proc.returncode is None]
        for service in running:
            with contextlib.suppress(ProcessLookupError):
                service.proc.send_signal(signal.SIGTERM)

        async def reap(service: Service) -> None:
            try:
                await asyncio.wait_for(service.proc.wait(), 30)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    service.proc.kill()
                await service.proc.wait()

        await asyncio.gather(*(reap(s) for s in running))


class Prometheus:
    def __init__(self, url: str) -> None:
        self.client = httpx.AsyncClient(base_url=url, timeout=10)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        response = await self.client.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert response.status_code == 200 and body.get("status") == "success", (
            f"query failed ({response.status_code}): {expr}\n{body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def by_job(self, expr: str) -> dict[str, float]:
        return {s["metric"].get("job", ""): float(s["value"][1]) for s in await self.query(expr)}


@contextlib.asynccontextmanager
async def own_prometheus(state: Path) -> AsyncIterator[Prometheus]:
    """deploy/local/stack's Prometheus, in ``state``, on a free port, scraping every second.
    Its alerts go to a port nobody listens on, not to the stack's Alertmanager."""
    port = free_port()
    env = {**os.environ, "HOOKSTREAM_STACK_DIR": str(state), "PROMETHEUS_PORT": str(port),
           "PROMETHEUS_SCRAPE_INTERVAL": "1s", "ALERTMANAGER_PORT": str(free_port())}
    try:
        await asyncio.to_thread(run_stack, "up", "prometheus", env=env, timeout=120)
        prometheus = Prometheus(f"http://127.0.0.1:{port}")
        try:
            yield prometheus
        finally:
            await prometheus.client.aclose()
    finally:
        await asyncio.to_thread(run_stack, "down", "--purge", "prometheus", env=env,
                                timeout=120)


async def until(what: str, check: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    detail: Any = None
    while time.monotonic() < deadline:
        ok, detail = await check()
        if ok:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout_s:g} s: {detail}")


async def drop_everything(kafka: KafkaSettings, topic_names: list[str], schema: str,
                          dedupe_table: str) -> None:
    conn = await asyncpg.connect(load(PostgresSettings).dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.execute(f'DROP TABLE IF EXISTS "{dedupe_table}"')
    finally:
        await conn.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [t for t in topic_names if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def test_every_dashboard_panel_has_data(stack: KafkaSettings, tmp_path: Path) -> None:
    targets = scrape_targets()
    jobs = set(targets) | {"prometheus"}
    queries = list(panel_targets(json.loads(DASHBOARD.read_text())["panels"]))
    assert len(queries) > 20, "the dashboard's panels were not found"

    # The scrape targets are fixed ports: someone else's services there would be scraped
    # instead of this test's (a running deploy/local/demo --keep, another test run).
    taken = [f"{port} ({job})" for job, port in targets.items() if port_taken(port)]
    if port_taken(FAKE_CRM_PORT):
        taken.append(f"{FAKE_CRM_PORT} (the CRM stand-in)")
    if taken:
        pytest.fail("this test runs the services on the scrape targets of "
                    f"{PROMETHEUS_YML.relative_to(REPO)}, but these ports are already in use: "
                    f"{', '.join(taken)}; stop what listens there (a deploy/local/demo --keep? "
                    "its pids are in .stack/*.pid) and run again", pytrace=False)

    run_id = uuid.uuid4().hex[:8]
    kafka = dataclasses.replace(
        stack, raw_topic=f"test.dash.{run_id}.raw", events_topic=f"test.dash.{run_id}.events",
        dlq_topic=f"test.dash.{run_id}.dlq", sink_topic_prefix=f"test.dash.{run_id}.sink")
    schema, dedupe_table = f"test_dash_{run_id}", f"test_dash_dedupe_{run_id}"
    sinks = [job.removeprefix("hookstream-sink-") for job in targets
             if job.startswith("hookstream-sink-")]
    specs = topics.plan(kafka) + [s for sink in sinks for s in topic_plan(kafka, sink)]
    env = {
        **os.environ, **local_secrets(),
        "HOOKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "HOOKSTREAM_RAW_TOPIC": kafka.raw_topic,
        "HOOKSTREAM_EVENTS_TOPIC": kafka.events_topic,
        "HOOKSTREAM_DLQ_TOPIC": kafka.dlq_topic,
        "HOOKSTREAM_SINK_TOPIC_PREFIX": kafka.sink_topic_prefix,
        "HOOKSTREAM_NORMALIZER_GROUP": f"test-dash-normalizer-{run_id}",
        "HOOKSTREAM_DEDUPE_TABLE": dedupe_table,
        "HOOKSTREAM_WAREHOUSE_SCHEMA": schema,
        "HOOKSTREAM_SOURCES_FILE": str(SOURCES_FILE),
        "HOOKSTREAM_ALERT_RULES_FILE": str(ALERT_RULES),
        "HOOKSTREAM_ALERT_LABELS": f"run_id={run_id}",  # this run's alerts, in Alertmanager
        "HOOKSTREAM_CRM_URL": f"http://127.0.0.1:{FAKE_CRM_PORT}",
        "HOOKSTREAM_CRM_TOKEN": "fake-crm-token",
        "HOOKSTREAM_RECORDINGS_DIR": str(tmp_path / "recordings"),
        # Ingest runs with its local spool on, as deploy/local/demo runs it (a directory
        # of this run's own: one process per spool), so the Spool row's gauges are real.
        "HOOKSTREAM_INGEST_SPOOL_DIR": str(tmp_path / "ingest-spool"),
        # The sample recordings' signed URLs point at storage.googleapis.com: reject them
        # (dead letters, recording_url_rejected) rather than fetch from the internet.
        "HOOKSTREAM_RECORDINGS_ALLOWED_HOSTS": "127.0.0.1",
        # Likewise the sample transcripts' URLs, on api.saaya.ai (transcript_url_rejected).
        "HOOKSTREAM_TRANSCRIPTS_ALLOWED_HOSTS": "127.0.0.1",
        "HOOKSTREAM_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    await topics.ensure(kafka, specs)
    pipeline = Pipeline(env, logs)
    try:
        async with own_prometheus(tmp_path / "stack") as prometheus:
            crm = await pipeline.start("fake-crm", FAKE_CRM_PORT, sys.executable, "-m",
                                       "tests.fakes.crm", "--port", str(FAKE_CRM_PORT),
                                       health="/healthz")
            await pipeline.ready(crm)
            ingest_port = free_port()  # webhooks; the scraped target is its admin port
            started = [await pipeline.start(job.removeprefix("hookstream-"), port, job,
                                            env={**port_env(job, port),
                                                 "HOOKSTREAM_INGEST_PORT": str(ingest_port)})
                       for job, port in targets.items() if job != EDGE_JOB]
            # The load goes through the edge proxy in front of ingest, as in production
            # (deploy/edge): its stats listener is the edge job's target.
            edge_port = free_port()
            haproxy = shutil.which("haproxy")
            assert haproxy, "haproxy not found (deploy/local/test installs it)"
            started.append(await pipeline.start(
                "edge", targets[EDGE_JOB], haproxy, "-db", "-f", str(EDGE_CONFIG),
                health="/healthz", env={
                    "HOOKSTREAM_EDGE_BIND": f"127.0.0.1:{edge_port}",
                    "HOOKSTREAM_EDGE_INGEST": f"127.0.0.1:{ingest_port}",
                    "HOOKSTREAM_EDGE_STATS": f"127.0.0.1:{targets[EDGE_JOB]}",
                    "HOOKSTREAM_EDGE_ERRORS": str(EDGE_CONFIG.parent / "errors")}))
            await asyncio.gather(*(pipeline.ready(s) for s in started))

            ingest_url = f"http://127.0.0.1:{edge_port}"
            load = await pipeline.start(
                "load", 0, "hookstream", "load", "--url", ingest_url, "--rate", str(LOAD_RATE),
                "--seconds", str(LOAD_SECONDS), "--schema", schema, "--drain-timeout-s", "20")
            try:
                await asyncio.wait_for(load.proc.wait(), LOAD_SECONDS + 30)
            except TimeoutError:
                raise AssertionError(f"hookstream load did not finish\n{load.tail()}") from None
            assert load.proc.returncode == 0, f"hookstream load failed\n{load.tail()}"
            loaded_at = time.time()

            # Every target up, scraped at least once since the load ended, and for long
            # enough that rate() has samples to work with.
            async def scraped() -> tuple[bool, Any]:
                up = await prometheus.by_job("up")
                last = await prometheus.by_job("timestamp(up)")
                count = await prometheus.by_job("count_over_time(up[1m])")
                missing = {job: (up.get(job), count.get(job)) for job in jobs
                           if up.get(job) != 1 or count.get(job, 0) < MIN_SAMPLES
                           or last.get(job, 0) < loaded_at}
                return not missing, f"(up, samples) of the lagging jobs: {missing}"

            await until("every target up with recent samples", scraped, 20)

            empty = []
            for title, expr in queries:
                if not await prometheus.query(promql(expr)):
                    empty.append(f"{title}: {expr}")
            assert not empty, ("dashboard panels without data after "
                               f"{LOAD_SECONDS} s of load:\n  " + "\n  ".join(empty))

            # The alert rules are loaded, from the repository's rule files, and evaluate
            # without errors against the real series.
            response = await prometheus.client.get("/api/v1/rules")
            loaded = response.json()["data"]["groups"]
            groups = {g["name"]: g["file"] for g in loaded}
            wanted = {g["name"] for f in RULES_DIR.glob("*.rules.yml")
                      for g in yaml.safe_load(f.read_text())["groups"]}
            assert wanted and wanted <= set(groups), f"rule groups loaded: {sorted(groups)}"
            assert {Path(f).parent for f in groups.values()} == {RULES_DIR}
            failing = [f"{r['name']}: {r.get('lastError')}" for g in loaded for r in g["rules"]
                       if r.get("health") == "err"]
            assert not failing, f"rules failing to evaluate: {failing}"
    finally:
        await pipeline.stop()
        await drop_everything(kafka, [s.name for s in specs], schema, dedupe_table)
