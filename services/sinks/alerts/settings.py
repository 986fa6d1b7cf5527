"""Alerts sink settings, read once at start from the environment."""

from __future__ import annotations

import dataclasses
import urllib.parse

from ...core.config import ConfigError, env
from .rules import FIELDS, LABEL_NAME, RESERVED_LABELS, template_fields


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
