"""Where alerts go: Prometheus Alertmanager (``POST /api/v2/alerts``, bisected on a
rejection) and a JSON webhook (one POST per alert), with what their answers mean."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client import Counter

from ...core.errors import Retryable
from .render import slack_body

log = logging.getLogger(__name__)

ALERTS_PER_REQUEST = 200

SENT = Counter("hookstream_alerts_sent_total",
               "Alerts delivered per destination, by outcome (sent; rejected: 400/413/422, "
               "dead-lettered; error: a transient failure, the batch is retried)",
               ["destination", "outcome"])


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


Destination = Alertmanager | Webhook
