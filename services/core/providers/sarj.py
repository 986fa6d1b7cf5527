"""Sarj.ai: no signature exists yet.

The document says HMAC "is not yet shipped" and recommends a hard-to-guess
secret path component and/or an IP allow-list; both are generic source
settings (``path_secret_env``, ``allow_cidrs``, ``trusted_proxies`` in
sources.py), and a Sarj.ai source must configure at least one of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .base import HeaderMap, ProviderSpec, SecretLookup, top_level_string


@dataclasses.dataclass(frozen=True)
class SarjVerifier:
    authenticates: bool = False

    def verify(self, headers: HeaderMap, body: bytes, now: float) -> bool:
        return True  # nothing to verify in the request itself; see module doc

    def sign(self, body: bytes, now: float, delivery_id: str) -> dict[str, str]:
        return {}


def build_verifier(source: str, table: Mapping[str, Any], lookup: SecretLookup) -> SarjVerifier:
    return SarjVerifier()


def natural_key(body: bytes) -> bytes | None:
    # The document says to deduplicate on call_id, so it is the record key.
    return top_level_string(body, "call_id")


PROVIDER = ProviderSpec(
    name="sarj",
    build_verifier=build_verifier,
    natural_key=natural_key,
)
