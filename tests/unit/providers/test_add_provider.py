"""Adding a provider is one folder, one schema directory and its tests (issue 15, item 1;
schemas/providers/README.md, "Adding a provider").

A fourth, tiny provider built from the spec alone: a ``ProviderSpec`` with its auth
and its adapter, registered at test time, and a schema directory of its own (one
event type, one example). Nothing else in hookstream is told about it: its sample
is found, signed as its sources file says, authenticated by the real ingest app (a
forged copy refused), and normalized by the real decoder into a canonical event.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from hookstream.cli import signed_request
from hookstream.core.config import ConfigError, KafkaSettings
from hookstream.core.errors import MAPPING_FAILED, UNKNOWN_EVENT_TYPE, Invalid
from hookstream.core.record import LocalRecord, RawDelivery
from hookstream.core.schemas import SchemaRegistry
from hookstream.core.sources import parse_sources
from hookstream.devtools import catalog
from hookstream.devtools.samples import fresh_copy, samples
from hookstream.ingest.app import build_app
from hookstream.ingest.settings import IngestSettings
from hookstream.normalizer.pipeline import Decoder
from hookstream.providers import PROVIDERS, ProviderSpec, registered
from hookstream.providers.adapter import MappingAdapter, num_or_none, str_or_none
from hookstream.providers.base import (
    HeaderMap,
    SecretLookup,
    any_digest_matches,
    secrets_from,
    top_level_string,
)
from tests.support import FakePublisher

# ---------------------------------------------------------------- the provider folder
# What providers/tiny/auth.py would hold: a shared secret in a header.
HEADER = "X-Tiny-Token"


class TinyVerifier:
    authenticates = True

    def __init__(self, secrets: tuple[bytes, ...]) -> None:
        self.secrets = secrets

    def verify(self, headers: HeaderMap, body: bytes, now: float) -> bool:
        given = headers.get(HEADER.lower())
        return isinstance(given, str) and given.isascii() and any_digest_matches(
            [given.encode()], list(self.secrets))

    def sign(self, body: bytes, now: float, delivery_id: str) -> dict[str, str]:
        return {HEADER: self.secrets[0].decode()}


def build_verifier(source: str, table: Mapping[str, Any], lookup: SecretLookup
                   ) -> TinyVerifier:
    secrets = secrets_from(source, table, lookup, "secret")
    if not secrets:
        raise ConfigError(f"source {source!r}: tiny needs secret_env")
    return TinyVerifier(secrets)


# What providers/tiny/adapter.py would hold: {id, event, call_id, at, seconds}.
class TinyAdapter(MappingAdapter):
    provider = "tiny"
    canonical_types = {"call.done": "call.ended"}

    def identify(self, raw: RawDelivery, payload: dict[str, Any]
                 ) -> tuple[str, str | None, bool]:
        event = payload.get("event")
        if not isinstance(event, str):
            raise Invalid(UNKNOWN_EVENT_TYPE, "tiny: body has no string `event`")
        return event, None, False

    def dedupe_key(self, event_type: str, payload: dict[str, Any]) -> str:
        event_id = payload.get("id")
        if not isinstance(event_id, str) or not event_id:
            raise Invalid(MAPPING_FAILED, "tiny: no `id` to dedupe on")
        return event_id

    def _fields(self, payload: dict[str, Any], event_type: str) -> dict[str, Any]:
        return dict(occurred_at=str_or_none(payload.get("at")),
                    call_id=str_or_none(payload.get("call_id")),
                    duration_s=num_or_none(payload.get("seconds")))


def renew_ids(body: dict[str, Any], tag: str) -> None:
    body["id"] = f"{body['id']}_{tag}"
    body["call_id"] = f"{body['call_id']}_{tag}"


# What providers/tiny/__init__.py would hold: the spec (schemas_dir points at the test's
# schema directory; a real provider's is schemas/providers/tiny/, named from the spec).
def tiny_spec(schemas_dir: Path) -> ProviderSpec:
    return ProviderSpec(
        name="tiny", title="Tiny", build_verifier=build_verifier,
        natural_key=lambda body: top_level_string(body, "call_id"),
        adapter=TinyAdapter(), options={"secret_env": None, "secrets_env": None},
        renew_ids=renew_ids, schemas_dir=schemas_dir)


# ---------------------------------------------------------------- its schema directory
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tiny call.done", "description": "A tiny call has ended.", "type": "object",
    "required": ["id", "event", "call_id"],
    "properties": {"id": {"type": "string"}, "event": {"const": "call.done"},
                   "call_id": {"type": "string"}, "at": {"type": "string"},
                   "seconds": {"type": "number"}},
}
EXAMPLE = {"id": "evt_1", "event": "call.done", "call_id": "c_1",
           "at": "2026-05-01T10:00:00Z", "seconds": 42}
SECRET = "tiny-secret-0123456789abcdef"


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[ProviderSpec]:
    schemas = tmp_path / "tiny"
    (schemas / "examples").mkdir(parents=True)
    (schemas / "call.done.schema.json").write_text(json.dumps(SCHEMA))
    (schemas / "examples" / "call.done.json").write_text(json.dumps(EXAMPLE))
    with registered(tiny_spec(schemas)) as spec:
        yield spec
    assert "tiny" not in PROVIDERS


async def test_a_fourth_provider_from_its_spec_alone(tiny: ProviderSpec) -> None:
    # Its sources file names it like any other provider.
    sources = parse_sources({"sources": {"tiny-main": {
        "provider": "tiny", "secret_env": "TINY_SECRET"}}}, {"TINY_SECRET": SECRET})
    source = sources["tiny-main"]
    assert source.provider is tiny

    # Its sample is found in its schema directory; a fresh copy has new ids.
    [sample] = list(samples("tiny"))
    assert (sample.provider, sample.event, sample.name) == ("tiny", "call.done", "call.done")
    sample = fresh_copy(sample, "t1")
    assert json.loads(sample.body)["call_id"] == "c_1_t1"

    # Signed as the source says, accepted by the real ingest app; a forgery is not.
    fake = FakePublisher()
    app = build_app(sources, IngestSettings(), KafkaSettings(),
                    publisher=fake)  # type: ignore[arg-type]
    path, headers = signed_request(source, sample, time.time(), "msg_1")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        forged = {**headers, HEADER: "not-the-secret-at-all-000"}
        assert (await client.post(path, content=sample.body, headers=forged)).status_code == 401
        response = await client.post(path, content=sample.body, headers=headers)
    assert response.status_code == 202, response.text
    [published] = fake.calls
    assert published.key == b"c_1_t1"  # its natural key
    assert published.header("hs-provider") == b"tiny"

    # Normalized by the real decoder, validated against its own schema.
    decoder = Decoder(SchemaRegistry())
    event = decoder.decode(LocalRecord(published.value, published.headers))
    assert (event.provider, event.source, event.type, event.provider_type) == (
        "tiny", "tiny-main", "call.ended", "call.done")
    assert (event.call_id, event.duration_s, event.occurred_at) == (
        "c_1_t1", 42.0, "2026-05-01T10:00:00Z")

    # The canonical contract's provider enum is written from the registry (the
    # catalog generator, step 3 of the guide), so it lists tiny, and the event is valid.
    canonical = catalog.canonical_schema_with_providers()
    assert canonical["properties"]["provider"]["enum"] == sorted(PROVIDERS)
    assert "tiny" in canonical["properties"]["provider"]["enum"]
    assert list(Draft202012Validator(canonical).iter_errors(event.to_dict())) == []

    # Its schema is enforced like any other provider's.
    bad = RawDelivery(source="tiny-main", provider="tiny", received_at_ms=0,
                      request_id="r", body=b'{"id": "x", "event": "call.done"}')
    with pytest.raises(Invalid) as caught:
        decoder.decode(LocalRecord(bad.body, bad.headers()))
    assert caught.value.reason == "schema_violation"


def test_the_registry_finds_every_provider_folder() -> None:
    """Each folder of services/providers/ with an __init__.py is one registered spec."""
    folders = {p.name for p in (Path(__file__).parents[3] / "services" / "providers").iterdir()
               if (p / "__init__.py").exists()}
    assert set(PROVIDERS) == folders
    for name, spec in PROVIDERS.items():
        assert spec.name == name == spec.adapter.provider


def test_nothing_outside_the_provider_folders_names_a_provider() -> None:
    """Issue 15: a provider's knowledge lives in its folder; the rest of services/ reads
    the registry and the canonical fields only."""
    services = Path(__file__).parents[3] / "services"
    names = sorted(PROVIDERS)
    assert len(names) >= 3
    pattern = re.compile("|".join(map(re.escape, names)), re.IGNORECASE)
    offenders = [f"{path.relative_to(services)}:{n}: {line.strip()}"
                 for path in sorted(services.rglob("*.py"))
                 if "providers" not in path.relative_to(services).parts[:1]
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders, "\n".join(offenders)
