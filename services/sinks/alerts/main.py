"""``hookstream-sink-alerts``: raise alerts from canonical events (Alertmanager, webhook)."""

from __future__ import annotations

from ...core.config import load
from ..runner import sink_main
from .settings import AlertsSettings
from .sink import AlertsSink

DESCRIPTION = (
    "Match canonical events against the alert rules (HOOKSTREAM_ALERT_RULES_FILE) and "
    "deliver alerts to Prometheus Alertmanager (POST /api/v2/alerts) and/or a JSON webhook. "
    "A rule pages at most once per grouping key within the repeat window; delivery "
    "failures retry the batch; alerts rejected as invalid (400/413/422) are dead-lettered. "
    "Metrics: hookstream_alerts_rule_hits_total, hookstream_alerts_sent_total, "
    "hookstream_alerts_suppressed_total. See docs/sinks-alerts.md.")


def build() -> AlertsSink:
    return AlertsSink(load(AlertsSettings))


def main(argv: list[str] | None = None) -> int:
    return sink_main("alerts", DESCRIPTION, build, (AlertsSettings,), argv)


if __name__ == "__main__":
    raise SystemExit(main())
