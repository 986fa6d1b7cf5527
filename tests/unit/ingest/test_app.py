"""The ingest ASGI app, driven in-process through httpx's ASGITransport.

The publisher is a recording fake; no network, no Kafka.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import REGISTRY

from hookstream.core.config import KafkaSettings
from hookstream.core.sources import Source, parse_sources
from hookstream.ingest.app import MAX_HEADER_VALUE_CHARS, build_app
from hookstream.ingest.settings import IngestSettings
from tests.support import (
    BASIC_PASSWORD,
    BASIC_USER,
    ENV,
    PATH_SECRET,
    PATH_SECRET_OLD,
    PLAIN_B,
    RAW_KEY_A,
    SAWT_SECRET,
    FakePublisher,
    Published,
    basic,
    hex_signature,
    std_headers,
)

RAW_TOPIC = KafkaSettings().raw_topic
SMALL_LIMIT = 100

SOURCES_DOC = {
    "defaults": {"max_body_bytes": 4096},
    "sources": {
        "saaya-main": {"provider": "saaya", "secrets_env": ["SAAYA_A", "SAAYA_B"]},
        "saaya-hex": {"provider": "saaya", "signature_scheme": "hex", "secret_env": "SAAYA_HEX"},
        "sawt-main": {"provider": "sawt", "secret_env": "SAWT_SECRET",
                      "routing_key_header": "X-Routing-Key"},
        "sawt-basic": {"provider": "sawt", "auth": "basic", "basic_user_env": "SAWT_USER",
                       "basic_password_env": "SAWT_PASSWORD"},
        "sarj-main": {"provider": "sarj",
                      "path_secrets_env": ["PATH_SECRET", "PATH_SECRET_OLD"],
                      "allow_cidrs": ["127.0.0.0/8", "::1/128"]},
        "sarj-proxied": {"provider": "sarj", "allow_cidrs": ["203.0.113.0/24"],
                         "trusted_proxies": ["10.0.0.0/8"]},
        "sarj-small": {"provider": "sarj", "path_secret_env": "PATH_SECRET",
                       "max_body_bytes": SMALL_LIMIT},
        "sawt-strict": {"provider": "sawt", "secret_env": "SAWT_SECRET",
                        "allow_missing_content_type": False},
    },
}

SAAYA_BODY = b'{"id":"evt_saaya_1","type":"session.ended","data":{"session_id":"s1"}}'
SAWT_BODY = b'{"call_id":"sawt-call-1","status":"completed"}'
SARJ_BODY = b'{"call_id":"sarj-call-1","event":"call.completed"}'
JSON = {"Content-Type": "application/json"}
SETTINGS = IngestSettings(retry_after_s=7, body_timeout_s=0.5)


@pytest.fixture(scope="module")
def sources() -> dict[str, Source]:
    return parse_sources(SOURCES_DOC, ENV)


@pytest.fixture
def fake() -> FakePublisher:
    return FakePublisher()


def make_client(sources: dict[str, Source], fake: FakePublisher,
                peer: tuple[str, int] = ("127.0.0.1", 123),
                settings: IngestSettings = SETTINGS) -> httpx.AsyncClient:
    app = build_app(sources, settings, KafkaSettings(), publisher=fake)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=peer),
                             base_url="http://test")


@pytest.fixture
async def client(sources, fake) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(sources, fake) as c:
        yield c


def saaya_headers(body: bytes = SAAYA_BODY, msg_id: str = "msg_abc",
                  key: bytes = RAW_KEY_A) -> dict[str, str]:
    return {**JSON, **std_headers(key, msg_id, int(time.time()), body)}


def sawt_headers(**extra: str) -> dict[str, str]:
    return {**JSON, "X-Webhook-Secret": SAWT_SECRET, **extra}


def requests_count(source: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "hookstream_ingest_requests_total", {"source": source, "status": status})
    return value or 0.0


def assert_accepted(response: httpx.Response, fake: FakePublisher) -> Published:
    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert payload["status"] == "accepted"
    assert re.fullmatch(r"[0-9a-f]{32}", payload["receipt"])
    assert len(fake.calls) == 1
    call = fake.calls[0]
    assert call.topic == RAW_TOPIC
    assert call.header("hs-request-id") == payload["receipt"].encode()
    received = int(call.header("hs-received-at") or b"0")
    assert abs(received - time.time() * 1000) < 5000
    return call


# --- accepted deliveries ---------------------------------------------------------------


async def test_saaya_standard_webhooks_accepted(client, fake) -> None:
    before = requests_count("saaya-main", "202")
    response = await client.post("/v1/webhooks/saaya-main", content=SAAYA_BODY,
                                 headers=saaya_headers(msg_id="msg_abc"))
    call = assert_accepted(response, fake)
    assert call.value == SAAYA_BODY
    assert call.key == b"evt_saaya_1"
    assert call.header("hs-source") == b"saaya-main"
    assert call.header("hs-provider") == b"saaya"
    assert call.header("hs-event-id") == b"msg_abc"
    assert call.header("content-type") == b"application/json"
    assert call.header("hs-routing-key") is None
    assert set(call.header_names()) == {"hs-source", "hs-provider", "hs-received-at",
                                        "hs-request-id", "content-type", "hs-event-id"}
    assert requests_count("saaya-main", "202") == before + 1


async def test_saaya_rotated_secret_accepted(client, fake) -> None:
    response = await client.post("/v1/webhooks/saaya-main", content=SAAYA_BODY,
                                 headers=saaya_headers(key=PLAIN_B.encode()))
    assert_accepted(response, fake)


async def test_saaya_hex_accepted(client, fake) -> None:
    headers = {**JSON, "X-Signature": "sha256=" + hex_signature(b"hex-secret-value", SAAYA_BODY)}
    response = await client.post("/v1/webhooks/saaya-hex", content=SAAYA_BODY, headers=headers)
    call = assert_accepted(response, fake)
    assert call.key == b"evt_saaya_1"
    assert call.header("hs-event-id") is None  # no webhook-id header was sent


async def test_sawt_with_routing_key(client, fake) -> None:
    response = await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                 headers=sawt_headers(**{"X-Routing-Key": "call.completed"}))
    call = assert_accepted(response, fake)
    assert call.value == SAWT_BODY
    assert call.key == b"sawt-call-1"
    assert call.header("hs-source") == b"sawt-main"
    assert call.header("hs-provider") == b"sawt"
    assert call.header("hs-routing-key") == b"call.completed"
    assert call.header("hs-event-id") is None


async def test_sawt_without_routing_key(client, fake) -> None:
    response = await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                 headers=sawt_headers())
    call = assert_accepted(response, fake)
    assert call.header("hs-routing-key") is None
    assert "hs-routing-key" not in call.header_names()


async def test_x_hookstream_test_copied_as_hs_test(client, fake) -> None:
    """Our own smoke tests mark themselves; ingest copies the mark, never reads the body."""
    response = await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                 headers=sawt_headers(**{"X-Hookstream-Test": "True"}))
    call = assert_accepted(response, fake)
    assert call.header("hs-test") == b"1"
    assert call.value == SAWT_BODY


@pytest.mark.parametrize("value", ["0", "false", "no", ""])
async def test_other_x_hookstream_test_values_mark_nothing(client, fake, value: str) -> None:
    response = await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                 headers=sawt_headers(**{"X-Hookstream-Test": value}))
    call = assert_accepted(response, fake)
    assert "hs-test" not in call.header_names()


async def test_no_x_hookstream_test_header_no_hs_test(client, fake) -> None:
    response = await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                 headers=sawt_headers())
    assert "hs-test" not in assert_accepted(response, fake).header_names()


async def test_sawt_routing_key_truncated(client, fake) -> None:
    long_key = "k" * (MAX_HEADER_VALUE_CHARS + 50)
    response = await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                 headers=sawt_headers(**{"X-Routing-Key": long_key}))
    call = assert_accepted(response, fake)
    assert call.header("hs-routing-key") == b"k" * MAX_HEADER_VALUE_CHARS


async def test_content_type_truncated_like_other_copied_headers(client, fake) -> None:
    content_type = "application/json; charset=utf-8; x=" + "a" * 5000
    response = await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                 headers={**sawt_headers(), "Content-Type": content_type})
    call = assert_accepted(response, fake)
    assert call.header("content-type") == content_type[:MAX_HEADER_VALUE_CHARS].encode()


async def test_sawt_bearer_and_basic(client, fake) -> None:
    r1 = await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                           headers={**JSON, "X-Webhook-Secret": f"Bearer {SAWT_SECRET}"})
    assert r1.status_code == 202
    r2 = await client.post("/v1/webhooks/sawt-basic", content=SAWT_BODY,
                           headers={**JSON, "Authorization": basic(BASIC_USER, BASIC_PASSWORD)})
    assert r2.status_code == 202
    assert [c.header("hs-source") for c in fake.calls] == [b"sawt-main", b"sawt-basic"]
    r3 = await client.post("/v1/webhooks/sawt-basic", content=SAWT_BODY,
                           headers={**JSON, "Authorization": basic(BASIC_USER, "wrong")})
    assert r3.status_code == 401
    assert len(fake.calls) == 2


async def test_sarj_path_secret_accepted(client, fake) -> None:
    response = await client.post(f"/v1/webhooks/sarj-main/{PATH_SECRET}", content=SARJ_BODY,
                                 headers=JSON)
    call = assert_accepted(response, fake)
    assert call.value == SARJ_BODY
    assert call.key == b"sarj-call-1"
    assert call.header("hs-provider") == b"sarj"
    assert call.header("hs-event-id") is None and call.header("hs-routing-key") is None


async def test_sarj_rotated_path_secret_accepted(client, fake) -> None:
    response = await client.post(f"/v1/webhooks/sarj-main/{PATH_SECRET_OLD}",
                                 content=SARJ_BODY, headers=JSON)
    assert_accepted(response, fake)


async def test_malformed_json_from_authenticated_source_accepted(client, fake) -> None:
    body = b'{"call_id": "unterminated'
    response = await client.post("/v1/webhooks/sawt-main", content=body, headers=sawt_headers())
    call = assert_accepted(response, fake)
    assert call.value == body
    assert call.key is None


async def test_body_bytes_passed_through_exactly(client, fake) -> None:
    # Whitespace, key order, unicode escapes and raw UTF-8 are preserved byte for byte.
    body = b'{ "z":1,\n  "call_id" : "c\\u00e9-\xc3\xa9" ,"a":[ ]}\r\n'
    response = await client.post("/v1/webhooks/sawt-main", content=body, headers=sawt_headers())
    call = assert_accepted(response, fake)
    assert call.value == body
    assert call.key == "cé-é".encode()


async def test_charset_content_type_accepted(client, fake) -> None:
    response = await client.post(
        "/v1/webhooks/sawt-main", content=SAWT_BODY,
        headers={**sawt_headers(), "Content-Type": "application/json; charset=utf-8"})
    call = assert_accepted(response, fake)
    assert call.header("content-type") == b"application/json; charset=utf-8"


async def test_missing_content_type_accepted_by_default(client, fake) -> None:
    response = await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                 headers={"X-Webhook-Secret": SAWT_SECRET})
    call = assert_accepted(response, fake)
    assert "content-type" not in call.header_names()


async def test_missing_content_type_rejected_when_configured(client, fake) -> None:
    response = await client.post("/v1/webhooks/sawt-strict", content=SAWT_BODY,
                                 headers={"X-Webhook-Secret": SAWT_SECRET})
    assert response.status_code == 415
    assert fake.calls == []


# --- refused deliveries ------------------------------------------------------------


async def test_unknown_source_404(client, fake) -> None:
    before = requests_count("unknown", "404")
    response = await client.post("/v1/webhooks/nope", content=SAWT_BODY, headers=sawt_headers())
    assert response.status_code == 404
    assert response.json() == {"error": "unknown source"}
    assert fake.calls == []
    assert requests_count("unknown", "404") == before + 1


async def test_unmatched_path_404_json(client) -> None:
    response = await client.post("/v2/elsewhere", content=b"{}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "not found"}


async def test_get_on_webhook_path_405(client, fake) -> None:
    response = await client.get("/v1/webhooks/sawt-main")
    assert response.status_code == 405
    assert "POST" in response.headers.get("allow", "")
    assert response.json()["error"] == "method not allowed"
    response = await client.get(f"/v1/webhooks/sarj-main/{PATH_SECRET}")
    assert response.status_code == 405
    assert fake.calls == []


async def test_unsupported_content_type_415(client, fake) -> None:
    response = await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                 headers={**sawt_headers(), "Content-Type": "text/html"})
    assert response.status_code == 415
    assert response.json() == {"error": "unsupported content type"}
    assert fake.calls == []


async def test_bad_signature_401(client, fake) -> None:
    headers = saaya_headers(key=b"wrong-key")
    response = await client.post("/v1/webhooks/saaya-main", content=SAAYA_BODY, headers=headers)
    assert response.status_code == 401
    assert fake.calls == []


async def test_tampered_body_401(client, fake) -> None:
    headers = saaya_headers(SAAYA_BODY)
    response = await client.post("/v1/webhooks/saaya-main", content=SAAYA_BODY + b" ",
                                 headers=headers)
    assert response.status_code == 401
    assert fake.calls == []


async def test_stale_timestamp_401(client, fake) -> None:
    headers = {**JSON, **std_headers(RAW_KEY_A, "m", int(time.time()) - 3600, SAAYA_BODY)}
    response = await client.post("/v1/webhooks/saaya-main", content=SAAYA_BODY, headers=headers)
    assert response.status_code == 401
    assert fake.calls == []


async def test_401_body_does_not_say_which_check_failed(client, fake) -> None:
    wrong_path = await client.post("/v1/webhooks/sarj-main/" + "w" * 40, content=SARJ_BODY,
                                   headers=JSON)
    missing_path = await client.post("/v1/webhooks/sarj-main", content=SARJ_BODY, headers=JSON)
    wrong_sig = await client.post("/v1/webhooks/saaya-main", content=SAAYA_BODY,
                                  headers=saaya_headers(key=b"wrong"))
    missing_sig = await client.post("/v1/webhooks/saaya-main", content=SAAYA_BODY, headers=JSON)
    wrong_secret = await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                     headers={**JSON, "X-Webhook-Secret": "nope"})
    responses = [wrong_path, missing_path, wrong_sig, missing_sig, wrong_secret]
    assert [r.status_code for r in responses] == [401] * 5
    assert {r.content for r in responses} == {b'{"error":"unauthorized"}'}
    for r in responses:
        assert "www-authenticate" not in r.headers
        assert not re.search(r"signature|secret|path|timestamp|network|address", r.text, re.I)
    assert fake.calls == []


async def test_path_secret_on_source_without_one_401(client, fake) -> None:
    response = await client.post("/v1/webhooks/sawt-main/" + "x" * 30, content=SAWT_BODY,
                                 headers=sawt_headers())
    assert response.status_code == 401
    assert fake.calls == []


# --- network allow-lists through the app ----------------------------------------------


async def test_allow_list_direct_peer(sources, fake) -> None:
    async with make_client(sources, fake, peer=("198.51.100.7", 4000)) as c:
        response = await c.post(f"/v1/webhooks/sarj-main/{PATH_SECRET}", content=SARJ_BODY,
                                headers=JSON)
    assert response.status_code == 401
    async with make_client(sources, fake, peer=("::1", 4000)) as c:
        response = await c.post(f"/v1/webhooks/sarj-main/{PATH_SECRET}", content=SARJ_BODY,
                                headers=JSON)
    assert response.status_code == 202
    assert len(fake.calls) == 1


async def test_xff_from_trusted_proxy(sources, fake) -> None:
    async with make_client(sources, fake, peer=("10.1.2.3", 4000)) as c:
        ok = await c.post("/v1/webhooks/sarj-proxied", content=SARJ_BODY,
                          headers={**JSON, "X-Forwarded-For": "203.0.113.9"})
        hops = await c.post("/v1/webhooks/sarj-proxied", content=SARJ_BODY,
                            headers={**JSON, "X-Forwarded-For": "203.0.113.9, 10.5.5.5"})
        spoofed = await c.post("/v1/webhooks/sarj-proxied", content=SARJ_BODY,
                               headers={**JSON, "X-Forwarded-For": "203.0.113.9, 198.51.100.7"})
        malformed = await c.post("/v1/webhooks/sarj-proxied", content=SARJ_BODY,
                                 headers={**JSON, "X-Forwarded-For": "203.0.113.9, bogus"})
        bare = await c.post("/v1/webhooks/sarj-proxied", content=SARJ_BODY, headers=JSON)
    assert [r.status_code for r in (ok, hops, spoofed, malformed, bare)] == [
        202, 202, 401, 401, 401]
    assert len(fake.calls) == 2


async def test_xff_from_untrusted_peer_ignored(sources, fake) -> None:
    async with make_client(sources, fake, peer=("198.51.100.7", 4000)) as c:
        response = await c.post("/v1/webhooks/sarj-proxied", content=SARJ_BODY,
                                headers={**JSON, "X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 401
    async with make_client(sources, fake, peer=("203.0.113.50", 4000)) as c:
        response = await c.post("/v1/webhooks/sarj-proxied", content=SARJ_BODY,
                                headers={**JSON, "X-Forwarded-For": "198.51.100.7"})
    assert response.status_code == 202


async def test_xff_split_over_several_header_lines(sources, fake) -> None:
    async with make_client(sources, fake, peer=("10.1.2.3", 4000)) as c:
        response = await c.post(
            "/v1/webhooks/sarj-proxied", content=SARJ_BODY,
            headers=[("Content-Type", "application/json"),
                     ("X-Forwarded-For", "203.0.113.9"),      # written by the client
                     ("X-Forwarded-For", "198.51.100.7")])    # appended by the proxy
    assert response.status_code == 401


# --- body size -----------------------------------------------------------------------


async def test_declared_content_length_over_limit_413(client, fake) -> None:
    body = b'{"call_id":"x","pad":"' + b"a" * SMALL_LIMIT + b'"}'
    response = await client.post(f"/v1/webhooks/sarj-small/{PATH_SECRET}", content=body,
                                 headers=JSON)
    assert response.status_code == 413
    assert response.json() == {"error": "body too large"}
    assert fake.calls == []


async def test_body_exactly_at_limit_accepted(client, fake) -> None:
    body = b'{"call_id":"x","pad":"' + b"a" * (SMALL_LIMIT - 24) + b'"}'
    assert len(body) == SMALL_LIMIT
    response = await client.post(f"/v1/webhooks/sarj-small/{PATH_SECRET}", content=body,
                                 headers=JSON)
    assert response.status_code == 202
    assert fake.calls[0].value == body


async def test_declared_length_over_limit_reads_no_body(client, fake) -> None:
    yielded = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal yielded
        for _ in range(50):
            yielded += 1
            yield b"a" * 10

    response = await client.post(f"/v1/webhooks/sarj-small/{PATH_SECRET}", content=stream(),
                                 headers={**JSON, "Content-Length": "500"})
    assert response.status_code == 413
    assert yielded == 0
    assert fake.calls == []


async def test_streamed_chunked_body_over_limit_413_without_reading_it_all(client, fake) -> None:
    yielded = 0
    total_chunks = 1000

    async def stream() -> AsyncIterator[bytes]:
        nonlocal yielded
        for _ in range(total_chunks):
            yielded += 1
            yield b"a" * 32

    request = client.build_request("POST", f"/v1/webhooks/sarj-small/{PATH_SECRET}",
                                   content=stream(), headers=JSON)
    assert "content-length" not in request.headers
    assert request.headers.get("transfer-encoding") == "chunked"
    response = await client.send(request)
    assert response.status_code == 413
    assert response.json() == {"error": "body too large"}
    # 100 bytes is exceeded by the 4th chunk of 32; nothing much past that is read.
    assert 4 <= yielded <= 5
    assert fake.calls == []


async def test_streamed_chunked_body_within_limit_accepted(client, fake) -> None:
    parts = [b'{"call_id":', b'"chunked-1"', b"}"]

    async def stream() -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    response = await client.post(f"/v1/webhooks/sarj-small/{PATH_SECRET}", content=stream(),
                                 headers=JSON)
    assert response.status_code == 202
    assert fake.calls[0].value == b"".join(parts)
    assert fake.calls[0].key == b"chunked-1"


async def test_body_over_limit_not_read_for_unauthorized_path(client, fake) -> None:
    yielded = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal yielded
        for _ in range(10):
            yielded += 1
            yield b"a"

    response = await client.post("/v1/webhooks/sarj-small/" + "w" * 30, content=stream(),
                                 headers=JSON)
    assert response.status_code == 401
    assert yielded == 0


async def test_invalid_content_length_400(client, fake) -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield SAWT_BODY

    response = await client.post("/v1/webhooks/sawt-main", content=stream(),
                                 headers={**sawt_headers(), "Content-Length": "12abc"})
    assert response.status_code == 400
    assert fake.calls == []


async def test_slow_body_408(sources, fake) -> None:
    settings = IngestSettings(body_timeout_s=0.2)

    async def stream() -> AsyncIterator[bytes]:
        yield b'{"call_id":'
        await asyncio.sleep(5)
        yield b'"late"}'

    async with make_client(sources, fake, settings=settings) as c:
        started = time.monotonic()
        response = await c.post("/v1/webhooks/sawt-main", content=stream(),
                                headers=sawt_headers())
        elapsed = time.monotonic() - started
    assert response.status_code == 408
    assert elapsed < 2
    assert fake.calls == []


# --- the publisher refuses -----------------------------------------------------------


@pytest.mark.parametrize("reason", ["ack_timeout", "overloaded", "not_connected", "kafka_error"])
async def test_not_stored_503_with_retry_after(sources, reason: str) -> None:
    fake = FakePublisher(fail=reason)
    metric = REGISTRY.get_sample_value("hookstream_ingest_produce_failures_total",
                                       {"source": "sawt-main", "reason": reason}) or 0.0
    async with make_client(sources, fake) as c:
        response = await c.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                headers=sawt_headers())
    assert response.status_code == 503
    assert not 200 <= response.status_code < 300
    assert response.headers["retry-after"] == "7"
    assert response.json() == {"error": "not stored, retry later"}
    assert "receipt" not in response.text
    assert fake.calls == []
    assert REGISTRY.get_sample_value("hookstream_ingest_produce_failures_total",
                                     {"source": "sawt-main", "reason": reason}) == metric + 1


# --- health, readiness, metrics, lifespan ----------------------------------------------


def make_admin_client(sources: dict[str, Source], fake: FakePublisher) -> httpx.AsyncClient:
    """The admin listener's app (/healthz, /readyz, /metrics), as main serves it."""
    app = build_app(sources, SETTINGS, KafkaSettings(), publisher=fake)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app.admin),
                             base_url="http://admin")


@pytest.fixture
async def admin(sources, fake) -> AsyncIterator[httpx.AsyncClient]:
    async with make_admin_client(sources, fake) as c:
        yield c


async def test_healthz(client, admin) -> None:
    for c in (client, admin):  # public too: a load balancer in front health-checks there
        response = await c.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


async def test_readyz_and_metrics_are_not_on_the_public_port(client) -> None:
    for path in ("/readyz", "/metrics"):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert response.json() == {"error": "not found"}
        assert "hookstream_ingest" not in response.text


async def test_readyz_follows_publisher(admin, fake) -> None:
    fake.set_ready(False)
    response = await admin.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not ready", "failing": ["kafka_producer"]}
    fake.set_ready(True)
    response = await admin.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_healthz_ok_even_when_not_ready(sources) -> None:
    async with make_admin_client(sources, FakePublisher(ready=False)) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 503


async def test_admin_app_serves_no_webhooks(admin, fake) -> None:
    response = await admin.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                headers=sawt_headers())
    assert response.status_code == 404
    assert fake.calls == []


async def test_metrics_exposition(client, admin, fake) -> None:
    await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY, headers=sawt_headers())
    response = await admin.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "hookstream_ingest_requests_total" in text
    assert re.search(r'hookstream_ingest_requests_total\{source="sawt-main",status="202"\} \d',
                     text)
    assert "hookstream_ingest_ack_latency_seconds_bucket" in text


async def test_lifespan_starts_and_stops_publisher(sources, fake) -> None:
    settings = IngestSettings(shutdown_timeout_s=3.5)
    app = build_app(sources, settings, KafkaSettings(), publisher=fake)  # type: ignore[arg-type]
    assert app.state.publisher is fake
    async with app.router.lifespan_context(app):
        assert fake.started == 1 and fake.stopped == []
    assert fake.stopped == [3.5]


# --- answered in time: shed when behind, a deadline from the head ---------------------

def failures(source: str, reason: str) -> float:
    return REGISTRY.get_sample_value("hookstream_ingest_produce_failures_total",
                                     {"source": source, "reason": reason}) or 0.0


def with_head_parsed(app: object, seconds_ago: float) -> object:
    """The app as served by ingest's edge protocol, which stamps when the head was
    parsed: here ``seconds_ago`` (a request that waited that long for the loop)."""
    from hookstream.ingest.edge import HEAD_AT

    async def stamped(scope, receive, send):  # type: ignore[no-untyped-def]
        scope[HEAD_AT] = asyncio.get_running_loop().time() - seconds_ago
        await app(scope, receive, send)  # type: ignore[operator]

    return stamped


async def test_a_request_that_waited_for_the_loop_is_shed_before_its_body(sources, fake
                                                                          ) -> None:
    settings = IngestSettings(retry_after_s=7, shed_queued_s=2.0)
    app = build_app(sources, settings, KafkaSettings(), publisher=fake)  # type: ignore[arg-type]
    before = failures("sawt-main", "shed_queued")
    for waited, expected in ((3.0, 503), (0.5, 202)):
        transport = httpx.ASGITransport(app=with_head_parsed(app, waited),  # type: ignore[arg-type]
                                        client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                         headers=sawt_headers())
        assert response.status_code == expected, (waited, response.text)
        if expected == 503:
            assert response.headers["retry-after"] == "7"
            assert response.json() == {"error": "overloaded, retry later"}
    assert failures("sawt-main", "shed_queued") == before + 1
    assert len(fake.calls) == 1  # only the one that had not waited long


class HangingPublisher(FakePublisher):
    async def publish(self, topic: str, value: bytes, key: bytes | None,
                      headers: list[tuple[str, bytes]]) -> None:
        await asyncio.sleep(30)  # a broker (and spool) that never answers


async def test_every_request_is_answered_within_its_deadline(sources) -> None:
    settings = IngestSettings(retry_after_s=7, answer_within_s=0.4)
    app = build_app(sources, settings, KafkaSettings(),
                    publisher=HangingPublisher())  # type: ignore[arg-type]
    before = failures("sawt-main", "deadline")
    transport = httpx.ASGITransport(app=with_head_parsed(app, 0.1),  # type: ignore[arg-type]
                                    client=("127.0.0.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        started = time.monotonic()
        response = await client.post("/v1/webhooks/sawt-main", content=SAWT_BODY,
                                     headers=sawt_headers())
        elapsed = time.monotonic() - started
    assert response.status_code == 503 and response.headers["retry-after"] == "7"
    assert elapsed < 0.4  # the 0.1 s already waited counts against the 0.4 s
    assert failures("sawt-main", "deadline") == before + 1
