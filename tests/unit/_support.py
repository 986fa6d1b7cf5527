"""Shared helpers for the unit tests: an independent Standard Webhooks signer,
a recording fake of the ingest ``Publisher`` and a few fixed secrets.

The signers here are written from the Standard Webhooks specification, not via
the provider modules, so a wrong implementation cannot pass by agreeing with itself.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import Headers

from hookstream.core.sources import Source, build_source
from hookstream.ingest.publisher import NotStored

# 32 random bytes, base64: the decoded bytes are the HMAC key (Standard Webhooks).
RAW_KEY_A = bytes(range(32))
WHSEC_A = "whsec_" + base64.b64encode(RAW_KEY_A).decode()
PLAIN_B = "plain-previous-secret-b"
HEX_SECRET = "hex-secret-value"
SAWT_SECRET = "sawt-shared-secret-value"
BASIC_USER = "sawt-user"
BASIC_PASSWORD = "sawt-basic-password"
PATH_SECRET = "p" * 20 + "Path-Secret-0123456789"  # 42 chars
PATH_SECRET_OLD = "o" * 24 + "-older-path-secret"


def key_of(secret: str) -> bytes:
    """The HMAC key a Standard Webhooks secret stands for."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def std_signature(key: bytes, msg_id: str, timestamp: str | int, body: bytes) -> str:
    """``v1,<base64(hmac_sha256(key, f"{id}.{timestamp}.{body}"))>``."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def std_headers(
    key: bytes, msg_id: str, timestamp: str | int, body: bytes
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": std_signature(key, msg_id, timestamp, body),
    }


def hex_signature(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def signature_headers(key: bytes, body: bytes, *, header: str, encoding: str = "hex",
                      prefix: str = "", signed: str = "body", combined: bool = False,
                      msg_id: str = "msg_1", timestamp: str | int = 0,
                      id_header: str = "webhook-id",
                      timestamp_header: str = "webhook-timestamp") -> dict[str, str]:
    """Headers of a Saaya delivery signed in any of the configurable forms, written
    from the forms' descriptions (docs/sources.md), not via the provider module.

    ``signed`` is ``body``, ``timestamp.body`` or ``id.timestamp.body``; ``combined``
    writes ``<header>: t=<timestamp>,v1=<signature>`` instead of ``<prefix><signature>``.
    """
    parts = {"body": [body],
             "timestamp.body": [str(timestamp).encode(), body],
             "id.timestamp.body": [msg_id.encode(), str(timestamp).encode(), body]}[signed]
    digest = hmac.new(key, b".".join(parts), hashlib.sha256).digest()
    text = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    headers: dict[str, str] = {}
    if signed.startswith("id."):
        headers[id_header] = msg_id
    if combined:
        headers[header] = f"t={timestamp},v1={text}"
    else:
        if "timestamp" in signed:
            headers[timestamp_header] = str(timestamp)
        headers[header] = prefix + text
    return headers


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def H(mapping: Mapping[str, str] | None = None) -> Headers:
    """A case-insensitive header map, as the app passes to verifiers."""
    return Headers(headers=dict(mapping or {}))


ENV: dict[str, str] = {
    "SAAYA_A": WHSEC_A,
    "SAAYA_B": PLAIN_B,
    "SAAYA_HEX": HEX_SECRET,
    "SAWT_SECRET": SAWT_SECRET,
    "SAWT_SECRET_2": "sawt-second-secret",
    "SAWT_USER": BASIC_USER,
    "SAWT_PASSWORD": BASIC_PASSWORD,
    "SAWT_PASSWORD_2": "sawt-second-password",
    "PATH_SECRET": PATH_SECRET,
    "PATH_SECRET_OLD": PATH_SECRET_OLD,
    "SHORT_PATH": "x" * 23,
    "EMPTY": "",
}


def source(name: str, env: Mapping[str, str] | None = None, **table: Any) -> Source:
    return build_source(name, table, ENV if env is None else env)


@dataclasses.dataclass
class Published:
    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> bytes | None:
        found = [v for k, v in self.headers if k == name]
        assert len(found) <= 1, f"header {name} repeated: {found}"
        return found[0] if found else None

    def header_names(self) -> list[str]:
        return [k for k, _ in self.headers]


class FakePublisher:
    """Implements what ingest uses of ``Publisher``; records or refuses publishes."""

    def __init__(self, *, ready: bool = True, fail: str | None = None) -> None:
        self._ready = ready
        self.fail = fail
        self.calls: list[Published] = []
        self.started = 0
        self.stopped: list[float] = []

    @property
    def ready(self) -> bool:
        return self._ready

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    async def start(self) -> None:
        self.started += 1

    async def stop(self, timeout_s: float) -> None:
        self.stopped.append(timeout_s)

    async def publish(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        if self.fail is not None:
            raise NotStored(self.fail)
        self.calls.append(Published(topic, value, key, list(headers)))
