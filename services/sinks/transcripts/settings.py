"""Transcripts sink settings, read once at start from the environment."""

from __future__ import annotations

import dataclasses

from ...core.config import ConfigError, secret
from ...providers import transcript_hosts
from ..fetching import settings as fetching
from ..fetching.settings import MIB

WORDS = fetching.Words(thing="transcript", things="transcripts", act="fetch", acts="fetches")


@dataclasses.dataclass(frozen=True)
class TranscriptsSettings:
    max_bytes: int = fetching.max_bytes_setting("HOOKSTREAM_TRANSCRIPTS_MAX_BYTES", 5 * MIB,
                                                 WORDS, "transcript_too_large")
    fetch_timeout_s: float = fetching.timeout_setting(
        "HOOKSTREAM_TRANSCRIPTS_FETCH_TIMEOUT_S", 30.0, WORDS)
    concurrency: int = fetching.concurrency_setting("HOOKSTREAM_TRANSCRIPTS_CONCURRENCY", 4,
                                                    WORDS)
    batch_deadline_s: float = fetching.batch_deadline_setting(
        "HOOKSTREAM_TRANSCRIPTS_BATCH_DEADLINE_S", 60.0, WORDS)
    # The providers' documents show their transcript URLs on their API hosts
    # (ProviderSpec.transcript_hosts); unlike a bucket host, such a name serves nothing
    # else, so they are allowed by default.
    allowed_hosts: tuple[str, ...] = fetching.allowed_hosts_setting(
        "HOOKSTREAM_TRANSCRIPTS_ALLOWED_HOSTS", transcript_hosts(), WORDS,
        "transcript_url_rejected")
    allow_private_addresses: bool = fetching.allow_private_setting(
        "HOOKSTREAM_TRANSCRIPTS_ALLOW_PRIVATE_ADDRESSES")
    authorization: str = secret(
        "HOOKSTREAM_TRANSCRIPTS_AUTHORIZATION",
        "Authorization header sent with every transcript fetch, e.g. `Bearer <the "
        "provider's API key>` (empty: none); never sent on a redirect to another host")

    @property
    def timeout_s(self) -> float:
        """``fetch_timeout_s``, as the fetching sink reads it."""
        return self.fetch_timeout_s

    def validate(self) -> None:
        fetching.validate(self, WORDS, timeout_field="fetch_timeout_s")
        if any(c in self.authorization for c in "\r\n"):
            raise ConfigError("HOOKSTREAM_TRANSCRIPTS_AUTHORIZATION must be one line")
