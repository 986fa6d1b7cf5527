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
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from prometheus_client import Counter

from ...core.config import ConfigError
from ...core.errors import sink_reasons
from ..base import SinkEvent, WriteOutcome
from .destinations import SENT, Alertmanager, Destination, Webhook
from .render import build_alert
from .rules import Rule, Rules, load_rules
from .settings import AlertsSettings

log = logging.getLogger(__name__)

(ALERT_REJECTED,) = sink_reasons("alerts", "alert_rejected")  # dead-letter reason of this sink
MAX_REMEMBERED = 100_000  # answers kept for batches being retried

RULE_HITS = Counter("hookstream_alerts_rule_hits_total",
                    "Canonical events that matched an alert rule (sent or suppressed)",
                    ["rule", "severity"])
SUPPRESSED = Counter("hookstream_alerts_suppressed_total",
                     "Rule hits not sent: the rule already paged for the same grouping key "
                     "within the repeat window", ["rule"])


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
        self.destinations: list[Destination] = []
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
