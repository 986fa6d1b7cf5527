"""Sarj.ai's call API client against the fake API (in process, no network), the one
conversion from a call detail to a webhook delivery, and where the keys come from."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from hookstream.core.config import ConfigError
from hookstream.core.sources import load_api_keys
from hookstream.providers.sarj.api import ApiFailed, ApiUnavailable, SarjApi, retry_after_s
from hookstream.providers.sarj.calls import NotACallDetail, recording_url, webhook_body
from hookstream.providers.sarj.settings import SarjApiSettings
from tests.fakes.sarj import KEY, FakeSarj, complete_detail

CALL = "call_8f9b2c1e-4a5d-4f6e-8b1a-2c3d4e5f6a7b"


def api(fake: FakeSarj, sleeps: list[float], **options: object) -> SarjApi:
    settings = SarjApiSettings(url=fake.url, **options)  # type: ignore[arg-type]

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return SarjApi(settings, {"sarj-main": KEY, "sarj-other": "other-key"},
                   transport=httpx.ASGITransport(fake.app), sleep=sleep)


async def test_a_call_is_fetched_with_the_sources_key_and_a_fresh_url() -> None:
    fake, sleeps = FakeSarj(1), []
    fake.add(CALL, recording=b"RIFF")
    client = api(fake, sleeps)
    first = await client.call("sarj-main", CALL)
    second = await client.call("sarj-main", CALL)
    assert first["type"] == "complete" and first["call_data"]["call_id"] == CALL
    assert recording_url(CALL, first) != recording_url(CALL, second)  # signed anew
    assert fake.requests[CALL] == 2 and sleeps == []
    with pytest.raises(ApiFailed) as refused:
        await client.call("sarj-other", CALL)  # the other organisation's key
    assert refused.value.status == 401 and "other-key" not in str(refused.value)
    with pytest.raises(ApiFailed) as missing:
        await client.call("sarj-main", "call_nope")
    assert missing.value.status == 404
    with pytest.raises(ApiFailed, match="no api_key_env"):
        await client.call("sarj-unknown", CALL)
    assert fake.requests["call_nope"] == 1 and sum(fake.requests.values()) == 4
    await client.aclose()


async def test_transient_answers_are_retried_with_backoff_then_given_up() -> None:
    fake, sleeps = FakeSarj(1), []
    fake.add(CALL)
    client = api(fake, sleeps, retries=3, backoff_s=0.5, backoff_max_s=4)
    fake.fail_next(2, 503)
    assert (await client.call("sarj-main", CALL))["type"] == "complete"
    assert sleeps == [0.5, 1.0]
    sleeps.clear()
    fake.fail_next(1, 429, retry_after="60")  # honoured, but no longer than the maximum
    await client.call("sarj-main", CALL)
    assert sleeps == [4]
    sleeps.clear()
    fake.fail_next(10, 502)
    with pytest.raises(ApiUnavailable, match="HTTP 502 \\(after 4 tries\\)"):
        await client.call("sarj-main", CALL)
    assert sleeps == [0.5, 1.0, 2.0]
    await client.aclose()


async def test_connection_errors_are_retried_and_the_key_travels_as_configured() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            raise httpx.ConnectError("refused")
        if len(seen) == 2:
            return httpx.Response(200, content=b"[1]")
        return httpx.Response(200, content=b"not json")

    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = SarjApi(SarjApiSettings(url="https://api.example.test/v1",
                                     auth_header="X-API-Key"),
                     {"s": "k1"}, transport=httpx.MockTransport(handler), sleep=sleep)
    with pytest.raises(ApiFailed, match="a JSON list, not an object"):
        await client.call("s", "call/../../admin")
    with pytest.raises(ApiFailed, match="not JSON"):
        await client.call("s", "c")
    assert seen[0].headers["x-api-key"] == "k1" and "authorization" not in seen[0].headers
    assert seen[1].url.raw_path == b"/v1/calls/call%2F..%2F..%2Fadmin"
    assert sleeps == [0.5]
    await client.aclose()


async def test_without_a_url_the_api_is_not_used() -> None:
    client = SarjApi(SarjApiSettings(), {"s": "k"})
    assert not client.enabled
    with pytest.raises(ApiFailed, match="HOOKSTREAM_SARJ_API_URL is empty"):
        await client.call("s", CALL)
    await client.aclose()


def test_settings_validation() -> None:
    SarjApiSettings().validate()
    SarjApiSettings(url="https://api.sarj.example", auth_header="X-API-Key").validate()
    for bad in ({"url": "api.sarj.example"}, {"auth_header": "Bad Header"},
                {"retries": -1}, {"timeout_s": 0}):
        with pytest.raises(ConfigError):
            SarjApiSettings(**bad).validate()  # type: ignore[arg-type]


def test_retry_after_forms() -> None:
    assert retry_after_s("3") == 3.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_the_detail_becomes_the_webhook_delivery() -> None:
    detail = complete_detail(CALL)
    body = orjson.loads(webhook_body(CALL, detail))
    assert body == {"call_id": CALL, "payload": detail}
    # An answer that is the whole envelope already is taken as it is.
    envelope = {"call_id": CALL, "payload": {"type": "no_answer"}}
    assert orjson.loads(webhook_body(CALL, envelope)) == envelope
    with pytest.raises(NotACallDetail, match="the answer is for"):
        webhook_body(CALL, {"call_id": "call_other", "payload": {"type": "failed"}})
    with pytest.raises(NotACallDetail, match="no payload type"):
        webhook_body(CALL, {"status": "in_progress"})
    assert recording_url(CALL, detail) is None  # the detail's is null
    assert recording_url(CALL, {"type": "no_answer"}) is None


def test_api_keys_come_from_the_sources_file(tmp_path: Path) -> None:
    path = tmp_path / "sources.toml"
    path.write_text("""
[sources.sarj-a]
provider = "sarj"
path_secret_env = "UNSET_PATH_SECRET"
api_key_env = "SARJ_A_KEY"
[sources.sarj-b]
provider = "sarj"
allow_cidrs = ["10.0.0.0/8"]
[sources.sawt]
provider = "sawt"
secret_env = "UNSET_SAWT_SECRET"
""")
    # Only api_key_env is read: the webhook secrets need not be set.
    assert load_api_keys(path, {"SARJ_A_KEY": "k"}) == {"sarj-a": "k"}
    with pytest.raises(ConfigError, match="SARJ_A_KEY is not set"):
        load_api_keys(path, {})
    with pytest.raises(ConfigError, match="placeholder"):
        load_api_keys(path, {"SARJ_A_KEY": "REPLACE_ME"})
    path.write_text('[sources.s]\nprovider = "sarj"\napi_key_env = 3\n')
    with pytest.raises(ConfigError, match="api_key_env must name"):
        load_api_keys(path, {})
