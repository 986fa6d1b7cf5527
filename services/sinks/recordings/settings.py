"""Recordings sink settings, read once at start from the environment."""

from __future__ import annotations

import dataclasses
import re

from ...core.config import ConfigError, env, secret
from ...providers import recording_hosts_note
from ..fetching import settings as fetching
from ..fetching.settings import MIB

STORES = ("local", "s3")
S3_MIN_PART = 5 * MIB  # S3's smallest part of a multipart upload (but the last)
S3_MAX_PARTS = 10_000  # and its most parts per upload


WORDS = fetching.Words(thing="recording", things="recordings", act="download",
                       acts="downloads")


@dataclasses.dataclass(frozen=True)
class RecordingsSettings:
    store: str = env("HOOKSTREAM_RECORDINGS_STORE", "local",
                     "where recordings go: local (a directory) or s3 (an S3-compatible bucket)")
    dir: str = env("HOOKSTREAM_RECORDINGS_DIR", ".stack/recordings",
                   "local store: root directory (relative: to the working directory)")
    max_bytes: int = fetching.max_bytes_setting("HOOKSTREAM_RECORDINGS_MAX_BYTES", 200 * MIB,
                                                 WORDS, "recording_too_large")
    download_timeout_s: float = fetching.timeout_setting(
        "HOOKSTREAM_RECORDINGS_DOWNLOAD_TIMEOUT_S", 120.0, WORDS)
    concurrency: int = fetching.concurrency_setting("HOOKSTREAM_RECORDINGS_CONCURRENCY", 4,
                                                    WORDS)
    batch_deadline_s: float = fetching.batch_deadline_setting(
        "HOOKSTREAM_RECORDINGS_BATCH_DEADLINE_S", 120.0, WORDS)
    allowed_hosts: tuple[str, ...] = fetching.allowed_hosts_setting(
        "HOOKSTREAM_RECORDINGS_ALLOWED_HOSTS", (), WORDS, "recording_url_rejected",
        note=recording_hosts_note())
    allow_private_addresses: bool = fetching.allow_private_setting(
        "HOOKSTREAM_RECORDINGS_ALLOW_PRIVATE_ADDRESSES")
    s3_endpoint: str = env("HOOKSTREAM_S3_ENDPOINT", "",
                           "s3 store: endpoint URL, e.g. https://s3.eu-central-1.amazonaws.com "
                           "or http://127.0.0.1:9000 (path-style requests)")
    s3_bucket: str = env("HOOKSTREAM_S3_BUCKET", "", "s3 store: bucket")
    s3_region: str = env("HOOKSTREAM_S3_REGION", "us-east-1", "s3 store: region")
    s3_prefix: str = env("HOOKSTREAM_S3_PREFIX", "",
                         "s3 store: key prefix, e.g. recordings/ (letters, digits, . _ - /)")
    s3_multipart_threshold_bytes: int = env(
        "HOOKSTREAM_S3_MULTIPART_THRESHOLD_BYTES", 16 * MIB,
        "s3 store: a recording larger than this is a multipart upload (else one PUT, "
        "read into memory whole)")
    s3_part_bytes: int = env("HOOKSTREAM_S3_PART_BYTES", 8 * MIB,
                             "s3 store: part size of a multipart upload (at least 5 MiB; "
                             "one part per upload is in memory at a time)")
    s3_access_key_id: str = env("HOOKSTREAM_S3_ACCESS_KEY_ID", "", "s3 store: access key id")
    s3_secret_access_key: str = secret("HOOKSTREAM_S3_SECRET_ACCESS_KEY",
                                       "s3 store: secret access key")
    s3_session_token: str = secret("HOOKSTREAM_S3_SESSION_TOKEN",
                                   "s3 store: session token of temporary credentials "
                                   "(optional)")

    @property
    def timeout_s(self) -> float:
        """``download_timeout_s``, as the fetching sink reads it."""
        return self.download_timeout_s

    def validate(self) -> None:
        if self.store not in STORES:
            raise ConfigError(f"HOOKSTREAM_RECORDINGS_STORE={self.store!r}: expected one of "
                              f"{', '.join(STORES)}")
        fetching.validate(self, WORDS, timeout_field="download_timeout_s")
        if self.store == "local" and not self.dir:
            raise ConfigError("HOOKSTREAM_RECORDINGS_DIR must not be empty")
        if self.store == "s3":
            if not self.s3_endpoint.startswith(("http://", "https://")):
                raise ConfigError(f"HOOKSTREAM_S3_ENDPOINT={self.s3_endpoint!r}: expected an "
                                  "http(s) URL")
            missing = [var for var, value in (
                ("HOOKSTREAM_S3_BUCKET", self.s3_bucket),
                ("HOOKSTREAM_S3_ACCESS_KEY_ID", self.s3_access_key_id),
                ("HOOKSTREAM_S3_SECRET_ACCESS_KEY", self.s3_secret_access_key)) if not value]
            if missing:
                raise ConfigError(f"the s3 store needs {', '.join(missing)}")
            if self.s3_prefix and not re.fullmatch(r"[A-Za-z0-9._/-]+", self.s3_prefix):
                raise ConfigError(f"HOOKSTREAM_S3_PREFIX={self.s3_prefix!r}: letters, digits "
                                  "and . _ - / only")
            if self.s3_part_bytes < S3_MIN_PART:
                raise ConfigError("HOOKSTREAM_S3_PART_BYTES must be at least 5 MiB (S3's "
                                  "smallest part)")
            if self.s3_multipart_threshold_bytes < 1:
                raise ConfigError("HOOKSTREAM_S3_MULTIPART_THRESHOLD_BYTES must be positive")
            if self.max_bytes > self.s3_part_bytes * S3_MAX_PARTS:
                raise ConfigError("HOOKSTREAM_RECORDINGS_MAX_BYTES must be at most "
                                  "HOOKSTREAM_S3_PART_BYTES x 10000 (S3's most parts)")
