"""CRMSink.write: written, deferred (circuit open), failed (rejected), Retryable."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from hookstream.core.config import ConfigError, load
from hookstream.core.errors import Retryable
from hookstream.sinks.base import SinkEvent
from hookstream.sinks.crm import main as crm_main
from hookstream.sinks.crm.adapters import HubSpotAdapter, WebhookAdapter
from hookstream.sinks.crm.circuit import CLOSED, HALF_OPEN, OPEN
from hookstream.sinks.crm.settings import CRMSettings
from hookstream.sinks.crm.sink import CRM_ERROR, CRM_REJECTED, CRM_UNMAPPABLE, CRMSink
from tests.fakes.crm import TOKEN, FakeCRM, TimeoutASGITransport, example

SETTINGS = CRMSettings(url="http://crm.test", token=TOKEN, timeout_s=0.3, max_retries=1,
                       backoff_base_s=0.01, backoff_max_s=0.02, circuit_failures=2,
                       circuit_cooldown_s=30, rate_limit_budget_s=0.25,
                       rate_limit_max_wait_s=0.1, rate_limit_per_10s=100000,
                       search_rate_per_s=10000)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sink(fake: FakeCRM, clock: Clock | None = None, **overrides: Any) -> CRMSink:
    return CRMSink(dataclasses.replace(SETTINGS, **overrides),
                   transport=TimeoutASGITransport(fake.app), clock=clock or Clock())


def items(*events: dict[str, Any]) -> list[SinkEvent]:
    return [SinkEvent(event, record=None) for event in events]


def finished_calls() -> list[dict[str, Any]]:
    return [example("call.ended.sawt"), example("call.analyzed"), example("call.ended"),
            example("call.not_connected", outcome="no_answer", call_id="call_na"),
            example("session.ended")]


def test_identity_and_wants() -> None:
    crm = sink(FakeCRM())
    assert (crm.name, crm.default_http_port) == ("crm", 8094)
    for wanted in ("call.ended", "call.analyzed", "call.not_connected", "session.ended"):
        assert crm.wants(wanted)
    for other in ("call.started", "call.updated", "session.started", "tool.failed", ""):
        assert not crm.wants(other)


async def test_lifecycle() -> None:
    crm = sink(FakeCRM())
    assert not crm.ready()
    await crm.start()
    assert crm.ready()
    await crm.stop()
    assert not crm.ready()


async def test_a_batch_of_finished_calls_is_written() -> None:
    fake = FakeCRM()
    outcome = await sink(fake).write(items(*finished_calls()))
    assert outcome.deferred == [] and outcome.failed == []
    assert len(fake.calls) == 4  # the Sawt pair is one activity
    assert len(fake.contacts) == 2
    assert len(fake.associations) == 2


async def test_a_batch_written_twice_changes_nothing() -> None:
    fake = FakeCRM()
    events = finished_calls()
    await sink(fake).write(items(*events))
    before = fake.snapshot()
    crm = sink(fake)  # another process
    await crm.write(items(*events))
    requests = sum(fake.requests.values())
    await crm.write(items(*events))  # this process wrote them: not even a request
    assert sum(fake.requests.values()) == requests
    assert fake.snapshot() == before


async def test_rejected_event_is_failed_and_the_rest_written() -> None:
    fake = FakeCRM()
    # the chunk's upsert, then the first event's alone; the second event alone passes
    fake.fail_next(2, 400, route="calls.batch_upsert")
    batch = items(example("call.ended.sawt"), example("call.ended"))
    outcome = await sink(fake).write(batch)
    assert [(i, reason) for i, reason, _ in outcome.failed] == [(batch[0], CRM_REJECTED)]
    assert "400" in outcome.failed[0][2]
    assert outcome.deferred == []
    assert [c["properties"]["hookstream_call_key"] for c in fake.calls.values()] == [
        f"sarj:{batch[1].event['call_id']}"]


async def test_unmappable_event_is_failed() -> None:
    outcome = await sink(FakeCRM()).write(items(example("call.ended.sawt", call_id=None)))
    assert [reason for _, reason, _ in outcome.failed] == [CRM_UNMAPPABLE]


async def test_an_outage_is_retryable_then_opens_the_circuit_and_defers() -> None:
    fake = FakeCRM()
    fake.go_down(503)
    clock = Clock()
    crm = sink(fake, clock)
    first, *rest = finished_calls()
    ok = example("call.ended", call_id="call_before_outage")
    fake.outage = None
    await crm.write(items(ok))
    fake.go_down(503)
    batch = items(first, *rest)
    with pytest.raises(Retryable):  # 1st failure: the framework retries the batch
        await crm.write(batch)
    assert crm.circuit.state == CLOSED
    outcome = await crm.write(batch)  # 2nd failure: the circuit opens, all deferred
    assert crm.circuit.state == OPEN
    assert [i for i, _ in outcome.deferred] == batch
    assert all("circuit open" in detail for _, detail in outcome.deferred)
    assert outcome.failed == []

    # while open: deferred without a single request to the CRM
    sent = sum(fake.requests.values())
    outcome = await crm.write(batch)
    assert [i for i, _ in outcome.deferred] == batch
    assert sum(fake.requests.values()) == sent

    # after the cool-down one trial goes through; the CRM is back: closed, all written
    fake.come_back()
    clock.now += 30
    assert crm.circuit.state == HALF_OPEN
    outcome = await crm.write(batch)
    assert outcome.deferred == [] and outcome.failed == []
    assert crm.circuit.state == CLOSED
    assert len(fake.calls) == 5


async def test_a_failed_trial_defers_again() -> None:
    fake = FakeCRM()
    fake.go_down(500)
    clock = Clock()
    crm = sink(fake, clock, circuit_failures=1)
    batch = items(*finished_calls())
    outcome = await crm.write(batch)
    assert len(outcome.deferred) == len(batch) and crm.circuit.state == OPEN
    clock.now += 30
    outcome = await crm.write(batch)
    assert len(outcome.deferred) == len(batch) and crm.circuit.state == OPEN


async def test_written_events_are_not_deferred_when_the_circuit_opens_mid_batch() -> None:
    fake = FakeCRM()
    crm = sink(fake, circuit_failures=1)
    first, second, third = (example("call.ended"), example("call.ended.sawt"),
                            example("session.ended"))
    await crm.write(items(first))
    fake.fail_next(2, 503, route="calls.batch_upsert")  # the 2nd+3rd's upsert, and its retry
    outcome = await crm.write(items(first, second, third))
    assert [i.event["event_id"] for i, _ in outcome.deferred] == [second["event_id"],
                                                                  third["event_id"]]


async def test_rate_limited_past_the_budget_parks_the_rest_and_keeps_the_circuit() -> None:
    fake = FakeCRM()
    fake.rate_limit_next(100, retry_after="0.1")
    crm = sink(fake, circuit_failures=1)
    batch = items(example("call.ended"), example("call.ended.sawt"))
    outcome = await crm.write(batch)
    assert [i for i, _ in outcome.deferred] == batch
    assert all("rate limited" in detail for _, detail in outcome.deferred)
    assert crm.circuit.state == CLOSED


async def test_the_batch_deadline_hands_the_rest_back() -> None:
    fake = FakeCRM()
    clock = Clock()
    crm = sink(fake, clock, batch_deadline_s=10, batch_size=1)
    events = finished_calls()
    original = crm.adapter.log_calls

    async def slow_log_calls(acts: Any) -> None:
        await original(acts)
        clock.now += 6

    crm.adapter.log_calls = slow_log_calls  # type: ignore[method-assign]
    with pytest.raises(Retryable, match="deadline"):
        await crm.write(items(*events))
    # the Sawt pair (one activity) written; the third would start past the deadline
    assert [c["properties"]["hookstream_call_key"] for c in fake.calls.values()] == [
        "sawt:call_123"]
    assert "Summary:" in fake.call("sawt:call_123")["properties"]["hs_call_body"]
    clock.now = 100.0
    crm2 = sink(fake, Clock())
    assert (await crm2.write(items(*events))).deferred == []
    assert len(fake.calls) == 4


def test_settings_validation() -> None:
    SETTINGS.validate()
    with pytest.raises(ConfigError, match="ADAPTER"):
        dataclasses.replace(SETTINGS, adapter="salesforce").validate()
    with pytest.raises(ConfigError, match="TOKEN"):
        dataclasses.replace(SETTINGS, token="").validate()
    with pytest.raises(ConfigError, match="WEBHOOK_URL"):
        dataclasses.replace(SETTINGS, adapter="webhook").validate()
    dataclasses.replace(SETTINGS, adapter="webhook", token="",
                        webhook_url="https://hooks.example/crm").validate()
    with pytest.raises(ConfigError, match="COUNTRY"):
        dataclasses.replace(SETTINGS, default_country_code="+966").validate()
    assert TOKEN not in repr(SETTINGS)


def test_settings_from_the_environment() -> None:
    settings = load(CRMSettings, {
        "HOOKSTREAM_CRM_ADAPTER": "webhook", "HOOKSTREAM_CRM_WEBHOOK_URL": "http://h/x",
        "HOOKSTREAM_CRM_TOKEN": "t", "HOOKSTREAM_CRM_TIMEOUT_S": "2.5",
        "HOOKSTREAM_CRM_CIRCUIT_FAILURES": "7"})
    assert (settings.adapter, settings.webhook_url, settings.token, settings.timeout_s,
            settings.circuit_failures) == ("webhook", "http://h/x", "t", 2.5, 7)
    crm = CRMSink(settings)
    assert isinstance(crm.adapter, WebhookAdapter)
    assert isinstance(CRMSink(SETTINGS).adapter, HubSpotAdapter)


def test_main_rejects_a_missing_token(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    for name in list(os.environ):
        if name.startswith("HOOKSTREAM_CRM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOOKSTREAM_LOG_JSON", "false")
    assert crm_main.main([]) == 2
    assert "HOOKSTREAM_CRM_TOKEN" in capsys.readouterr().err


def test_main_help_lists_the_crm_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        crm_main.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "HOOKSTREAM_CRM_URL" in out and "HOOKSTREAM_CRM_CIRCUIT_COOLDOWN_S" in out


async def test_an_unexpected_error_dead_letters_the_event_not_the_worker() -> None:
    fake = FakeCRM()
    crm = sink(fake)
    original = crm.adapter.log_calls
    boom = example("call.ended.sawt")

    async def log_calls(acts: Any) -> None:
        if any(act.event_id == boom["event_id"] for act in acts):
            raise RuntimeError("a bug")
        await original(acts)

    crm.adapter.log_calls = log_calls  # type: ignore[method-assign]
    batch = items(boom, example("call.ended"))
    outcome = await crm.write(batch)
    assert [(i, reason) for i, reason, _ in outcome.failed] == [(batch[0], CRM_ERROR)]
    assert "a bug" in outcome.failed[0][2]
    assert len(fake.calls) == 1
