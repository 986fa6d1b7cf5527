"""Transcripts sink settings, read once at start from the environment."""

from __future__ import annotations

import dataclasses
import re

from ...core.config import ConfigError, env, secret
from ...providers import transcript_hosts

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TranscriptsSettings:
    max_bytes: int = env("HOOKSTREAM_TRANSCRIPTS_MAX_BYTES", 5 * MIB,
                         "largest transcript fetched; a larger one is dead-lettered "
                         "(transcript_too_large) without reading the rest")
    fetch_timeout_s: float = env(
        "HOOKSTREAM_TRANSCRIPTS_FETCH_TIMEOUT_S", 30.0,
        "longest time for one fetch, start to last byte (also the connect/read timeout)")
    concurrency: int = env("HOOKSTREAM_TRANSCRIPTS_CONCURRENCY", 4, "fetches in flight at once")
    batch_deadline_s: float = env(
        "HOOKSTREAM_TRANSCRIPTS_BATCH_DEADLINE_S", 60.0,
        "no new fetch starts after this long on one batch; the rest is parked on the "
        "retry topic (keeps the consumer inside max.poll.interval)")
    # The providers' documents show their transcript URLs on their API hosts
    # (ProviderSpec.transcript_hosts); unlike a bucket host, such a name serves nothing
    # else, so they are allowed by default.
    allowed_hosts: tuple[str, ...] = env(
        "HOOKSTREAM_TRANSCRIPTS_ALLOWED_HOSTS", transcript_hosts(),
        "hosts transcripts may be fetched from, redirects included (exact name, or .suffix "
        "for its subdomains); empty: none, every transcript is dead-lettered "
        "(transcript_url_rejected)")
    allow_private_addresses: bool = env(
        "HOOKSTREAM_TRANSCRIPTS_ALLOW_PRIVATE_ADDRESSES", False,
        "tests and development only: also fetch from loopback, private and link-local "
        "addresses (never cloud metadata, multicast or unspecified ones); false: only public "
        "addresses, checked after DNS resolution on every redirect hop")
    authorization: str = secret(
        "HOOKSTREAM_TRANSCRIPTS_AUTHORIZATION",
        "Authorization header sent with every transcript fetch, e.g. `Bearer <the "
        "provider's API key>` (empty: none); never sent on a redirect to another host")

    def validate(self) -> None:
        if self.max_bytes <= 0:
            raise ConfigError("HOOKSTREAM_TRANSCRIPTS_MAX_BYTES must be positive")
        if self.concurrency < 1:
            raise ConfigError("HOOKSTREAM_TRANSCRIPTS_CONCURRENCY must be >= 1")
        for name in ("fetch_timeout_s", "batch_deadline_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"transcripts setting {name} must be positive")
        for host in self.allowed_hosts:
            if not re.fullmatch(r"\.?[A-Za-z0-9_.:-]+", host) or host.strip(".") == "":
                raise ConfigError(f"HOOKSTREAM_TRANSCRIPTS_ALLOWED_HOSTS: {host!r} is not a "
                                  "host name (no scheme, port, path or wildcard; .suffix for "
                                  "subdomains)")
        if any(c in self.authorization for c in "\r\n"):
            raise ConfigError("HOOKSTREAM_TRANSCRIPTS_AUTHORIZATION must be one line")
