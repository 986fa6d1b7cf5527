"""Where Sawt's routing key travels (issue 13, item 5): a header (the default, as
before), a query parameter, a path segment after the path secret, or a fixed value
per source. Configuration, the URL split, and the ingest app with a recording fake
publisher (no network, no Kafka).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hookstream.cli import signed_request
from hookstream.core.config import ConfigError, KafkaSettings
from hookstream.core.sources import Source, parse_sources
from hookstream.devtools.samples import Sample
from hookstream.ingest.app import MAX_HEADER_VALUE_CHARS, build_app
from hookstream.ingest.settings import IngestSettings
from hookstream.providers import base
from tests.support import (
    ENV,
    PATH_SECRET,
    PATH_SECRET_OLD,
    SAWT_SECRET,
    FakePublisher,
    source,
)

BODY = b'{"call_id":"sawt-call-1","call_status":"FINISHED"}'
AUTH = {"Content-Type": "application/json", "X-Webhook-Secret": SAWT_SECRET}
SECRET = {"provider": "sawt", "secret_env": "SAWT_SECRET"}

SOURCES_DOC: dict[str, Any] = {"sources": {
    "sawt-header": {**SECRET},
    "sawt-query": {**SECRET, "routing_key_from": "query"},
    "sawt-query-named": {**SECRET, "routing_key_from": "query", "routing_key_param": "event"},
    "sawt-path": {**SECRET, "routing_key_from": "path",
                  "path_secrets_env": ["PATH_SECRET", "PATH_SECRET_OLD"]},
    "sawt-path-only": {**SECRET, "routing_key_from": "path"},
    "sawt-fixed": {**SECRET, "routing_key_from": "fixed", "routing_key": "call.analyzed"},
    "sawt-header-secret": {**SECRET, "path_secret_env": "PATH_SECRET"},
}}


@pytest.fixture(scope="module")
def sources() -> dict[str, Source]:
    return parse_sources(SOURCES_DOC, ENV)


@pytest.fixture
def fake() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
async def client(sources: dict[str, Source], fake: FakePublisher
                 ) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(sources, IngestSettings(), KafkaSettings(),
                    publisher=fake)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as c:
        yield c


async def post(client: httpx.AsyncClient, path: str,
               headers: dict[str, str] | None = None) -> httpx.Response:
    return await client.post(path, content=BODY, headers={**AUTH, **(headers or {})})


def recorded(fake: FakePublisher) -> bytes | None:
    assert len(fake.calls) == 1, fake.calls
    return fake.calls[0].header("hs-routing-key")


# --- configuration -----------------------------------------------------------------


def test_header_is_the_default_place_as_before() -> None:
    src = source("s", **SECRET)
    assert (src.routing_key_from, src.routing_key_header, src.routing_key_param,
            src.routing_key_value) == ("header", "X-Routing-Key", None, None)


def test_each_place_and_its_defaults(sources: dict[str, Source]) -> None:
    got = {name: (s.routing_key_from, s.routing_key_header, s.routing_key_param,
                  s.routing_key_value) for name, s in sources.items()}
    assert got == {
        "sawt-header": ("header", "X-Routing-Key", None, None),
        "sawt-query": ("query", None, "routing_key", None),
        "sawt-query-named": ("query", None, "event", None),
        "sawt-path": ("path", None, None, None),
        "sawt-path-only": ("path", None, None, None),
        "sawt-fixed": ("fixed", None, None, "call.analyzed"),
        "sawt-header-secret": ("header", "X-Routing-Key", None, None),
    }


@pytest.mark.parametrize(("table", "match"), [
    ({"routing_key_from": "body"},
     r"routing_key_from must be one of \['header', 'query', 'path', 'fixed'\], got 'body'"),
    ({"routing_key_from": "fixed"}, 'routing_key_from = "fixed" needs routing_key'),
    ({"routing_key_from": "fixed", "routing_key": ""}, "needs routing_key"),
    ({"routing_key_from": "fixed", "routing_key": " call.ended"}, "needs routing_key"),
    ({"routing_key_from": "fixed", "routing_key": "call.énded"}, "needs routing_key"),
    ({"routing_key_from": "fixed", "routing_key": "k" * 257}, "at most 256 characters"),
    ({"routing_key_from": "fixed", "routing_key": 7}, "needs routing_key"),
    ({"routing_key": "call.ended"}, 'routing_key applies only with routing_key_from = "fixed"'),
    ({"routing_key_from": "query", "routing_key_header": "X-Event"},
     'routing_key_header applies only with routing_key_from = "header"'),
    ({"routing_key_from": "path", "routing_key_param": "event"},
     'routing_key_param applies only with routing_key_from = "query"'),
    ({"routing_key_from": "query", "routing_key_param": "a b"},
     "routing_key_param must be a query parameter name"),
    ({"routing_key_from": "query", "routing_key_param": ""}, "routing_key_param must be"),
    ({"routing_key_header": "X Routing"}, "routing_key_header must be an HTTP header name"),
])
def test_bad_routing_key_settings_stop_start_up(table: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        source("s", **SECRET, **table)
    assert "source 's'" in str(caught.value)


def test_split_path_by_position(sources: dict[str, Source]) -> None:
    path, path_only = sources["sawt-path"], sources["sawt-path-only"]
    header, header_secret = sources["sawt-header"], sources["sawt-header-secret"]
    assert path.split_path(["sec", "call.ended"]) == ("sec", "call.ended")
    assert path.split_path(["sec"]) == ("sec", None)
    assert path.split_path([]) == (None, None)
    assert path.split_path(["sec", "call.ended", "x"]) is None
    assert path_only.split_path(["call.ended"]) == (None, "call.ended")
    assert path_only.split_path(["sec", "call.ended"]) is None
    # Sources that do not take the key from the path: exactly as before.
    assert header.split_path([]) == (None, None)
    assert header.split_path(["call.ended"]) == ("call.ended", None)  # then 401
    assert header_secret.split_path(["sec"]) == ("sec", None)
    assert header_secret.split_path(["sec", "call.ended"]) is None


def test_url_path_and_headers_put_the_key_where_the_source_takes_it(
        sources: dict[str, Source]) -> None:
    def target(name: str) -> tuple[str, dict[str, str], str | None]:
        s = sources[name]
        return (s.url_path("call.ended"), s.routing_key_headers("call.ended"),
                s.recorded_routing_key("call.ended"))

    assert target("sawt-header") == ("/v1/webhooks/sawt-header",
                                     {"X-Routing-Key": "call.ended"}, "call.ended")
    assert target("sawt-query") == ("/v1/webhooks/sawt-query?routing_key=call.ended", {},
                                    "call.ended")
    assert target("sawt-query-named") == ("/v1/webhooks/sawt-query-named?event=call.ended",
                                          {}, "call.ended")
    assert target("sawt-path") == (f"/v1/webhooks/sawt-path/{PATH_SECRET}/call.ended", {},
                                   "call.ended")
    assert target("sawt-path-only") == ("/v1/webhooks/sawt-path-only/call.ended", {},
                                        "call.ended")
    assert target("sawt-fixed") == ("/v1/webhooks/sawt-fixed", {}, "call.analyzed")
    assert sources["sawt-path"].url_path() == f"/v1/webhooks/sawt-path/{PATH_SECRET}"


# --- through the ingest app --------------------------------------------------------


@pytest.mark.parametrize(("name", "expected_path"), [
    ("sawt-header", "/v1/webhooks/sawt-header"),
    ("sawt-query", "/v1/webhooks/sawt-query?routing_key=call.ended"),
    ("sawt-query-named", "/v1/webhooks/sawt-query-named?event=call.ended"),
    ("sawt-path", f"/v1/webhooks/sawt-path/{PATH_SECRET}/call.ended"),
    ("sawt-path-only", "/v1/webhooks/sawt-path-only/call.ended"),
])
async def test_signed_request_lands_with_its_routing_key(
        client: httpx.AsyncClient, fake: FakePublisher, sources: dict[str, Source],
        name: str, expected_path: str) -> None:
    path, headers = signed_request(sources[name], Sample("sawt", "call.ended", "x", BODY),
                                   0.0, "m")
    assert path == expected_path
    response = await client.post(path, content=BODY, headers=headers)
    assert response.status_code == 202, response.text
    assert recorded(fake) == b"call.ended"
    assert fake.calls[0].header("hs-source") == name.encode()
    assert fake.calls[0].value == BODY


async def test_fixed_key_is_recorded_whatever_the_request_says(
        client: httpx.AsyncClient, fake: FakePublisher) -> None:
    response = await post(client, "/v1/webhooks/sawt-fixed?routing_key=call.ended",
                          {"X-Routing-Key": "call.started"})
    assert response.status_code == 202
    assert recorded(fake) == b"call.analyzed"


async def test_other_places_are_not_read(client: httpx.AsyncClient,
                                         fake: FakePublisher) -> None:
    # A query source ignores the header; a header source ignores the query.
    assert (await post(client, "/v1/webhooks/sawt-query",
                       {"X-Routing-Key": "call.started"})).status_code == 202
    assert (await post(client, "/v1/webhooks/sawt-header?routing_key=call.ended")
            ).status_code == 202
    assert [c.header("hs-routing-key") for c in fake.calls] == [None, None]


async def test_path_key_after_the_rotated_secret(client: httpx.AsyncClient,
                                                 fake: FakePublisher) -> None:
    response = await post(client, f"/v1/webhooks/sawt-path/{PATH_SECRET_OLD}/call.started")
    assert response.status_code == 202
    assert recorded(fake) == b"call.started"


async def test_path_source_without_key_segment_is_accepted_and_inferred_later(
        client: httpx.AsyncClient, fake: FakePublisher) -> None:
    assert (await post(client, f"/v1/webhooks/sawt-path/{PATH_SECRET}")).status_code == 202
    assert (await post(client, f"/v1/webhooks/sawt-path/{PATH_SECRET}/")).status_code == 202
    assert (await post(client, "/v1/webhooks/sawt-query?routing_key=")).status_code == 202
    assert [c.header("hs-routing-key") for c in fake.calls] == [None, None, None]


@pytest.mark.parametrize("path", [
    "/v1/webhooks/sawt-path/" + "x" * len(PATH_SECRET) + "/call.ended",  # wrong secret
    f"/v1/webhooks/sawt-path/{PATH_SECRET[:-1]}/call.ended",
    "/v1/webhooks/sawt-path/call.ended",  # the key alone is no secret
    "/v1/webhooks/sawt-path",
    "/v1/webhooks/sawt-header/call.ended",  # a header source without path secret: as before
])
async def test_wrong_or_missing_path_secret_with_a_key_segment_is_401(
        client: httpx.AsyncClient, fake: FakePublisher, path: str) -> None:
    response = await post(client, path)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    assert fake.calls == []


@pytest.mark.parametrize("path", [
    f"/v1/webhooks/sawt-path/{PATH_SECRET}/call.ended/extra",
    "/v1/webhooks/sawt-path-only/x/call.ended",
    f"/v1/webhooks/sawt-header-secret/{PATH_SECRET}/call.ended",  # not a path-key source
])
async def test_more_segments_than_the_source_takes_is_404(
        client: httpx.AsyncClient, fake: FakePublisher, path: str) -> None:
    assert (await post(client, path)).status_code == 404
    assert fake.calls == []


async def test_wrong_credential_with_a_good_path_and_key_is_401(
        client: httpx.AsyncClient, fake: FakePublisher) -> None:
    response = await client.post(f"/v1/webhooks/sawt-path/{PATH_SECRET}/call.ended",
                                 content=BODY, headers={"X-Webhook-Secret": "nope"})
    assert response.status_code == 401
    assert fake.calls == []


async def test_path_secret_compared_in_constant_time_against_every_secret(
        client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = base.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(base.hmac, "compare_digest", spy)
    wrong = "w" * len(PATH_SECRET)
    assert (await post(client, f"/v1/webhooks/sawt-path/{wrong}/call.ended")).status_code == 401
    # The wrong secret, never the routing key, against both rotated secrets: no early exit.
    assert compared == [(wrong.encode(), PATH_SECRET.encode()),
                        (wrong.encode(), PATH_SECRET_OLD.encode())]


async def test_key_limits_are_those_of_a_copied_header(client: httpx.AsyncClient,
                                                       fake: FakePublisher) -> None:
    long_key = "k" * (MAX_HEADER_VALUE_CHARS + 50)
    await post(client, f"/v1/webhooks/sawt-query?routing_key={long_key}")
    await post(client, f"/v1/webhooks/sawt-path-only/{long_key}")
    await post(client, "/v1/webhooks/sawt-query?routing_key=call.%C3%A9nded")  # not ASCII
    await post(client, "/v1/webhooks/sawt-path-only/call.%C3%A9nded")
    assert [c.header("hs-routing-key") for c in fake.calls] == [
        b"k" * MAX_HEADER_VALUE_CHARS, b"k" * MAX_HEADER_VALUE_CHARS, None, None]


async def test_query_value_is_percent_decoded_and_first_wins(client: httpx.AsyncClient,
                                                             fake: FakePublisher) -> None:
    await post(client, "/v1/webhooks/sawt-query?x=1&routing_key=call%2Eended&routing_key=b")
    await post(client, "/v1/webhooks/sawt-query-named?routing_key=a&event=tool.function.failed")
    await post(client, "/v1/webhooks/sawt-query?routing_keyX=a&routing_key")
    assert [c.header("hs-routing-key") for c in fake.calls] == [
        b"call.ended", b"tool.function.failed", None]


async def test_the_body_is_never_read_for_the_key(client: httpx.AsyncClient,
                                                  fake: FakePublisher) -> None:
    body = b'{"call_id":"c","routing_key":"call.ended","event":"call.ended"}'
    for path in ("/v1/webhooks/sawt-query", "/v1/webhooks/sawt-path-only"):
        assert (await client.post(path, content=body, headers=AUTH)).status_code == 202
    assert [c.header("hs-routing-key") for c in fake.calls] == [None, None]


def test_check_config_prints_where_each_source_takes_its_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from hookstream.ingest import main as ingest_main

    path = tmp_path / "sources.toml"
    path.write_text("\n".join(
        [f"[sources.{name}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in table.items())
         for name, table in SOURCES_DOC["sources"].items()]))
    for var in ("SAWT_SECRET", "PATH_SECRET", "PATH_SECRET_OLD"):
        monkeypatch.setenv(var, ENV[var])
    assert ingest_main.main(["--check-config", "--sources", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "sawt-fixed: provider=sawt POST /v1/webhooks/sawt-fixed  (routing key call.analyzed)",
        "sawt-header: provider=sawt POST /v1/webhooks/sawt-header  (routing key in X-Routing-Key)",
        "sawt-header-secret: provider=sawt POST /v1/webhooks/sawt-header-secret/<path secret>"
        "  (routing key in X-Routing-Key)",
        "sawt-path: provider=sawt POST /v1/webhooks/sawt-path/<path secret>/<routing key>",
        "sawt-path-only: provider=sawt POST /v1/webhooks/sawt-path-only/<routing key>",
        "sawt-query: provider=sawt POST /v1/webhooks/sawt-query?routing_key=<routing key>",
        "sawt-query-named: provider=sawt POST /v1/webhooks/sawt-query-named?event=<routing key>",
    ]
