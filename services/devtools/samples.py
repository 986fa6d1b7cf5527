"""The providers' sample deliveries: the example payloads beside the schemas.

``schemas/providers/<provider>/[<version>/]examples/<event>[.<n>|.<variant>].json``
(the provider's ``ProviderSpec.schema_dir``) holds realistic bodies of every
documented event. The CLI's ``send``, the demo,
the tests and the benchmarks all draw from here, so there is one set of samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import orjson

from ..core.schemas import SCHEMAS_DIR
from ..providers import PROVIDERS
from ..providers.base import MediaUrl

__all__ = ["SCHEMAS_DIR", "MediaUrl", "Sample", "fresh_copy", "media_urls", "samples",
           "with_media"]


@dataclasses.dataclass(frozen=True)
class Sample:
    provider: str
    event: str  # the provider's event name / routing key / payload type
    name: str  # the example's file stem, unique per provider
    body: bytes


def _event_name(stem: str, known: set[str]) -> str:
    """``call.updated.2`` and ``complete.test_webhook`` name the event before the suffix."""
    candidate = stem
    while candidate not in known and "." in candidate:
        candidate = candidate.rsplit(".", 1)[0]
    return candidate if candidate in known else stem


def samples(provider: str | None = None, schemas_dir: Path = SCHEMAS_DIR) -> Iterator[Sample]:
    for name in sorted(PROVIDERS):
        provider_dir = PROVIDERS[name].schema_dir(schemas_dir)
        if (provider is not None and name != provider) or not provider_dir.is_dir():
            continue
        for examples in sorted(provider_dir.rglob("examples")):
            known = {p.name.removesuffix(".schema.json")
                     for p in examples.parent.glob("*.schema.json")}
            for path in sorted(examples.glob("*.json")):
                stem = path.name.removesuffix(".json")
                yield Sample(name, _event_name(stem, known), stem, path.read_bytes())


def fresh_copy(sample: Sample, tag: str) -> Sample:
    """The same event kind with new identities (the provider's ``renew_ids``: event
    ids, call or session ids), so that the normalizer treats it as a new event rather
    than a redelivery of the sample."""
    body = orjson.loads(sample.body)
    PROVIDERS[sample.provider].renew_ids(body, tag)
    return dataclasses.replace(sample, body=orjson.dumps(body))


def media_urls(base: str) -> MediaUrl:
    """Media served by a stand-in at ``base`` (tests/fakes/media.py):
    ``<base>/recordings/<id>`` and ``<base>/transcripts/<id>``."""
    base = base.rstrip("/")

    def media_url(kind: str, subject: str) -> str:
        return f"{base}/{kind}s/{quote(subject, safe='')}"
    return media_url


def with_media(sample: Sample, media_url: MediaUrl) -> Sample:
    """The sample with the recording or transcript URL it carries pointed at
    ``media_url`` (the provider's ``point_media``; unchanged when it links none)."""
    point = PROVIDERS[sample.provider].point_media
    if point is None:
        return sample
    body = orjson.loads(sample.body)
    if not isinstance(body, dict):
        return sample
    point(body, media_url)
    return dataclasses.replace(sample, body=orjson.dumps(body))
