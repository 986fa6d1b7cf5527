"""Fuzzing the edge: every provider's verifier, and the webhook app, with arbitrary headers.

Property: for any header map (any names and values: huge digit strings, non-ASCII,
lone surrogates, empty, very long) and any body, a verifier answers accept or refuse
and never raises; through the ASGI app (fake publisher, no network) the answer is a
2xx or a 4xx, never a 5xx except the documented 503 "not stored".

The failures hypothesis found are kept as named ``@example`` regressions. The default
profile runs a bounded number of examples; ``HYPOTHESIS_PROFILE=long`` runs many more.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from typing import Any

import httpx
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from hookstream.core.config import KafkaSettings
from hookstream.core.sources import Source, parse_sources
from hookstream.ingest.app import build_app
from hookstream.ingest.settings import IngestSettings
from hookstream.providers.base import Verifier
from tests.support import ENV, PATH_SECRET, RAW_KEY_A, FakePublisher, std_headers

SOURCES_DOC: dict[str, Any] = {
    "defaults": {"max_body_bytes": 4096},
    "sources": {
        "saaya-main": {"provider": "saaya", "secrets_env": ["SAAYA_A", "SAAYA_B"]},
        "saaya-hex": {"provider": "saaya", "signature_scheme": "hex",
                      "secret_env": "SAAYA_HEX"},
        "sawt-main": {"provider": "sawt", "secret_env": "SAWT_SECRET"},
        "sawt-basic": {"provider": "sawt", "auth": "basic", "basic_user_env": "SAWT_USER",
                       "basic_password_env": "SAWT_PASSWORD"},
        "sawt-open": {"provider": "sawt", "auth": "none", "path_secret_env": "PATH_SECRET"},
        "sarj-main": {"provider": "sarj", "path_secret_env": "PATH_SECRET",
                      "allow_cidrs": ["127.0.0.0/8"]},
        "sarj-proxied": {"provider": "sarj", "allow_cidrs": ["203.0.113.0/24"],
                         "trusted_proxies": ["127.0.0.0/8"]},
        # Issue 13: the combined t=,v1= Saaya form, and a Sawt routing key from the
        # query or the path (auth "none" behind a path secret, so fuzzed requests
        # reach the routing key's extraction).
        "saaya-combined": {"provider": "saaya", "preset": "hex", "signature_form": "combined",
                           "signed_string": "timestamp.body",
                           "signature_header": "Saaya-Signature", "secret_env": "SAAYA_HEX"},
        "sawt-open-query": {"provider": "sawt", "auth": "none", "path_secret_env": "PATH_SECRET",
                            "routing_key_from": "query"},
        "sawt-open-path": {"provider": "sawt", "auth": "none", "path_secret_env": "PATH_SECRET",
                           "routing_key_from": "path"},
    },
}
SOURCES: dict[str, Source] = parse_sources(SOURCES_DOC, ENV)
SETTINGS = IngestSettings(body_timeout_s=1.0)
NOW = 1_700_000_000.0

# The names the verifiers and the app read, in any case, and arbitrary other ones.
KNOWN = ["webhook-id", "webhook-timestamp", "webhook-signature", "x-signature",
         "x-webhook-secret", "authorization", "content-type", "content-length",
         "x-forwarded-for", "x-routing-key", "saaya-signature"]
names = st.one_of(st.sampled_from(KNOWN), st.sampled_from(KNOWN).map(str.upper), st.text())
digits = st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n)
prefixed = st.sampled_from(["v1,", "sha256=", "Bearer ", "Basic ", "whsec_", "-", "+", " ",
                            "t=", f"t={int(NOW)},v1=", "v1=", ","])
values = st.one_of(
    st.text(),                                     # any code point, surrogates included
    st.text(alphabet=st.characters(max_codepoint=0xFF)),  # what latin-1 decoding gives
    digits,
    st.tuples(prefixed, st.text()).map("".join),
    st.text(min_size=5000, max_size=20000),
    st.just(""),
)
header_maps = st.dictionaries(names, values, max_size=12)
bodies = st.binary(max_size=2048)


def _verifiers() -> list[tuple[str, Verifier]]:
    return [(name, source.verifier) for name, source in SOURCES.items()]


@given(headers=header_maps, body=bodies, now=st.sampled_from([NOW, 0.0, 1e18, -1e18]))
@example(headers={"webhook-id": "msg_1", "webhook-timestamp": "9" * 309,
                  "webhook-signature": "v1,AAAA"}, body=b"{}", now=NOW).via(
    "OverflowError: a 309-digit webhook-timestamp (an unauthenticated 500)")
@example(headers={"authorization": "Basic \xe9"}, body=b"{}", now=NOW).via(
    "ValueError: non-ASCII Basic credentials reached base64 decoding")
@example(headers={"x-webhook-secret": "\ud800"}, body=b"", now=NOW).via(
    "UnicodeEncodeError: a lone surrogate in the shared-secret header")
@example(headers={"webhook-id": "\ud800", "webhook-timestamp": str(int(NOW)),
                  "webhook-signature": "v1,AAAA"}, body=b"", now=NOW).via(
    "UnicodeEncodeError: a lone surrogate in webhook-id")
@example(headers={"webhook-id": "m", "webhook-timestamp": str(int(NOW)),
                  "webhook-signature": "v1,\ud800"}, body=b"", now=NOW).via(
    "UnicodeEncodeError: a lone surrogate in webhook-signature")
@example(headers={"x-signature": "\ud800"}, body=b"", now=NOW).via(
    "UnicodeEncodeError: a lone surrogate in X-Signature")
@example(headers={"webhook-id": "m", "webhook-timestamp": "\u0661\u0662",
                  "webhook-signature": "v1,AAAA"}, body=b"", now=NOW).via(
    "int() accepts non-ASCII digits: the timestamp must be ASCII digits")
def test_every_verifier_accepts_or_refuses_and_never_raises(
        headers: dict[str, str], body: bytes, now: float) -> None:
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, verifier in _verifiers():
        result = verifier.verify(lowered, body, now)
        assert isinstance(result, bool), name
    # The same values as the app passes them: Starlette's Headers over latin-1 bytes.
    raw = [(k.lower().encode("latin-1", "replace"), v.encode("latin-1", "replace"))
           for k, v in headers.items()]
    starlette_headers = Headers(raw=raw)
    for name, verifier in _verifiers():
        assert isinstance(verifier.verify(starlette_headers, body, now), bool), name


@given(timestamp=st.one_of(digits, st.text()))
@example(timestamp="9" * 309)
@example(timestamp="1" * 20)
@example(timestamp=" 1700000000")
@example(timestamp="1_700_000_000")
def test_saaya_timestamp_out_of_bounds_is_refused(timestamp: str) -> None:
    verifier = SOURCES["saaya-main"].verifier
    headers = std_headers(RAW_KEY_A, "msg_1", timestamp, b"{}")
    # Correctly signed over whatever the timestamp says, but not a plausible time.
    assert verifier.verify(headers, b"{}", NOW) is False


def test_saaya_genuine_delivery_still_accepted() -> None:
    verifier = SOURCES["saaya-main"].verifier
    headers = std_headers(RAW_KEY_A, "msg_1", int(NOW), b"{}")
    assert verifier.verify(headers, b"{}", NOW) is True


# --- through the app ------------------------------------------------------------------

PATHS = ["/v1/webhooks/saaya-main", "/v1/webhooks/saaya-hex", "/v1/webhooks/saaya-combined",
         "/v1/webhooks/sawt-main",
         "/v1/webhooks/sawt-basic", f"/v1/webhooks/sawt-open/{PATH_SECRET}",
         f"/v1/webhooks/sarj-main/{PATH_SECRET}", "/v1/webhooks/sarj-proxied"]
# Header lines as they arrive on the wire: a token name, any bytes but CR, LF and NUL.
wire_names = st.one_of(
    st.sampled_from(KNOWN),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^_`|~", min_size=1,
            max_size=40))
wire_values = st.one_of(
    st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")
                                .replace(b"\x00", b"")),
    digits.map(str.encode),
    st.tuples(prefixed, st.text(alphabet=st.characters(max_codepoint=0xFF)))
    .map(lambda t: ("".join(t)).encode("latin-1")),
    st.sampled_from([b"\xb2", b"\xb9\xb2", b"application/json", b"1.5", b"-1", b""]),
)
wire_headers = st.lists(st.tuples(wire_names, wire_values), max_size=12)


async def _post(path: str, headers: list[tuple[bytes, bytes]], body: bytes,
                fake: FakePublisher) -> httpx.Response:
    app = build_app(SOURCES, SETTINGS, KafkaSettings(), publisher=fake)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        request = client.build_request("POST", path, content=body)
        fuzzed = [(k.encode(), v) for k, v in headers]
        # httpx's own lines, less a content-length when the fuzzed lines carry one.
        replaced = {k.lower() for k, _ in fuzzed} & {b"content-length"}
        own = [(k, v) for k, v in request.headers.raw if k.lower() not in replaced]
        request.headers = httpx.Headers(own + fuzzed)
        return await client.send(request)


def _fuzz_app(path: str, headers: list[tuple[str, bytes]], body: bytes,
              fail: str | None = None) -> httpx.Response:
    fake = FakePublisher(fail=fail)
    response = asyncio.run(_post(path, headers, body, fake))  # type: ignore[arg-type]
    status = response.status_code
    assert 200 <= status < 500 or (status == 503 and fail is not None), (status, response.text)
    if 200 <= status < 300:
        assert len(fake.calls) == 1
        record = dict(fake.calls[0].headers)
        for name in ("content-type", "hs-routing-key", "hs-event-id"):
            assert len(record.get(name, b"")) <= 256, name
    else:
        assert fake.calls == []
    return response


@given(path=st.sampled_from(PATHS), headers=wire_headers, body=bodies,
       fail=st.sampled_from([None, None, "ack_timeout"]))
@example(path="/v1/webhooks/saaya-main",
         headers=[("webhook-id", b"msg_1"), ("webhook-timestamp", b"9" * 309),
                  ("webhook-signature", b"v1,AAAA")], body=b"{}", fail=None).via(
    "OverflowError: the 309-digit webhook-timestamp answered 500")
@example(path="/v1/webhooks/sawt-basic", headers=[("authorization", b"Basic \xe9")],
         body=b"{}", fail=None).via("ValueError: non-ASCII Basic credentials answered 500")
@example(path="/v1/webhooks/sawt-main", headers=[("content-length", b"\xb2")],
         body=b"{}", fail=None).via("'\\xb2'.isdigit() but int() refuses it: a 500")
@example(path="/v1/webhooks/sawt-main", headers=[("content-length", b"9" * 5000)],
         body=b"{}", fail=None).via("int() refuses over 4300 digits: a 500")
def test_app_answers_2xx_or_4xx_never_5xx(path: str, headers: list[tuple[str, bytes]],
                                          body: bytes, fail: str | None) -> None:
    _fuzz_app(path, headers, body, fail)


@given(tail=st.text(max_size=400), query=st.text(max_size=400))
@example(tail="call.ended", query="routing_key=call.ended").via("the genuine shapes")
@example(tail="k" * 400, query="routing_key=" + "k" * 400).via("truncated, not refused")
@example(tail="\ud800", query="routing_key=%ED%A0%80").via("a lone surrogate")
@example(tail="a/b", query="routing_key=%FF&routing_key").via("extra segment; bad UTF-8")
def test_routing_key_from_query_or_path_never_raises(tail: str, query: str) -> None:
    for path in (f"/v1/webhooks/sawt-open-path/{PATH_SECRET}/"
                 + urllib.parse.quote(tail, safe="/", errors="replace"),
                 f"/v1/webhooks/sawt-open-query/{PATH_SECRET}?"
                 + urllib.parse.quote(query, safe="=&%+", errors="replace")):
        response = _fuzz_app(path, [("content-type", b"application/json")], b"{}")
        assert response.status_code in (202, 404), (path, response.status_code)


def test_long_content_type_is_truncated_on_the_record() -> None:
    content_type = b"application/json; charset=utf-8; x=" + b"a" * 5000
    secret = ENV["SAWT_SECRET"].encode()
    response = _fuzz_app("/v1/webhooks/sawt-main",
                         [("content-type", content_type), ("x-webhook-secret", secret)],
                         b'{"call_id":"c1"}')
    assert response.status_code == 202


def test_fuzz_properties_see_real_time() -> None:
    # Sanity: the signed-delivery path through the app is exercised, not only refusals.
    body = b'{"id":"e1"}'
    headers = std_headers(RAW_KEY_A, "msg_ok", int(time.time()), body)
    response = _fuzz_app("/v1/webhooks/saaya-main",
                         [(k, v.encode()) for k, v in headers.items()], body)
    assert response.status_code == 202
