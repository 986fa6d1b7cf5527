"""The alerts sink against the real broker and a real Prometheus Alertmanager.

Canonical events (the schema's examples, each with a fresh event id) are produced
onto a fresh events topic; the real ``SinkRunner`` runs ``AlertsSink`` in this
event loop with the shipped rules (deploy/local/alerts.toml); the alerts are read
back from Alertmanager's own API (``GET /api/v2/alerts``), filtered on a
``run_id`` label unique to each test, so earlier or parallel runs never count.
A tiny Starlette app on loopback stands in for the receiving JSON webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hookstream.core import dlq
from hookstream.core.config import KafkaSettings, load
from hookstream.core.kafka import end_offsets, make_producer
from hookstream.sinks.alerts.settings import AlertsSettings
from hookstream.sinks.alerts.sink import ALERT_REJECTED, AlertsSink
from hookstream.sinks.runner import SinkRunner, SinkSettings, sink_topics

from ..support import free_port, own_topics, read_topic, serve
from ..support import stack as run_stack

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "schemas" / "canonical" / "v1" / "examples"
RULES_FILE = REPO / "deploy" / "local" / "alerts.toml"  # the shipped rules
SAAYA_AGENT_1 = "agt_01HT9F4M2CXQ7P8K5W3ZR6YB0A"
SAAYA_AGENT_2 = "agt_01HV2K8D5RS1N7Q4T9X3M6CW0B"
CAMPAIGN = "cmp_01HWF2A8C4E6G0J3L5N7Q9S1TU"

# (example file, changes): events that the shipped rules alert on ...
ALERTING: list[tuple[str, dict[str, Any]]] = [
    ("session.errored", {}),
    ("session.escalated", {}),
    ("tool.failed", {}),
    ("tool.failed.sawt", {}),
    ("campaign.paused", {}),  # reason budget_alert
    ("kb.upload.failed", {}),
    ("session.ended", {"sentiment": -0.6, "sentiment_label": "negative"}),
    ("call.analyzed", {"sentiment_label": "negative"}),
]
# ... events of types the rules look at that match no rule ...
QUIET: list[tuple[str, dict[str, Any]]] = [
    ("campaign.paused", {"reason": "manual"}),
    ("session.ended", {}),  # sentiment 0.32
    ("call.analyzed", {}),  # positive
]
# ... and types no rule lists (skipped on the header, never parsed).
OTHER: list[tuple[str, dict[str, Any]]] = [
    ("call.ended", {}), ("tool.called", {}), ("call.started", {})]

# The alerts the ALERTING events raise: labels besides run_id and team.
EXPECTED: list[dict[str, str]] = [
    {"alertname": "session_errored", "rule": "session_errored", "severity": "critical",
     "provider": "saaya", "source": "saaya-main", "agent_id": SAAYA_AGENT_1},
    {"alertname": "session_escalated", "rule": "session_escalated", "severity": "info",
     "provider": "saaya", "source": "saaya-main", "agent_id": SAAYA_AGENT_2},
    {"alertname": "tool_failed", "rule": "tool_failed", "severity": "warning",
     "provider": "saaya", "source": "saaya-main", "agent_id": SAAYA_AGENT_2,
     "tool_name": "create_refund"},
    {"alertname": "tool_failed", "rule": "tool_failed", "severity": "warning",
     "provider": "sawt", "source": "sawt-main", "agent_id": "agent_456",
     "tool_name": "send_sms"},
    {"alertname": "campaign_budget_paused", "rule": "campaign_budget_paused",
     "severity": "critical", "provider": "saaya", "source": "saaya-main",
     "campaign_id": CAMPAIGN},
    {"alertname": "kb_upload_failed", "rule": "kb_upload_failed", "severity": "warning",
     "provider": "saaya", "source": "saaya-main", "error_code": "file_too_large"},
    {"alertname": "negative_sentiment", "rule": "negative_sentiment", "severity": "warning",
     "provider": "saaya", "source": "saaya-main", "agent_id": SAAYA_AGENT_1},
    {"alertname": "call_negative_sentiment", "rule": "call_negative_sentiment",
     "severity": "warning", "provider": "sawt", "source": "sawt-main"},  # no agent_id
]
TEAMS = {"session_errored": "voice", "session_escalated": "voice",
         "tool_failed": "integrations", "campaign_budget_paused": "growth",
         "kb_upload_failed": "voice", "negative_sentiment": "quality",
         "call_negative_sentiment": "quality"}


def canonical(name: str, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    event.update(changes, event_id=str(uuid.uuid4()))
    return event


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def without(labels: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k not in names}


def canon(labels: list[dict[str, str]]) -> list[str]:
    return sorted(json.dumps(item, sort_keys=True) for item in labels)


@dataclasses.dataclass
class Bench:
    kafka: KafkaSettings
    run_id: str
    group: str
    alertmanager_url: str

    def settings(self, **overrides: Any) -> AlertsSettings:
        values: dict[str, Any] = {"rules_file": str(RULES_FILE),
                                  "alertmanager_url": self.alertmanager_url,
                                  "labels": (f"run_id={self.run_id}",), "timeout_s": 2.0,
                                  "resolve_after_s": 300.0}  # do not clutter the local one
        values.update(overrides)
        return dataclasses.replace(load(AlertsSettings), **values)

    async def produce(self, events: list[dict[str, Any]]) -> None:
        """Onto the events topic the way the normalizer writes them (key, headers)."""
        producer = make_producer(self.kafka, "test")
        await producer.start()
        try:
            for event in events:
                subject = (event.get("call_id") or event.get("session_id")
                           or event.get("campaign_id") or event.get("agent_id"))
                await producer.send(
                    self.kafka.events_topic, value=orjson.dumps(event),
                    key=subject.encode() if subject else None,
                    headers=[("hs-event-type", event["type"].encode()),
                             ("hs-provider", event["provider"].encode()),
                             ("hs-source", event["source"].encode()),
                             ("hs-event-id", event["event_id"].encode()),
                             ("content-type", b"application/json")])
            await producer.flush()
        finally:
            await producer.stop()

    @contextlib.asynccontextmanager
    async def sink(self, settings: AlertsSettings) -> AsyncIterator[AlertsSink]:
        """The real SinkRunner with AlertsSink, in this event loop, until the block ends."""
        sink = AlertsSink(settings)
        runner = SinkRunner(sink, self.kafka,
                            SinkSettings(poll_timeout_ms=100, backoff_max_s=1.0),
                            group_id=self.group)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop, serve_http=False))
        try:
            yield sink
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    async def committed(self) -> dict[Any, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(self.group)
        finally:
            await admin.close()
        return {tp: meta.offset for tp, meta in offsets.items() if meta is not None}

    async def drained(self, timeout_s: float = 30) -> None:
        """Wait until the sink's group has committed up to the events topic's end."""
        ends = await end_offsets(self.kafka, self.kafka.events_topic)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = await self.committed()
            if all(committed.get(tp, -1) >= end for tp, end in ends.items() if end > 0):
                return
            await asyncio.sleep(0.2)
        raise AssertionError("the alerts sink did not catch up with the events topic")

    async def alerts(self, url: str | None = None) -> list[dict[str, Any]]:
        """This run's alerts, as Alertmanager's API lists them."""
        async with httpx.AsyncClient(base_url=url or self.alertmanager_url) as client:
            response = await client.get("/api/v2/alerts",
                                        params={"filter": f'run_id="{self.run_id}"'})
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()
        return found

    async def wait_alerts(self, want: int, url: str | None = None,
                          timeout_s: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = await self.alerts(url)
            if len(found) >= want or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.2)

    async def dead_letters(self) -> list[Any]:
        """The records on this run's dead-letter topic of the sink."""
        _, topic = sink_topics(self.kafka, "alerts")
        return await read_topic(self.kafka, topic, 0, timeout_s=0)


@pytest.fixture
async def bench(stack: KafkaSettings) -> Bench:
    """Fresh topics (events, the sink's retry and dead-letter topics) and consumer
    group; the stack's Alertmanager."""
    run_id = uuid.uuid4().hex[:10]
    kafka = await own_topics(stack, run_id)
    url = load(AlertsSettings).alertmanager_url
    async with httpx.AsyncClient() as client:
        (await client.get(f"{url}/-/ready")).raise_for_status()
    return Bench(kafka, run_id, f"test-sink-alerts-{run_id}", url)


def events_of(cases: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [canonical(name, **changes) for name, changes in cases]


async def test_rules_raise_alerts_in_alertmanager(bench: Bench) -> None:
    alerting, quiet, other = events_of(ALERTING), events_of(QUIET), events_of(OTHER)
    written = metric("hookstream_sink_events_total", sink="alerts", outcome="written")
    skipped = metric("hookstream_sink_events_total", sink="alerts", outcome="skipped")
    await bench.produce(alerting + quiet + other)
    async with bench.sink(bench.settings()):
        await bench.drained()
        found = await bench.wait_alerts(len(EXPECTED))
    assert metric("hookstream_sink_events_total", sink="alerts",
                  outcome="written") - written == len(alerting) + len(quiet)
    assert metric("hookstream_sink_events_total", sink="alerts",
                  outcome="skipped") - skipped == len(other)

    for alert in found:
        assert alert["labels"].pop("run_id") == bench.run_id
        assert alert["labels"].pop("team") == TEAMS[alert["labels"]["rule"]]
        assert alert["status"]["state"] == "active"
    assert canon([a["labels"] for a in found]) == canon(EXPECTED)

    by_id = {e["event_id"]: e for e in alerting}
    for alert in found:  # each alert names the event that raised it
        notes = alert["annotations"]
        source = by_id[notes["event_id"]]
        assert notes["event_type"] == source["type"]
        assert notes["summary"] and "{" not in notes["summary"]
        assert notes["received_at"] == source["received_at"]
    budget = next(a for a in found if a["labels"]["rule"] == "campaign_budget_paused")
    assert budget["annotations"]["summary"] == f"Campaign {CAMPAIGN} paused by its budget alert"
    sentiment = next(a for a in found if a["labels"]["rule"] == "negative_sentiment")
    assert sentiment["annotations"]["summary"].endswith("ended with sentiment -0.60")
    assert await bench.dead_letters() == []


def capture_app(answer: Callable[[Any, int], int] = lambda body, n: 200
                ) -> tuple[Starlette, list[Any]]:
    """A stand-in for the receiving webhook: keeps every body, answers ``answer``."""
    bodies: list[Any] = []

    async def hook(request: Request) -> Response:
        body = await request.json()
        status = answer(body, len(bodies))
        if status == 200:
            bodies.append(body)
        return JSONResponse({"ok": status == 200}, status_code=status)

    return Starlette(routes=[Route("/hook", hook, methods=["POST"])]), bodies


async def test_repeats_page_once_per_group(bench: Bench) -> None:
    """Three deliveries of every alerting event (a redelivery with the same event ids,
    then new events of the same groups): one alert per group in Alertmanager, one
    webhook body per group, and the suppression counter counts the rest."""
    first = events_of(ALERTING)
    fresh = events_of(ALERTING)
    rules = [e["rule"] for e in EXPECTED]
    suppressed = {r: metric("hookstream_alerts_suppressed_total", rule=r) for r in rules}
    app, bodies = capture_app()
    port = free_port()
    async with serve(app, port), bench.sink(bench.settings(
            webhook_url=f"http://127.0.0.1:{port}/hook")):
        for round_ in (first, first, fresh):
            await bench.produce(round_)
            await bench.drained()
        found = await bench.wait_alerts(len(EXPECTED))
        await asyncio.sleep(1)  # nothing more arrives
        found = await bench.alerts()
    assert len(found) == len(EXPECTED)
    assert canon([without(a["labels"], "run_id", "team") for a in found]) == canon(EXPECTED)
    first_ids = {e["event_id"] for e in first}
    assert {a["annotations"]["event_id"] for a in found} == first_ids  # the first paged
    assert len(bodies) == len(EXPECTED)
    assert canon([without(b["labels"], "run_id", "team") for b in bodies]) == canon(EXPECTED)
    assert all(b["status"] == "firing" for b in bodies)
    for rule in set(rules):
        assert metric("hookstream_alerts_suppressed_total", rule=rule) - suppressed[rule] \
            == 2 * rules.count(rule), rule


async def test_alertmanager_down_retries_until_it_is_up(bench: Bench,
                                                        tmp_path: Path) -> None:
    """Alertmanager unreachable: the batch is retried (not committed, not dead-lettered);
    once an Alertmanager answers on that address, the same batch is delivered."""
    port = free_port()  # nothing listens here yet
    url = f"http://127.0.0.1:{port}"
    events = [canonical("session.errored"), canonical("campaign.paused")]
    retries = metric("hookstream_sink_batch_retries_total", sink="alerts")
    errors = metric("hookstream_alerts_sent_total", destination="alertmanager",
                    outcome="error")
    stack_env = {**os.environ, "HOOKSTREAM_STACK_DIR": str(tmp_path / "stack"),
                 "ALERTMANAGER_PORT": str(port)}
    await bench.produce(events)
    try:
        async with bench.sink(bench.settings(alertmanager_url=url, timeout_s=1.0)):
            deadline = time.monotonic() + 15
            while metric("hookstream_sink_batch_retries_total", sink="alerts") - retries < 3:
                assert time.monotonic() < deadline, "the batch was not retried"
                await asyncio.sleep(0.1)
            assert await bench.committed() == {}  # nothing committed while failing
            assert metric("hookstream_alerts_sent_total", destination="alertmanager",
                          outcome="error") - errors >= 6  # 2 alerts x 3 attempts
            # Alertmanager comes up on that port (a second one, from the stack script).
            await asyncio.to_thread(run_stack, "up", "alertmanager", env=stack_env,
                                    timeout=120)
            await bench.drained(timeout_s=15)
            found = await bench.wait_alerts(2, url=url, timeout_s=5)
    finally:
        await asyncio.to_thread(run_stack, "down", "--purge", "alertmanager", env=stack_env)
    assert sorted(a["labels"]["rule"] for a in found) == [
        "campaign_budget_paused", "session_errored"]
    assert {a["annotations"]["event_id"] for a in found} == {e["event_id"] for e in events}
    assert await bench.dead_letters() == []
    assert await bench.alerts() == []  # the stack's own Alertmanager never saw them


async def test_webhook_retries_5xx_and_dead_letters_a_rejected_alert(bench: Bench) -> None:
    """Webhook only: 503s retry the batch; a 400 for one alert dead-letters its event
    with reason alert_rejected while the rest are delivered and committed."""
    def answer(body: Any, n: int) -> int:
        answer.calls += 1  # type: ignore[attr-defined]
        if answer.calls <= 2:  # type: ignore[attr-defined]
            return 503
        return 400 if body["labels"]["rule"] == "kb_upload_failed" else 200

    answer.calls = 0  # type: ignore[attr-defined]
    app, bodies = capture_app(answer)
    port = free_port()
    kb = canonical("kb.upload.failed")
    events = [canonical("tool.failed"), kb, canonical("session.escalated")]
    retries = metric("hookstream_sink_batch_retries_total", sink="alerts")
    async with serve(app, port), bench.sink(bench.settings(
            alertmanager_url="", webhook_url=f"http://127.0.0.1:{port}/hook")):
        await bench.produce(events)
        await bench.drained()
    assert metric("hookstream_sink_batch_retries_total", sink="alerts") - retries >= 2
    assert sorted(b["labels"]["rule"] for b in bodies) == ["session_escalated", "tool_failed"]
    (letter,) = await bench.dead_letters()
    assert orjson.loads(letter.value)["event_id"] == kb["event_id"]  # the bytes, untouched
    assert dlq.header(letter.headers, dlq.H_REASON) == ALERT_REJECTED
    assert dlq.header(letter.headers, dlq.H_STAGE) == "sink:alerts"
    assert "webhook: HTTP 400" in (dlq.header(letter.headers, dlq.H_DETAIL) or "")
    assert await bench.alerts() == []  # Alertmanager was not configured


async def test_webhook_slack_body(bench: Bench) -> None:
    app, bodies = capture_app()
    port = free_port()
    async with serve(app, port), bench.sink(bench.settings(
            alertmanager_url="", webhook_url=f"http://127.0.0.1:{port}/hook",
            webhook_slack=True)):
        await bench.produce([canonical("campaign.paused"), canonical("session.errored")])
        await bench.drained()
    assert sorted(list(b) for b in bodies) == [["text"], ["text"]]
    texts = sorted(b["text"] for b in bodies)
    assert texts[0].startswith(
        f"*[CRITICAL] campaign_budget_paused*: Campaign {CAMPAIGN} paused by its budget alert")
    assert texts[1].startswith("*[CRITICAL] session_errored*: Session ")
    assert all(f"run_id={bench.run_id}" in t for t in texts)
