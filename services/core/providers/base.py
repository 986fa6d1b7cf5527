"""What a provider module supplies: how its deliveries authenticate and are keyed.

Adding a provider is one module beside this one that defines ``PROVIDER`` and
one line in ``providers/__init__.py``; ingest, the CLI's ``send`` and the tests
find it through that registry.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from ..config import ConfigError

# Header lookup: Starlette's case-insensitive ``Headers``, or a dict with lower-cased
# names (verifiers look up lower-cased names).
HeaderMap = Mapping[str, str]
SecretLookup = Callable[[str], str]


class Verifier(Protocol):
    """Checks one delivery's provider-level authenticity, in constant time."""

    # False when verify() accepts everything (no provider-level secret): the
    # source must then rely on a path secret or an IP allow-list (sources.py).
    @property
    def authenticates(self) -> bool: ...

    def verify(self, headers: HeaderMap, body: bytes, now: float) -> bool: ...

    def sign(self, body: bytes, now: float, delivery_id: str) -> dict[str, str]:
        """Headers a genuine sender would add (used by ``hookstream send`` and tests)."""
        ...


@dataclasses.dataclass(frozen=True)
class ProviderSpec:
    name: str
    build_verifier: Callable[[str, Mapping[str, Any], SecretLookup], Verifier]
    # The delivery's natural id, used as the raw record's key when cheaply known.
    natural_key: Callable[[bytes], bytes | None]
    default_routing_key_header: str | None = None
    default_event_id_header: str | None = None


def secrets_from(
    source: str, table: Mapping[str, Any], lookup: SecretLookup, key: str
) -> tuple[bytes, ...]:
    """Read ``<key>_env`` (one variable) or ``<key>s_env`` (a list, for rotation)."""
    names: list[str] = []
    single = table.get(f"{key}_env")
    many = table.get(f"{key}s_env")
    if isinstance(single, str):
        names.append(single)
    if isinstance(many, list):
        names.extend(str(n) for n in many)
    values = tuple(lookup(name).encode() for name in names)
    if any(not v for v in values):
        raise ConfigError(f"source {source!r}: an environment variable in {key}_env is empty")
    return values


def any_digest_matches(candidates: list[bytes], expected: list[bytes]) -> bool:
    """Compare every candidate with every expected value, without early exit."""
    matched = False
    for candidate in candidates:
        for value in expected:
            matched |= hmac.compare_digest(candidate, value)
    return matched


def top_level_string(body: bytes, field: str) -> bytes | None:
    """One top-level string field of a JSON object body, or None if it is not one.

    Only used for the Kafka key; a malformed body simply gets no key and is left
    for the normalizer to dead-letter.
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict):
        value = parsed.get(field)
        if isinstance(value, str) and value:
            return value.encode()
    return None
