"""Sarj.ai: no signature exists yet.

The document says HMAC "is not yet shipped" and recommends a hard-to-guess
secret path component and/or an IP allow-list; both are generic source
settings (``path_secret_env``, ``allow_cidrs``, ``trusted_proxies`` in
sources.py), and a Sarj.ai source must configure at least one of them.

``api_key_env`` names the variable holding the organisation's key for Sarj.ai's
call API (``GET /calls/{call_id}``: fresh recording URLs, ``hookstream backfill
sarj``). Ingest never reads it; the recordings sink and the backfill command do
(:func:`api_key_var`), so only they need the key in their environment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..base import HeaderMap, SecretLookup, top_level_string


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


def api_key_var(source: str, table: Mapping[str, Any]) -> str | None:
    """The environment variable that holds ``source``'s call-API key, or None."""
    var = table.get("api_key_env")
    if var is not None and not (isinstance(var, str) and var):
        raise ValueError(f"source {source!r}: api_key_env must name an environment "
                         f"variable, got {var!r}")
    return var


OPTIONS: dict[str, Any] = {
    "api_key_env": None,  # the call API's key (recordings sink, hookstream backfill)
}
