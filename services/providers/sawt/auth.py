"""Sawt: per-subscription "authentication preferences", and a routing key.

Sawt's document says only that a subscription has authentication preferences,
so each source chooses (``auth``):

* ``header`` (default): a shared secret in a header (``auth_header``, default
  ``X-Webhook-Secret``); the value may be the secret itself or ``Bearer <secret>``.
* ``basic``: HTTP Basic auth, user from ``basic_user_env``, password(s) from
  ``basic_password_env`` / ``basic_passwords_env``.
* ``none``: only allowed together with a path secret or an IP allow-list.

Sawt's body carries no event name, and its document does not say where the
routing key travels. Each source says (``routing_key_from``, in sources.py):
a header (default, ``routing_key_header``, default ``X-Routing-Key``), a query
parameter, a path segment after the path secret, or a fixed value. Ingest
passes it on as record metadata; without one the normalizer infers the event.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping
from typing import Any

from ...core.config import ConfigError
from ..base import (
    HeaderMap,
    SecretLookup,
    any_digest_matches,
    secrets_from,
    top_level_string,
)
from ..bounds import MAX_CREDENTIAL_CHARS, bounded

MODES = ("header", "basic", "none")
DEFAULT_AUTH_HEADER = "X-Webhook-Secret"
DEFAULT_ROUTING_KEY_HEADER = "X-Routing-Key"


@dataclasses.dataclass(frozen=True)
class SawtVerifier:
    mode: str
    header: str = DEFAULT_AUTH_HEADER
    secrets: tuple[bytes, ...] = ()
    user: bytes = b""

    @property
    def authenticates(self) -> bool:
        return self.mode != "none"

    def verify(self, headers: HeaderMap, body: bytes, now: float) -> bool:
        if self.mode == "none":
            return True
        if self.mode == "header":
            value = bounded(headers.get(self.header.lower()), MAX_CREDENTIAL_CHARS)
            if value is None:
                return False
            given = value.removeprefix("Bearer ").strip().encode()
            return any_digest_matches([given], list(self.secrets))
        return self._verify_basic(bounded(headers.get("authorization"), MAX_CREDENTIAL_CHARS))

    def _verify_basic(self, value: str | None) -> bool:
        # ``value`` is bounded ASCII: base64 never sees non-ASCII text (a ValueError, 500).
        if value is None or not value.lower().startswith("basic "):
            return False
        try:
            decoded = base64.b64decode(value[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        if not sep:
            return False
        user_ok = any_digest_matches([user], [self.user])
        password_ok = any_digest_matches([password], list(self.secrets))
        return user_ok & password_ok

    def sign(self, body: bytes, now: float, delivery_id: str) -> dict[str, str]:
        if self.mode == "header":
            return {self.header: self.secrets[0].decode()}
        if self.mode == "basic":
            token = base64.b64encode(self.user + b":" + self.secrets[0]).decode()
            return {"Authorization": f"Basic {token}"}
        return {}


def build_verifier(source: str, table: Mapping[str, Any], lookup: SecretLookup) -> SawtVerifier:
    mode = str(table.get("auth", "header"))
    if mode not in MODES:
        raise ConfigError(f"source {source!r}: auth must be one of {MODES}")
    if mode == "header":
        secrets = secrets_from(source, table, lookup, "secret")
        if not secrets:
            raise ConfigError(f"source {source!r}: auth=header needs secret_env or secrets_env")
        return SawtVerifier("header", str(table.get("auth_header", DEFAULT_AUTH_HEADER)), secrets)
    if mode == "basic":
        user_env = table.get("basic_user_env")
        passwords = secrets_from(source, table, lookup, "basic_password")
        if not isinstance(user_env, str) or not passwords:
            raise ConfigError(
                f"source {source!r}: auth=basic needs basic_user_env and basic_password_env"
            )
        user = lookup(user_env)
        if not user.strip():
            raise ConfigError(f"source {source!r}: environment variable {user_env} "
                              "(basic_user_env) is empty: HTTP Basic needs a user name")
        return SawtVerifier("basic", secrets=passwords, user=user.encode())
    return SawtVerifier("none")


def natural_key(body: bytes) -> bytes | None:
    # Keyed by call id so one call's deliveries stay ordered in one raw partition.
    return top_level_string(body, "call_id")


OPTIONS: dict[str, Any] = {
    "auth": "header",
    "auth_header": DEFAULT_AUTH_HEADER,
    "secret_env": None,  # required with auth = "header", or secrets_env
    "secrets_env": None,
    "basic_user_env": None,  # required with auth = "basic"
    "basic_password_env": None,  # required with auth = "basic", or basic_passwords_env
    "basic_passwords_env": None,
}
