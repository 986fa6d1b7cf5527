"""The alerts sink: canonical events that match a rule become alerts.

For every event of a type some rule lists, each matching rule (``rules.py``)
makes a *hit*. A hit whose rule already paged for the same grouping key within
``HOOKSTREAM_ALERT_REPEAT_WINDOW_S`` is suppressed (counted, not sent); the
others become alerts, posted to Prometheus Alertmanager (``POST
/api/v2/alerts``) and/or a JSON webhook (one POST per alert; a Slack-compatible
``{"text": ...}`` body on request).

Failures, per the sink framework (``hookstream.sinks.runner``):

* 400, 413 or 422 for an alert: its event is dead-lettered with reason
  ``alert_rejected`` (Alertmanager validates each alert of a request and stores
  the valid ones; a rejected request is re-sent one alert at a time to find
  which one it was).
* anything else that is not a 2xx (connection errors, timeouts, 5xx, 429, but
  also 401/403/404: the destination is down or misconfigured, not the alert
  wrong): ``Retryable``: the batch is retried in place with backoff; nothing is
  committed, nothing is lost. What a destination already accepted in an earlier
  attempt of the batch is not sent to it again (remembered until the batch
  succeeds).

The repeat window lives in memory: a restarted sink may page once more for a
group that paged shortly before. Alertmanager absorbs that: an alert with the
same labels is the same alert, and its own ``repeat_interval`` decides when a
receiver is notified again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from prometheus_client import Counter

from ...core.config import ConfigError, env
from ...core.errors import Retryable, sink_reasons
from ...core.events import iso_ms
from ..base import SinkEvent, WriteOutcome
from .rules import (
    FIELDS,
    LABEL_NAME,
    RESERVED_LABELS,
    Rule,
    Rules,
    load_rules,
    render,
    template_fields,
)

log = logging.getLogger(__name__)

(ALERT_REJECTED,) = sink_reasons("alerts", "alert_rejected")  # dead-letter reason of this sink
# Event fields copied into every alert's annotations when the event has them.
ANNOTATED_FIELDS = ("event_id", "type", "provider_type", "occurred_at", "received_at",
                    "call_id", "session_id", "agent_id", "campaign_id", "tool_name",
                    "error_code", "error_message", "reason")
ALERTS_PER_REQUEST = 200
MAX_REMEMBERED = 100_000  # answers kept for batches being retried

RULE_HITS = Counter("hookstream_alerts_rule_hits_total",
                    "Canonical events that matched an alert rule (sent or suppressed)",
                    ["rule", "severity"])
SENT = Counter("hookstream_alerts_sent_total",
               "Alerts delivered per destination, by outcome (sent; rejected: 400/413/422, "
               "dead-lettered; error: a transient failure, the batch is retried)",
               ["destination", "outcome"])
SUPPRESSED = Counter("hookstream_alerts_suppressed_total",
                     "Rule hits not sent: the rule already paged for the same grouping key "
                     "within the repeat window", ["rule"])


@dataclasses.dataclass(frozen=True)
class AlertsSettings:
    rules_file: str = env("HOOKSTREAM_ALERT_RULES_FILE", "deploy/local/alerts.toml",
                          "the alert rules file (TOML)")
    alertmanager_url: str = env("HOOKSTREAM_ALERTMANAGER_URL", "http://127.0.0.1:9095",
                                "Alertmanager base URL; alerts are POSTed to its "
                                "/api/v2/alerts (empty: no Alertmanager)")
    webhook_url: str = env("HOOKSTREAM_ALERT_WEBHOOK_URL", "",
                           "a webhook that gets one JSON POST per alert (empty: none)")
    webhook_slack: bool = env("HOOKSTREAM_ALERT_WEBHOOK_SLACK", False,
                              "send the webhook a Slack-compatible body {\"text\": ...}")
    repeat_window_s: float = env("HOOKSTREAM_ALERT_REPEAT_WINDOW_S", 3600.0,
                                 "a rule pages at most once per grouping key within this "
                                 "window (in memory; 0: every hit pages)")
    resolve_after_s: float = env("HOOKSTREAM_ALERT_RESOLVE_AFTER_S", 3600.0,
                                 "endsAt = startsAt + this: Alertmanager resolves the alert "
                                 "then unless it fires again")
    labels: tuple[str, ...] = env("HOOKSTREAM_ALERT_LABELS", (),
                                  "labels added to every alert: name=value,... "
                                  "(e.g. env=prod)")
    generator_url: str = env("HOOKSTREAM_ALERT_GENERATOR_URL", "",
                             "generatorURL of each alert, a template over event fields, "
                             "e.g. https://console.example/calls/{call_id} (empty: none)")
    timeout_s: float = env("HOOKSTREAM_ALERT_HTTP_TIMEOUT_S", 5.0,
                           "timeout of one request to Alertmanager or the webhook")

    def extra_labels(self) -> dict[str, str]:
        """``labels`` as a dict; ConfigError if malformed."""
        out: dict[str, str] = {}
        for item in self.labels:
            name, sep, value = item.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not value or not LABEL_NAME.match(name):
                raise ConfigError(f"HOOKSTREAM_ALERT_LABELS: {item!r} is not name=value "
                                  "with a label name [a-zA-Z_][a-zA-Z0-9_]*")
            if name in RESERVED_LABELS or name in FIELDS:
                raise ConfigError(f"HOOKSTREAM_ALERT_LABELS: {name!r} is set by the sink "
                                  "(reserved labels and event fields); pick another name")
            out[name] = value
        return out

    def validate(self) -> None:
        if not self.alertmanager_url and not self.webhook_url:
            raise ConfigError("set HOOKSTREAM_ALERTMANAGER_URL or HOOKSTREAM_ALERT_WEBHOOK_URL "
                              "(or both): alerts need somewhere to go")
        for var, url in (("HOOKSTREAM_ALERTMANAGER_URL", self.alertmanager_url),
                         ("HOOKSTREAM_ALERT_WEBHOOK_URL", self.webhook_url),
                         ("HOOKSTREAM_ALERT_GENERATOR_URL", self.generator_url)):
            if url and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise ConfigError(f"{var}={url!r}: expected an http:// or https:// URL")
        if self.generator_url:
            template_fields(self.generator_url, "HOOKSTREAM_ALERT_GENERATOR_URL")
        if self.repeat_window_s < 0:
            raise ConfigError("HOOKSTREAM_ALERT_REPEAT_WINDOW_S must be >= 0")
        if self.resolve_after_s <= 0:
            raise ConfigError("HOOKSTREAM_ALERT_RESOLVE_AFTER_S must be > 0")
        if self.timeout_s <= 0:
            raise ConfigError("HOOKSTREAM_ALERT_HTTP_TIMEOUT_S must be > 0")
        self.extra_labels()


class RepeatWindow:
    """When each grouping key last paged; a key pages again only after ``window_s``."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._last: dict[tuple[str, ...], float] = {}
        self._pruned_at = clock()

    def __len__(self) -> int:
        return len(self._last)

    def active(self, key: tuple[str, ...]) -> bool:
        paged = self._last.get(key)
        return paged is not None and self._clock() - paged < self.window_s

    def mark(self, key: tuple[str, ...]) -> None:
        now = self._clock()
        self._last[key] = now
        if now - self._pruned_at >= max(self.window_s, 60.0):
            self._pruned_at = now
            self._last = {k: t for k, t in self._last.items() if now - t < self.window_s}


@dataclasses.dataclass
class Hit:
    rule: Rule
    item: SinkEvent
    key: tuple[str, ...]


def split_hits(hits: Sequence[Hit], window: RepeatWindow) -> tuple[list[Hit], list[Hit]]:
    """(to send, suppressed): a hit is suppressed if its key paged within the window or
    an earlier hit of the same batch has the same key. Marks nothing."""
    if window.window_s <= 0:
        return list(hits), []
    send: list[Hit] = []
    suppressed: list[Hit] = []
    seen: set[tuple[str, ...]] = set()
    for hit in hits:
        if hit.key in seen or window.active(hit.key):
            suppressed.append(hit)
        else:
            seen.add(hit.key)
            send.append(hit)
    return send, suppressed


def _utf8(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate (which a Python caller may hold,
    though orjson never reads one) becomes "?" instead of failing the JSON encoding."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="replace").decode()
    return text


def build_alert(hit: Hit, settings: AlertsSettings, extra_labels: dict[str, str],
                now: float) -> dict[str, Any]:
    """The Alertmanager v2 ``postableAlert`` of a hit (the webhook gets the same)."""
    rule, event = hit.rule, hit.item.event
    labels = {"alertname": rule.alertname, "severity": rule.severity, "rule": rule.name}
    for field in ("provider", "source"):
        if event.get(field):
            labels[field] = _utf8(str(event[field]))
    for field, value in zip(rule.group_by, rule.group_values(event), strict=True):
        if value:  # an empty label is an absent label in Alertmanager
            labels[field] = _utf8(value)
    labels.update(rule.labels)
    labels.update(extra_labels)
    annotations = {"summary": _utf8(render(rule.summary, event))}
    if rule.description:
        annotations["description"] = _utf8(render(rule.description, event))
    for field in ANNOTATED_FIELDS:
        found = event.get(field)
        if found is not None and found != "":
            annotations["event_type" if field == "type" else field] = _utf8(str(found))
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": iso_ms(int(now * 1000)),
        "endsAt": iso_ms(int((now + settings.resolve_after_s) * 1000)),
    }
    if settings.generator_url:
        quoted = {k: urllib.parse.quote(_utf8(str(v)), safe="") for k, v in event.items()
                  if k in FIELDS and v is not None}
        alert["generatorURL"] = render(settings.generator_url, quoted)
    return alert


def _slack_escape(text: str) -> str:
    """Slack's three control characters in message text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(alert: dict[str, Any]) -> dict[str, Any]:
    labels, notes = alert["labels"], alert["annotations"]
    shown = ", ".join(f"{k}={v}" for k, v in labels.items()
                      if k not in ("alertname", "severity"))
    lines = [f"*[{labels['severity'].upper()}] {labels['alertname']}*: {notes['summary']}",
             shown]
    if "event_id" in notes:
        lines.append(f"event {notes['event_id']} at {notes.get('received_at', '?')}")
    text = "\n".join(_slack_escape(line) for line in lines)
    if alert.get("generatorURL"):
        text += f"\n<{alert['generatorURL']}|details>"
    return {"text": text}


# The answers that reject one request's content for good: the request (after bisection,
# the one alert) is bad. Every other non-2xx (401/403: credentials, 404/405: a wrong
# URL, 3xx, 408, 429, 5xx) is about the destination, not the alert: retry the batch
# rather than dead-letter every alert until someone notices.
REJECTED_STATUSES = frozenset({400, 413, 422})


def _transient(status: int) -> bool:
    return not 200 <= status < 300 and status not in REJECTED_STATUSES


def _detail(response: httpx.Response) -> str:
    return f"HTTP {response.status_code}: {response.text[:300].strip()}"


# Called with (position in the list, None) when an alert was accepted,
# (position, detail) when it was rejected for good.
Done = Callable[[int, str | None], None]


class Alertmanager:
    name = "alertmanager"

    def __init__(self, base_url: str) -> None:
        self.url = base_url.rstrip("/") + "/api/v2/alerts"

    async def _post(self, client: httpx.AsyncClient, alerts: list[dict[str, Any]]
                    ) -> httpx.Response:
        try:
            response = await client.post(self.url, json=alerts)
        except httpx.HTTPError as exc:
            SENT.labels(self.name, "error").inc(len(alerts))
            raise Retryable(f"alertmanager {self.url}: {exc!r}") from exc
        if _transient(response.status_code):
            SENT.labels(self.name, "error").inc(len(alerts))
            raise Retryable(f"alertmanager {self.url}: {_detail(response)}")
        return response

    async def send(self, client: httpx.AsyncClient, alerts: list[dict[str, Any]],
                   done: Done) -> None:
        for start in range(0, len(alerts), ALERTS_PER_REQUEST):
            chunk = alerts[start:start + ALERTS_PER_REQUEST]
            response = await self._post(client, chunk)
            if response.is_success:
                for pos in range(start, start + len(chunk)):
                    done(pos, None)
                continue
            if len(chunk) > 1:  # which one? Alertmanager stored the valid ones already
                log.warning("alertmanager rejected a request; re-sending one by one",
                            extra={"error": _detail(response)})
            for pos, alert in enumerate(chunk, start):
                single = response if len(chunk) == 1 else await self._post(client, [alert])
                done(pos, None if single.is_success else _detail(single))


class Webhook:
    name = "webhook"

    def __init__(self, url: str, slack: bool) -> None:
        self.url = url
        self.slack = slack

    async def send(self, client: httpx.AsyncClient, alerts: list[dict[str, Any]],
                   done: Done) -> None:
        for pos, alert in enumerate(alerts):
            body = slack_body(alert) if self.slack else {"status": "firing", **alert}
            try:
                response = await client.post(self.url, json=body)
            except httpx.HTTPError as exc:
                SENT.labels(self.name, "error").inc()
                raise Retryable(f"webhook: {exc!r}") from exc
            if _transient(response.status_code):
                SENT.labels(self.name, "error").inc()
                raise Retryable(f"webhook: {_detail(response)}")
            done(pos, None if response.is_success else _detail(response))


def _position(item: SinkEvent) -> tuple[Any, ...]:
    """Where the event was read from: the same on every retry of its batch."""
    record = item.record
    offset = getattr(record, "offset", None)
    if offset is None:
        return ("event", str(item.event.get("event_id")))
    return (getattr(record, "topic", ""), getattr(record, "partition", 0), offset)


class AlertsSink:
    """The Sink protocol over rules, a repeat window and the destinations."""

    name = "alerts"
    default_http_port = 8093
    takes_test_events = False  # the runner skips test deliveries (counted, logged)

    def __init__(self, settings: AlertsSettings, rules: Rules | None = None, *,
                 client: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        settings.validate()
        self.settings = settings
        self.rules = rules if rules is not None else load_rules(settings.rules_file)
        self._extra_labels = settings.extra_labels()
        for rule in self.rules.rules:
            RULE_HITS.labels(rule.name, rule.severity)  # series exist from the start, at 0
            SUPPRESSED.labels(rule.name)
            clash = sorted(set(self._extra_labels) & {name for name, _ in rule.labels})
            if clash:
                raise ConfigError(f"HOOKSTREAM_ALERT_LABELS sets {', '.join(clash)}, which "
                                  f"rule {rule.name!r} sets too")
        self.window = RepeatWindow(settings.repeat_window_s, clock)
        self._wall = wall_clock
        self.destinations: list[Alertmanager | Webhook] = []
        if settings.alertmanager_url:
            self.destinations.append(Alertmanager(settings.alertmanager_url))
        if settings.webhook_url:
            self.destinations.append(Webhook(settings.webhook_url, settings.webhook_slack))
        for destination in self.destinations:  # series exist from the start, at 0
            for outcome in ("sent", "rejected", "error"):
                SENT.labels(destination.name, outcome)
        self._client = client
        self._own_client = client is None
        self._started = False
        self._lock = asyncio.Lock()
        # (destination, rule, where the event was read from) -> None (accepted) or why it
        # was rejected: answers of a batch that has not gone through yet, so that its
        # retry does not send anything twice.
        self._results: dict[tuple[Any, ...], str | None] = {}

    def wants(self, event_type: str) -> bool:
        return self.rules.wants(event_type)

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.timeout_s),
                headers={"user-agent": "hookstream-sink-alerts"})
        self._started = True

    async def stop(self) -> None:
        self._started = False
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None

    def ready(self) -> bool:
        return self._started

    def hits(self, events: Sequence[SinkEvent]) -> list[Hit]:
        return [Hit(rule, item, rule.group_key(item.event))
                for item in events for rule in self.rules.matching(item.event)]

    async def write(self, events: list[SinkEvent]) -> WriteOutcome:
        async with self._lock:  # the main and retry loops may write at the same time
            return await self._write(events)

    async def _write(self, events: list[SinkEvent]) -> WriteOutcome:
        assert self._client is not None, "start() first"
        hits = self.hits(events)
        send, suppressed = split_hits(hits, self.window)
        now = self._wall()
        alerts = [build_alert(hit, self.settings, self._extra_labels, now) for hit in send]
        if len(self._results) > MAX_REMEMBERED:  # batches that never came back
            self._results.clear()

        marks: dict[str, list[tuple[Any, ...]]] = {}
        for destination in self.destinations:
            name = destination.name
            marks[name] = [(name, hit.rule.name, *_position(hit.item)) for hit in send]
            todo = [i for i, mark in enumerate(marks[name]) if mark not in self._results]
            if not todo:
                continue

            def done(pos: int, detail: str | None, todo: list[int] = todo,
                     mine: list[tuple[Any, ...]] = marks[name], name: str = name) -> None:
                self._results[mine[todo[pos]]] = detail
                SENT.labels(name, "sent" if detail is None else "rejected").inc()

            await destination.send(self._client, [alerts[i] for i in todo], done)

        # Every destination answered for every alert: commit the window, count, forget.
        failed: dict[int, tuple[SinkEvent, list[str]]] = {}
        for i, hit in enumerate(send):
            results = {name: self._results.pop(mine[i]) for name, mine in marks.items()}
            if any(detail is None for detail in results.values()):
                self.window.mark(hit.key)  # paged somewhere
            for name, detail in results.items():
                if detail is not None:
                    entry = failed.setdefault(id(hit.item), (hit.item, []))
                    entry[1].append(f"rule {hit.rule.name}: {name}: {detail}")
        for hit in hits:
            RULE_HITS.labels(hit.rule.name, hit.rule.severity).inc()
        for hit in suppressed:
            SUPPRESSED.labels(hit.rule.name).inc()
        if hits:
            log.info("alert rules hit", extra={
                "hits": len(hits), "sent": len(send), "suppressed": len(suppressed),
                "rejected_events": len(failed), "rules": sorted({h.rule.name for h in hits})})
        return WriteOutcome(failed=[(item, ALERT_REJECTED, "; ".join(details)[:1000])
                                    for item, details in failed.values()])
