"""CRM sink settings, read once at start from the environment."""

from __future__ import annotations

import dataclasses
import zoneinfo

from ...core.config import ConfigError, env, secret

ADAPTERS = ("hubspot", "webhook")


@dataclasses.dataclass(frozen=True)
class CRMSettings:
    adapter: str = env("HOOKSTREAM_CRM_ADAPTER", "hubspot",
                       "CRM adapter: hubspot (HubSpot CRM v3 shapes) or webhook (generic JSON)")
    url: str = env("HOOKSTREAM_CRM_URL", "https://api.hubapi.com",
                   "base URL of the HubSpot-shaped CRM API")
    token: str = secret("HOOKSTREAM_CRM_TOKEN",
                        "bearer token of the CRM API (HubSpot private app token)")
    webhook_url: str = env("HOOKSTREAM_CRM_WEBHOOK_URL", "",
                           "webhook adapter: URL that receives one JSON document per event")
    webhook_token: str = secret("HOOKSTREAM_CRM_WEBHOOK_TOKEN",
                                "webhook adapter: optional bearer token sent with each POST")
    timeout_s: float = env("HOOKSTREAM_CRM_TIMEOUT_S", 10.0,
                           "timeout of one CRM request (connect, read, write each)")
    max_retries: int = env("HOOKSTREAM_CRM_MAX_RETRIES", 3,
                           "retries of one CRM write (its whole search-then-write "
                           "sequence) after a 5xx, timeout or connection error")
    backoff_base_s: float = env("HOOKSTREAM_CRM_BACKOFF_BASE_S", 0.5,
                                "first backoff after a 5xx/timeout; doubles, with jitter")
    backoff_max_s: float = env("HOOKSTREAM_CRM_BACKOFF_MAX_S", 8.0,
                               "longest backoff between two tries of one write")
    rate_limit_max_wait_s: float = env(
        "HOOKSTREAM_CRM_RATE_LIMIT_MAX_WAIT_S", 10.0,
        "longest single wait on a ten-secondly 429 (Retry-After or the interval header; "
        "longer values are capped)")
    rate_limit_budget_s: float = env(
        "HOOKSTREAM_CRM_RATE_LIMIT_BUDGET_S", 10.0,
        "rate-limit waiting (pacing and 429 windows) allowed per batch write; past it the "
        "rest of the batch is parked on the retry topic, so a partition never waits "
        "longer than HubSpot's ten-second window")
    rate_limit_per_10s: float = env(
        "HOOKSTREAM_CRM_RATE_LIMIT_PER_10S", 100.0,
        "HubSpot's rolling ten-second request budget of the access token "
        "(X-HubSpot-RateLimit-Max); each worker uses 80% of it divided by "
        "HOOKSTREAM_CRM_WORKERS")
    search_rate_per_s: float = env(
        "HOOKSTREAM_CRM_SEARCH_RATE_PER_S", 4.0,
        "HubSpot's search endpoints' own limit, requests per second per token; shared "
        "out like the ten-second budget")
    workers: int = env(
        "HOOKSTREAM_CRM_WORKERS", 1,
        "CRM sink processes sharing one access token (the deployment's replicas): each "
        "process's token bucket gets 1/workers of the budgets")
    portal_timezone: str = env(
        "HOOKSTREAM_CRM_PORTAL_TIMEZONE", "UTC",
        "the HubSpot account's time zone (IANA name): its DAILY limit resets at midnight "
        "there, and events are parked until then")
    batch_size: int = env(
        "HOOKSTREAM_CRM_BATCH_SIZE", 100,
        "inputs per HubSpot batch request (read, upsert, associate); HubSpot's limit is 100")
    circuit_failures: int = env(
        "HOOKSTREAM_CRM_CIRCUIT_FAILURES", 5,
        "consecutive failed operations (after retries) that open the circuit")
    circuit_cooldown_s: float = env(
        "HOOKSTREAM_CRM_CIRCUIT_COOLDOWN_S", 30.0,
        "time an open circuit waits before letting one trial call through")
    batch_deadline_s: float = env(
        "HOOKSTREAM_CRM_BATCH_DEADLINE_S", 120.0,
        "after this long on one batch, hand the rest back (retried; keeps the "
        "consumer inside max.poll.interval)")
    transcript_max_chars: int = env(
        "HOOKSTREAM_CRM_TRANSCRIPT_MAX_CHARS", 20000,
        "an inline transcript is cut to this many characters in the CRM (the rendered "
        "call body is also capped at HubSpot's 65,536 characters)")
    default_country_code: str = env(
        "HOOKSTREAM_CRM_DEFAULT_COUNTRY_CODE", "",
        "calling code (e.g. 966) that national numbers are read in; empty: a call from "
        "a national number gets no contact")

    def validate(self) -> None:
        if self.adapter not in ADAPTERS:
            raise ConfigError(f"HOOKSTREAM_CRM_ADAPTER={self.adapter!r}: expected one of "
                              f"{', '.join(ADAPTERS)}")
        if self.adapter == "hubspot":
            if not self.url.startswith(("http://", "https://")):
                raise ConfigError(f"HOOKSTREAM_CRM_URL={self.url!r}: expected an http(s) URL")
            if not self.token:
                raise ConfigError("HOOKSTREAM_CRM_TOKEN is required by the hubspot adapter")
        if self.adapter == "webhook" and not self.webhook_url.startswith(("http://",
                                                                          "https://")):
            raise ConfigError(f"HOOKSTREAM_CRM_WEBHOOK_URL={self.webhook_url!r}: the webhook "
                              "adapter needs an http(s) URL")
        if self.default_country_code and not self.default_country_code.isdigit():
            raise ConfigError(f"HOOKSTREAM_CRM_DEFAULT_COUNTRY_CODE="
                              f"{self.default_country_code!r}: digits only, e.g. 966")
        try:
            zoneinfo.ZoneInfo(self.portal_timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"HOOKSTREAM_CRM_PORTAL_TIMEZONE={self.portal_timezone!r}: "
                              f"not an IANA time zone ({exc})") from None
        if not 1 <= self.batch_size <= 100:
            raise ConfigError("HOOKSTREAM_CRM_BATCH_SIZE must be 1..100 (HubSpot's limit)")
        if self.workers < 1:
            raise ConfigError("HOOKSTREAM_CRM_WORKERS must be >= 1")
        for name in ("timeout_s", "rate_limit_max_wait_s", "batch_deadline_s",
                     "rate_limit_per_10s", "search_rate_per_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"CRM setting {name} must be positive")
        if self.circuit_failures < 1 or self.max_retries < 0:
            raise ConfigError("HOOKSTREAM_CRM_CIRCUIT_FAILURES must be >= 1 and "
                              "HOOKSTREAM_CRM_MAX_RETRIES >= 0")
