"""Saaya: HMAC-SHA256 over the raw body with the source's secret.

Saaya's document promises HMAC-SHA256 signing but names no header, so two
schemes are supported per source (``signature_scheme``):

* ``standard-webhooks`` (default): the Standard Webhooks headers
  ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64>``
  over ``id.timestamp.body``, with a timestamp tolerance (replay protection).
* ``hex``: ``<signature_header>: sha256=<hex>`` over the body alone
  (header default ``X-Signature``; the ``sha256=`` prefix is optional).

Several secrets may be active at once (``secrets_env = [...]``) for rotation.
A ``whsec_``-prefixed secret is base64-decoded, as Standard Webhooks defines.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from ..config import ConfigError
from .base import (
    HeaderMap,
    ProviderSpec,
    SecretLookup,
    any_digest_matches,
    secrets_from,
    top_level_string,
)
from .bounds import (
    MAX_HEX_SIGNATURE_CHARS,
    MAX_ID_CHARS,
    MAX_SIGNATURES_CHARS,
    MAX_TIMESTAMP_DIGITS,
    bounded,
)

SCHEMES = ("standard-webhooks", "hex")
DEFAULT_TOLERANCE_S = 300
DEFAULT_HEX_HEADER = "X-Signature"


def _key(secret: bytes) -> bytes:
    if secret.startswith(b"whsec_"):
        try:
            return base64.b64decode(secret[6:], validate=True)
        except binascii.Error:
            raise ConfigError("a whsec_ secret is not valid base64") from None
    return secret


@dataclasses.dataclass(frozen=True)
class SaayaVerifier:
    keys: tuple[bytes, ...]
    scheme: str = "standard-webhooks"
    signature_header: str = DEFAULT_HEX_HEADER
    tolerance_s: int = DEFAULT_TOLERANCE_S
    authenticates: bool = True

    def verify(self, headers: HeaderMap, body: bytes, now: float) -> bool:
        if self.scheme == "hex":
            return self._verify_hex(headers, body)
        return self._verify_standard(headers, body, now)

    def _verify_hex(self, headers: HeaderMap, body: bytes) -> bool:
        value = bounded(headers.get(self.signature_header.lower()), MAX_HEX_SIGNATURE_CHARS)
        if value is None:
            return False
        given = value.strip().removeprefix("sha256=").lower().encode()
        expected = [hmac.new(k, body, hashlib.sha256).hexdigest().encode() for k in self.keys]
        return any_digest_matches([given], expected)

    def _verify_standard(self, headers: HeaderMap, body: bytes, now: float) -> bool:
        # Bounded before any arithmetic: a 309-digit timestamp once overflowed float (500).
        msg_id = bounded(headers.get("webhook-id"), MAX_ID_CHARS)
        timestamp = bounded(headers.get("webhook-timestamp"), MAX_TIMESTAMP_DIGITS)
        signatures = bounded(headers.get("webhook-signature"), MAX_SIGNATURES_CHARS)
        if msg_id is None or timestamp is None or signatures is None:
            return False
        if not timestamp.isdigit():  # ASCII digits only (int() would take " 1_0")
            return False
        sent_at = int(timestamp)
        if abs(now - sent_at) > self.tolerance_s:
            return False
        signed = f"{msg_id}.{timestamp}.".encode() + body
        expected = [
            base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()) for k in self.keys
        ]
        given = [
            part[3:].encode()
            for part in signatures.split(" ")
            if part.startswith("v1,")
        ]
        return bool(given) and any_digest_matches(given, expected)

    def sign(self, body: bytes, now: float, delivery_id: str) -> dict[str, str]:
        key = self.keys[0]
        if self.scheme == "hex":
            digest = hmac.new(key, body, hashlib.sha256).hexdigest()
            return {self.signature_header: f"sha256={digest}"}
        timestamp = str(int(now))
        signed = f"{delivery_id}.{timestamp}.".encode() + body
        signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        return {
            "webhook-id": delivery_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": f"v1,{signature}",
        }


def build_verifier(source: str, table: Mapping[str, Any], lookup: SecretLookup) -> SaayaVerifier:
    scheme = str(table.get("signature_scheme", "standard-webhooks"))
    if scheme not in SCHEMES:
        raise ConfigError(f"source {source!r}: signature_scheme must be one of {SCHEMES}")
    # The length rule applies to the HMAC key: a whsec_ secret after decoding.
    keys = secrets_from(source, table, lookup, "secret", decode=_key)
    if not keys:
        raise ConfigError(f"source {source!r}: saaya needs secret_env or secrets_env")
    return SaayaVerifier(
        keys=keys,
        scheme=scheme,
        signature_header=str(table.get("signature_header", DEFAULT_HEX_HEADER)),
        tolerance_s=int(table.get("timestamp_tolerance_s", DEFAULT_TOLERANCE_S)),
    )


def natural_key(body: bytes) -> bytes | None:
    return top_level_string(body, "id")


PROVIDER = ProviderSpec(
    name="saaya",
    build_verifier=build_verifier,
    natural_key=natural_key,
    default_event_id_header="webhook-id",
)
