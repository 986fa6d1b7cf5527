"""The alerts sink without a network: httpx.MockTransport stands in for Alertmanager
and the webhook. Window suppression, retries, rejections, bodies, settings."""

from __future__ import annotations

import dataclasses
import itertools
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from hookstream.core.config import ConfigError, load, markdown_table
from hookstream.core.errors import Retryable
from hookstream.sinks.alerts.main import main as alerts_main
from hookstream.sinks.alerts.render import slack_body
from hookstream.sinks.alerts.rules import Rules, load_rules, loads_rules
from hookstream.sinks.alerts.settings import AlertsSettings
from hookstream.sinks.alerts.sink import ALERT_REJECTED, AlertsSink, RepeatWindow
from hookstream.sinks.base import SinkEvent

REPO = Path(__file__).resolve().parents[4]
EXAMPLES = REPO / "schemas" / "canonical" / "v1" / "examples"
LOCAL_RULES = load_rules(REPO / "deploy" / "local" / "alerts.toml")
AM = "http://am.test"
HOOK = "http://hook.test/alerts"
_offsets = itertools.count()


def event(name: str, **changes: Any) -> SinkEvent:
    body: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    body.update(event_id=str(uuid.uuid4()), **changes)
    record = SimpleNamespace(topic="t", partition=0, offset=next(_offsets), headers=[],
                             key=None, value=b"")
    return SinkEvent(body, record)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Responder = Callable[[httpx.Request], httpx.Response]


class Server:
    """Records every request; answers with ``respond`` (default: 200)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.respond: Responder = lambda request: httpx.Response(200)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)

    def bodies(self, url: str) -> list[Any]:
        return [json.loads(r.content) for r in self.requests if str(r.url) == url]

    def alerts(self) -> list[dict[str, Any]]:
        return [a for body in self.bodies(f"{AM}/api/v2/alerts") for a in body]


def make_sink(server: Server, clock: Clock | None = None, rules: Rules = LOCAL_RULES,
              **settings: Any) -> AlertsSink:
    values: dict[str, Any] = {"alertmanager_url": AM, "labels": ("env=test",)}
    values.update(settings)
    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    clock = clock or Clock()
    return AlertsSink(AlertsSettings(**values), rules, client=client, clock=clock,
                      wall_clock=lambda: 1_780_000_000.0 + clock.now)


async def started(sink: AlertsSink) -> AlertsSink:
    await sink.start()
    return sink


# ------------------------------------------------------------------ the alert

async def test_alert_labels_annotations_and_times() -> None:
    server = Server()
    sink = await started(make_sink(server, resolve_after_s=600,
                                   generator_url="https://console.test/s/{session_id}?a={agent_id}"))
    item = event("session.errored", session_id="ses 1/2")
    outcome = await sink.write([item])
    assert outcome.failed == [] and outcome.deferred == []
    (alert,) = server.alerts()
    assert alert["labels"] == {
        "alertname": "session_errored", "severity": "critical", "rule": "session_errored",
        "provider": "saaya", "source": "saaya-main",
        "agent_id": "agt_01HT9F4M2CXQ7P8K5W3ZR6YB0A", "team": "voice", "env": "test"}
    notes = alert["annotations"]
    assert notes["summary"] == ("Session ses 1/2 of agent agt_01HT9F4M2CXQ7P8K5W3ZR6YB0A "
                                "errored: llm_upstream_timeout Language model did not respond "
                                "within 15000 ms")
    assert notes["event_id"] == item.event["event_id"]
    assert notes["event_type"] == "session.errored"
    assert notes["error_code"] == "llm_upstream_timeout"
    assert "call_id" not in notes  # null fields are left out
    assert alert["startsAt"] == "2026-05-28T20:43:20.000Z"
    assert alert["endsAt"] == "2026-05-28T20:53:20.000Z"  # + resolve_after_s
    assert alert["generatorURL"] == (
        "https://console.test/s/ses%201%2F2?a=agt_01HT9F4M2CXQ7P8K5W3ZR6YB0A")
    assert server.requests[0].headers["content-type"] == "application/json"


async def test_wants_only_the_types_rules_list() -> None:
    sink = make_sink(Server())
    assert sink.wants("session.errored") and sink.wants("tool.failed")
    assert not sink.wants("call.started") and not sink.wants("")
    assert sink.name == "alerts" and sink.default_http_port == 8093
    assert not sink.ready()
    await sink.start()
    assert sink.ready()
    await sink.stop()


async def test_events_no_rule_matches_send_nothing() -> None:
    server = Server()
    sink = await started(make_sink(server))
    outcome = await sink.write([event("session.ended"), event("campaign.paused",
                                                              reason="manual")])
    assert outcome.failed == [] and server.requests == []


# ------------------------------------------------------------------ the repeat window

async def test_same_group_pages_once_per_window() -> None:
    server, clock = Server(), Clock()
    sink = await started(make_sink(server, clock, repeat_window_s=60))
    suppressed = metric("hookstream_alerts_suppressed_total", rule="session_errored")
    hits = metric("hookstream_alerts_rule_hits_total", rule="session_errored",
                  severity="critical")
    await sink.write([event("session.errored") for _ in range(3)])  # one batch
    await sink.write([event("session.errored")])  # a later batch, same agent
    clock.now += 30
    await sink.write([event("session.errored")])
    assert len(server.alerts()) == 1
    other = event("session.errored", agent_id="agt_other")  # another group pages
    await sink.write([other])
    assert [a["labels"]["agent_id"] for a in server.alerts()][-1] == "agt_other"
    clock.now += 31  # the window has passed for the first agent
    await sink.write([event("session.errored")])
    assert len(server.alerts()) == 3
    assert metric("hookstream_alerts_suppressed_total", rule="session_errored") \
        - suppressed == 4
    assert metric("hookstream_alerts_rule_hits_total", rule="session_errored",
                  severity="critical") - hits == 7


async def test_window_zero_pages_every_hit() -> None:
    server = Server()
    sink = await started(make_sink(server, repeat_window_s=0))
    await sink.write([event("tool.failed"), event("tool.failed")])
    assert len(server.alerts()) == 2


async def test_grouping_key_is_rule_and_group_by_values() -> None:
    server = Server()
    sink = await started(make_sink(server))
    await sink.write([
        event("tool.failed"),
        event("tool.failed", tool_name="lookup_order"),  # other tool: other group
        event("tool.failed.sawt"),
        event("tool.failed.sawt", error_message="different message, same group"),
        event("kb.upload.failed", agent_id=None),
    ])
    groups = sorted((a["labels"]["rule"], a["labels"].get("agent_id", ""),
                     a["labels"].get("tool_name", a["labels"].get("error_code")))
                    for a in server.alerts())
    assert groups == [
        ("kb_upload_failed", "", "file_too_large"),
        ("tool_failed", "agent_456", "send_sms"),
        ("tool_failed", "agt_01HV2K8D5RS1N7Q4T9X3M6CW0B", "create_refund"),
        ("tool_failed", "agt_01HV2K8D5RS1N7Q4T9X3M6CW0B", "lookup_order"),
    ]


def test_repeat_window_forgets_expired_keys() -> None:
    clock = Clock()
    window = RepeatWindow(100, clock)
    window.mark(("a",))
    assert window.active(("a",)) and not window.active(("b",))
    clock.now += 100
    assert not window.active(("a",))
    clock.now += 1
    window.mark(("b",))  # marks prune what has expired
    assert len(window) == 1


# ------------------------------------------------------------------ failures

@pytest.mark.parametrize("failure", ["connect", "timeout", 500, 503, 429, 408])
async def test_transient_failures_retry_the_batch(failure: Any) -> None:
    server = Server()

    def broken(request: httpx.Request) -> httpx.Response:
        if failure == "connect":
            raise httpx.ConnectError("refused", request=request)
        if failure == "timeout":
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(failure, text="nope")

    server.respond = broken
    sink = await started(make_sink(server))
    errors = metric("hookstream_alerts_sent_total", destination="alertmanager",
                    outcome="error")
    batch = [event("session.errored"), event("campaign.paused")]
    with pytest.raises(Retryable):
        await sink.write(batch)
    assert metric("hookstream_alerts_sent_total", destination="alertmanager",
                  outcome="error") - errors == 2
    assert len(sink.window) == 0  # nothing counts as paged
    server.respond = lambda request: httpx.Response(200)
    assert (await sink.write(batch)).failed == []  # the retry of the same batch
    assert len(server.alerts()) == 4  # 2 failed + 2 delivered
    assert len(sink.window) == 2 and sink._results == {}


async def test_a_retry_does_not_resend_what_a_destination_took() -> None:
    server = Server()
    hook_failures = iter([503])

    def respond(request: httpx.Request) -> httpx.Response:
        if str(request.url) == HOOK:
            return httpx.Response(next(hook_failures, 200))
        return httpx.Response(200)

    server.respond = respond
    sink = await started(make_sink(server, webhook_url=HOOK))
    batch = [event("session.errored"), event("kb.upload.failed")]
    with pytest.raises(Retryable, match="webhook"):
        await sink.write(batch)
    assert len(server.alerts()) == 2 and len(server.bodies(HOOK)) == 1
    await sink.write(batch)
    assert len(server.alerts()) == 2  # Alertmanager took both the first time
    assert [b["labels"]["rule"] for b in server.bodies(HOOK)] == [
        "session_errored", "session_errored", "kb_upload_failed"]
    await sink.write(batch)  # a redelivery of the batch: suppressed by the window
    assert len(server.alerts()) == 2 and len(server.bodies(HOOK)) == 3


async def test_rejected_alert_is_dead_lettered_and_the_rest_delivered() -> None:
    server = Server()
    stored: list[dict[str, Any]] = []

    def alertmanager(request: httpx.Request) -> httpx.Response:
        alerts = json.loads(request.content)
        good = [a for a in alerts if a["labels"]["rule"] != "kb_upload_failed"]
        stored.extend(good)  # like Alertmanager: valid alerts of a 400 request are kept
        if len(good) < len(alerts):
            return httpx.Response(400, json="invalid label set")
        return httpx.Response(200)

    server.respond = alertmanager
    sink = await started(make_sink(server))
    rejected = metric("hookstream_alerts_sent_total", destination="alertmanager",
                      outcome="rejected")
    kb = event("kb.upload.failed")
    outcome = await sink.write([event("session.errored"), kb, event("tool.failed")])
    assert [(item, reason) for item, reason, _ in outcome.failed] == [(kb, ALERT_REJECTED)]
    assert "rule kb_upload_failed: alertmanager: HTTP 400" in outcome.failed[0][2]
    assert len(server.requests) == 4  # the batch, then one by one
    assert {a["labels"]["rule"] for a in stored} == {"session_errored", "tool_failed"}
    assert metric("hookstream_alerts_sent_total", destination="alertmanager",
                  outcome="rejected") - rejected == 1
    # A rejected alert did not page: the next event of its group is tried again.
    server.respond = lambda request: httpx.Response(200)
    assert (await sink.write([event("kb.upload.failed")])).failed == []
    assert server.alerts()[-1]["labels"]["rule"] == "kb_upload_failed"


async def test_one_event_rejected_by_two_rules_is_dead_lettered_once() -> None:
    rules = loads_rules('''
        [[rule]]
        name = "a"
        types = ["tool.failed"]
        severity = "info"
        [[rule]]
        name = "b"
        types = ["tool.failed"]
        severity = "info"
    ''')
    server = Server()
    server.respond = lambda request: httpx.Response(422, json={"message": "bad"})
    sink = await started(make_sink(server, rules=rules))
    outcome = await sink.write([event("tool.failed")])
    (failed,) = outcome.failed
    assert "rule a:" in failed[2] and "rule b:" in failed[2]


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_webhook_rejection_dead_letters(status: int) -> None:
    server = Server()
    server.respond = lambda request: httpx.Response(status)
    sink = await started(make_sink(server, alertmanager_url="", webhook_url=HOOK))
    outcome = await sink.write([event("tool.failed")])
    assert outcome.failed[0][1] == ALERT_REJECTED
    assert f"webhook: HTTP {status}" in outcome.failed[0][2]


@pytest.mark.parametrize("status", [301, 401, 403, 404, 405, 502])
@pytest.mark.parametrize("destination", ["alertmanager", "webhook"])
async def test_a_misconfigured_destination_retries_rather_than_drops(
        status: int, destination: str) -> None:
    server = Server()
    server.respond = lambda request: httpx.Response(status)
    urls = {"alertmanager_url": AM if destination == "alertmanager" else "",
            "webhook_url": HOOK if destination == "webhook" else ""}
    sink = await started(make_sink(server, **urls))
    with pytest.raises(Retryable, match=f"HTTP {status}"):
        await sink.write([event("tool.failed")])


# ------------------------------------------------------------------ webhook bodies

async def test_webhook_generic_body() -> None:
    server = Server()
    sink = await started(make_sink(server, alertmanager_url="", webhook_url=HOOK))
    item = event("campaign.paused")
    await sink.write([item])
    (body,) = server.bodies(HOOK)
    assert body["status"] == "firing"
    assert body["labels"]["rule"] == "campaign_budget_paused"
    assert body["labels"]["campaign_id"] == "cmp_01HWF2A8C4E6G0J3L5N7Q9S1TU"
    assert body["annotations"]["event_id"] == item.event["event_id"]
    assert body["annotations"]["summary"] == (
        "Campaign cmp_01HWF2A8C4E6G0J3L5N7Q9S1TU paused by its budget alert")
    assert {"startsAt", "endsAt"} <= set(body)
    assert server.requests[0].url == HOOK


async def test_webhook_slack_body() -> None:
    server = Server()
    sink = await started(make_sink(server, alertmanager_url="", webhook_url=HOOK,
                                   webhook_slack=True))
    await sink.write([event("session.ended", sentiment=-0.75)])
    (body,) = server.bodies(HOOK)
    assert list(body) == ["text"]
    first, labels, when = body["text"].split("\n")
    assert first == ("*[WARNING] negative_sentiment*: Session ses_01HWB7Q2K9ZM4X8T3V6RJ5NC1D "
                     "of agent agt_01HT9F4M2CXQ7P8K5W3ZR6YB0A ended with sentiment -0.75")
    assert "rule=negative_sentiment" in labels and "agent_id=agt_01HT9F" in labels
    assert when.startswith("event ")


def test_slack_body_with_link() -> None:
    alert = {"labels": {"alertname": "A", "severity": "info", "rule": "a"},
             "annotations": {"summary": "s"}, "generatorURL": "https://x.test/1"}
    assert slack_body(alert) == {"text": "*[INFO] A*: s\nrule=a\n<https://x.test/1|details>"}
    alert["annotations"]["summary"] = "1 < 2 & 3 > 2"
    assert slack_body(alert)["text"].startswith("*[INFO] A*: 1 &lt; 2 &amp; 3 &gt; 2\n")


# ------------------------------------------------------------------ settings

@pytest.mark.parametrize(("changes", "message"), [
    ({"alertmanager_url": "", "webhook_url": ""}, "set HOOKSTREAM_ALERTMANAGER_URL or"),
    ({"alertmanager_url": "127.0.0.1:9095"}, "HOOKSTREAM_ALERTMANAGER_URL='127.0.0.1:9095'"),
    ({"webhook_url": "ftp://x"}, "HOOKSTREAM_ALERT_WEBHOOK_URL"),
    ({"generator_url": "https://x/{nope}"}, "uses {nope}"),
    ({"repeat_window_s": -1}, "HOOKSTREAM_ALERT_REPEAT_WINDOW_S must be >= 0"),
    ({"resolve_after_s": 0}, "HOOKSTREAM_ALERT_RESOLVE_AFTER_S must be > 0"),
    ({"timeout_s": 0}, "HOOKSTREAM_ALERT_HTTP_TIMEOUT_S must be > 0"),
    ({"labels": ("env",)}, "'env' is not name=value"),
    ({"labels": ("bad-name=x",)}, "is not name=value"),
    ({"labels": ("severity=x",)}, "'severity' is set by the sink"),
    ({"labels": ("agent_id=x",)}, "'agent_id' is set by the sink"),
    ({"labels": ("team=x",)}, "sets team, which rule 'session_errored' sets too"),
])
def test_settings_validation(changes: dict[str, Any], message: str) -> None:
    settings = dataclasses.replace(AlertsSettings(), **changes)
    with pytest.raises(ConfigError) as caught:
        AlertsSink(settings, LOCAL_RULES)
    assert message in str(caught.value)


def test_settings_from_environment() -> None:
    settings = load(AlertsSettings, {
        "HOOKSTREAM_ALERTMANAGER_URL": "", "HOOKSTREAM_ALERT_WEBHOOK_URL": HOOK,
        "HOOKSTREAM_ALERT_WEBHOOK_SLACK": "true", "HOOKSTREAM_ALERT_LABELS": "env=prod, dc=x",
        "HOOKSTREAM_ALERT_REPEAT_WINDOW_S": "60",
        "HOOKSTREAM_ALERT_RULES_FILE": str(REPO / "deploy" / "local" / "alerts.toml")})
    assert settings.extra_labels() == {"env": "prod", "dc": "x"}
    assert settings.webhook_slack and settings.repeat_window_s == 60.0
    sink = AlertsSink(settings)  # rules from the file
    assert [d.name for d in sink.destinations] == ["webhook"]
    assert [r.name for r in sink.rules.rules] == [r.name for r in LOCAL_RULES.rules]
    assert AlertsSettings().rules_file == "deploy/local/alerts.toml"


def test_main_help_and_config_error(capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exited:
        alerts_main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "hookstream-sink-alerts" in out and "HOOKSTREAM_ALERT_RULES_FILE" in out
    monkeypatch.setenv("HOOKSTREAM_ALERT_RULES_FILE", "/nonexistent/alerts.toml")
    assert alerts_main([]) == 2
    assert "configuration error" in capsys.readouterr().err


def test_docs_list_every_setting() -> None:
    docs = (REPO / "docs" / "sinks-alerts.md").read_text()
    assert markdown_table(AlertsSettings) in docs, (
        "regenerate the Settings table of docs/sinks-alerts.md with "
        "hookstream.core.config.markdown_table(AlertsSettings)")
