"""Rendering: a rule hit as an Alertmanager v2 alert, and an alert as a Slack message."""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any

from ...core.events import iso_ms
from .rules import FIELDS, render
from .settings import AlertsSettings

if TYPE_CHECKING:
    from .sink import Hit

# Event fields copied into every alert's annotations when the event has them.
ANNOTATED_FIELDS = ("event_id", "type", "provider_type", "occurred_at", "received_at",
                    "call_id", "session_id", "agent_id", "campaign_id", "tool_name",
                    "error_code", "error_message", "reason")


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
