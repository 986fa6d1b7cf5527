"""What a provider module supplies: how its deliveries authenticate and are keyed.

Adding a provider is one module beside this one that defines ``PROVIDER`` and
one line in ``providers/__init__.py``; ingest, the CLI's ``send`` and the tests
find it through that registry.
"""

from __future__ import annotations

import dataclasses
import hmac
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from ..config import ConfigError

# Header lookup: Starlette's case-insensitive ``Headers``, or a dict with lower-cased
# names (verifiers look up lower-cased names).
HeaderMap = Mapping[str, str]
SecretLookup = Callable[[str], str]
# An HTTP header name (RFC 9110 token): a configured name outside it could never match.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


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
    # The provider's own settings in a source's table, with their defaults (as
    # documented in docs/sources.md, whose table a test keeps equal to these).
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# The shortest secret (HMAC key, shared secret, password) a source may use, in bytes
# of the key itself (a ``whsec_`` secret after base64-decoding). 16 bytes = 128 bits.
MIN_SECRET_BYTES = 16


def secrets_from(
    source: str,
    table: Mapping[str, Any],
    lookup: SecretLookup,
    key: str,
    decode: Callable[[bytes], bytes] | None = None,
) -> tuple[bytes, ...]:
    """Read ``<key>_env`` (one variable) or ``<key>s_env`` (a list, for rotation).

    Each value is turned into its key by ``decode`` (default: its bytes) and must
    then be at least ``MIN_SECRET_BYTES`` long, or the source is refused.
    """
    names: list[str] = []
    single = table.get(f"{key}_env")
    many = table.get(f"{key}s_env")
    if isinstance(single, str):
        names.append(single)
    if isinstance(many, list):
        names.extend(str(n) for n in many)
    values: list[bytes] = []
    for name in names:
        raw = lookup(name).encode()
        if not raw:
            raise ConfigError(f"source {source!r}: environment variable {name} ({key}_env) "
                              "is empty")
        try:
            value = decode(raw) if decode is not None else raw
        except ValueError as exc:
            raise ConfigError(f"source {source!r}: environment variable {name}: {exc}") from None
        if len(value) < MIN_SECRET_BYTES:
            decoded = " after base64-decoding" if value is not raw else ""
            raise ConfigError(
                f"source {source!r}: environment variable {name} ({key}_env) holds a "
                f"{len(value)}-byte secret{decoded}; it must be at least {MIN_SECRET_BYTES} "
                "bytes (use e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        values.append(value)
    return tuple(values)


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
