"""The CRM HTTP policy: HubSpot's 429s (ten-secondly waited out, DAILY raised), 5xx and
timeouts with backoff, rejections."""

from __future__ import annotations

import dataclasses
import email.utils
import time
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY

from hookstream.sinks.crm.adapters import HubSpotAdapter
from hookstream.sinks.crm.http import (
    CRMDailyLimited,
    CRMHttp,
    CRMRateLimited,
    CRMRejected,
    CRMTransient,
    CRMUnavailable,
    retry_after_s,
)
from hookstream.sinks.crm.mapping import activity
from hookstream.sinks.crm.ratelimit import next_midnight
from hookstream.sinks.crm.settings import CRMSettings
from tests.fakes.crm import TOKEN, FakeCRM, TimeoutASGITransport, example

SETTINGS = CRMSettings(url="http://crm.test", token=TOKEN, timeout_s=0.3, max_retries=2,
                       backoff_base_s=0.01, backoff_max_s=0.02, rate_limit_per_10s=100000,
                       search_rate_per_s=10000)


def hubspot(fake: FakeCRM, **overrides: Any) -> HubSpotAdapter:
    return HubSpotAdapter(dataclasses.replace(SETTINGS, **overrides),
                          transport=TimeoutASGITransport(fake.app))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_retry_after_parsing() -> None:
    assert retry_after_s("3") == 3.0
    assert retry_after_s(" 0.5 ") == 0.5
    assert retry_after_s("-4") == 0.0
    assert retry_after_s(None) is None
    assert retry_after_s("") is None
    assert retry_after_s("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 10, usegmt=True)
    assert retry_after_s(date, now=now) == pytest.approx(10, abs=1)
    assert retry_after_s(email.utils.formatdate(now - 100, usegmt=True), now=now) == 0.0


async def test_429_retry_after_is_honoured() -> None:
    fake = FakeCRM()
    fake.rate_limit_next(1, retry_after="1")
    before = metric("hookstream_crm_retries_total", cause="rate_limited")
    started = time.monotonic()
    await hubspot(fake, rate_limit_budget_s=5).log_call(activity(example("call.ended.sawt")))
    waited = time.monotonic() - started
    assert 0.95 <= waited < 2.0
    assert fake.requests["contacts.batch_read"] == 2  # the same request, sent again
    assert len(fake.calls) == 1
    assert metric("hookstream_crm_retries_total", cause="rate_limited") == before + 1
    assert metric("hookstream_crm_requests_total", operation="contact_read",
                  status="429") >= 1


async def test_429_storm_then_success() -> None:
    fake = FakeCRM()
    fake.rate_limit_next(6, retry_after="0.05")
    started = time.monotonic()
    await hubspot(fake, rate_limit_budget_s=5).log_call(activity(example("call.ended")))
    assert time.monotonic() - started >= 0.3
    # batch read, search, upsert of the contact; read, upsert of the call; association
    assert sum(fake.requests.values()) == 6 + 6
    assert len(fake.calls) == 1 and len(fake.contacts) == 1


async def test_a_long_retry_after_is_capped() -> None:
    fake = FakeCRM()
    fake.rate_limit_next(1, retry_after="120")
    started = time.monotonic()
    await hubspot(fake, rate_limit_max_wait_s=0.2).log_call(activity(example("call.ended")))
    assert 0.2 <= time.monotonic() - started < 1.0
    assert len(fake.calls) == 1


async def test_a_ten_secondly_429_waits_the_interval_header() -> None:
    """HubSpot sends no Retry-After: the interval header (10,000 ms) is the wait, not a
    1, 2, 4 s backoff inside the same window."""
    fake = FakeCRM()
    fake.rate_limit_next(2, retry_after=None)  # with X-HubSpot-RateLimit-Interval-...: 10000
    slept: list[float] = []
    now = [0.0]

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    settings = dataclasses.replace(SETTINGS, rate_limit_max_wait_s=30, rate_limit_budget_s=30)
    http = CRMHttp(settings, base_url=settings.url, transport=TimeoutASGITransport(fake.app),
                   headers={"Authorization": f"Bearer {TOKEN}"}, sleep=sleep,
                   clock=lambda: now[0])
    with http.rate_budget():
        await HubSpotAdapter(settings, http=http).log_call(activity(example("call.ended")))
    assert [round(s) for s in slept if s > 0.5] == [10, 10]
    assert fake.limited["TEN_SECONDLY_ROLLING"] == 2


async def test_429_past_the_budget_is_rate_limited() -> None:
    fake = FakeCRM()
    fake.rate_limit_next(100, retry_after="0.1")
    http = hubspot(fake, rate_limit_budget_s=0.35)
    with pytest.raises(CRMRateLimited), http.http.rate_budget():
        await http.log_call(activity(example("call.ended")))
    # 0.1 x 3 fits the budget, a 4th does not
    assert fake.requests["contacts.batch_read"] == 4
    assert not fake.calls


async def test_a_daily_429_is_raised_at_once_with_the_reset() -> None:
    fake = FakeCRM()
    fake.daily_limit(0)
    started = time.time()
    with pytest.raises(CRMDailyLimited) as caught:
        await hubspot(fake, portal_timezone="Asia/Riyadh").log_call(
            activity(example("call.ended")))
    assert sum(fake.requests.values()) == 1  # not retried in place
    assert caught.value.reset_at == next_midnight(started, "Asia/Riyadh")
    assert started < caught.value.reset_at <= started + 86400


async def test_500s_are_retried_then_succeed() -> None:
    fake = FakeCRM()
    fake.fail_next(2, 500, route="calls.batch_upsert")
    before = metric("hookstream_crm_retries_total", cause="server_error")
    await hubspot(fake).log_call(activity(example("call.ended.sawt")))
    assert fake.requests["calls.batch_upsert"] == 3
    assert len(fake.calls) == 1
    assert metric("hookstream_crm_retries_total", cause="server_error") == before + 2


async def test_persistent_500s_are_unavailable() -> None:
    fake = FakeCRM()
    fake.go_down(500)
    with pytest.raises(CRMUnavailable):
        await hubspot(fake).log_call(activity(example("call.ended.sawt")))
    assert sum(fake.requests.values()) == 3  # 1 + max_retries, each stopped at the first 500


async def test_a_timeout_after_the_write_leaves_one_call() -> None:
    """The CRM applies the upsert but answers after the client's timeout; the retry
    reads the call by its unique key and finds it: still one activity."""
    fake = FakeCRM()
    fake.slow_next(1, 1.0, route="calls.batch_upsert")
    before = metric("hookstream_crm_retries_total", cause="timeout")
    await hubspot(fake).log_call(activity(example("call.ended.sawt")))
    assert fake.requests["calls.batch_upsert"] == 1  # the retry found the event applied
    assert fake.requests["calls.batch_read"] == 2
    assert len(fake.calls) == 1
    assert len(fake.associations) == 1
    assert metric("hookstream_crm_retries_total", cause="timeout") == before + 1


async def test_timeouts_throughout_are_unavailable() -> None:
    fake = FakeCRM()
    fake.slow_next(10, 1.0, route="contacts.search")
    started = time.monotonic()
    with pytest.raises(CRMUnavailable) as caught:
        await hubspot(fake).log_call(activity(example("call.ended.sawt")))
    assert "timed out" in str(caught.value)
    assert fake.requests["contacts.search"] == 3
    assert time.monotonic() - started < 3


async def test_connection_errors_are_retried() -> None:
    tries = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(204)

    http = CRMHttp(SETTINGS, transport=httpx.MockTransport(handler))
    assert await http.retrying("op", lambda: http.request("op", "POST", "http://x/y",
                                                          json={})) is None
    assert tries == 3


async def test_non_json_success_is_transient_unless_not_expected() -> None:
    http = CRMHttp(SETTINGS, transport=httpx.MockTransport(
        lambda r: httpx.Response(200, text="<html>ok</html>")))
    with pytest.raises(CRMTransient):
        await http.request("op", "GET", "http://x/")
    assert await http.request("op", "GET", "http://x/", expect_json=False) is None


async def test_4xx_is_rejected_at_once() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(400, json={"status": "error", "category": "VALIDATION_ERROR"})

    http = CRMHttp(SETTINGS, transport=httpx.MockTransport(handler))
    with pytest.raises(CRMRejected) as caught:
        await http.retrying("op", lambda: http.request("op", "POST", "http://x/", json={}))
    assert caught.value.status == 400 and "VALIDATION_ERROR" in caught.value.detail
    assert calls == 1


async def test_requests_carry_the_bearer_token_and_json() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "COMPLETE", "results": []})

    adapter = HubSpotAdapter(SETTINGS, transport=httpx.MockTransport(handler))
    with pytest.raises(CRMTransient):  # the mock's upsert answer has no object
        await adapter._log_calls([activity(example("call.not_connected"))])
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert seen[0].headers["content-type"] == "application/json"
    assert seen[0].url.path == "/crm/v3/objects/calls/batch/read"
    assert orjson.loads(seen[0].content)["idProperty"] == "hookstream_call_key"
