"""``hookstream-sink-recordings``: fetch Sarj.ai's signed, expiring recording URLs to a
durable store and record the location in the warehouse."""

from __future__ import annotations

import sys

from ...core.config import PostgresSettings, load
from ...core.sources import load_api_keys
from ...sarjapi.client import SarjApi
from ...sarjapi.settings import SarjApiSettings
from ..runner import sink_main
from ..warehouse.settings import WarehouseSettings
from .settings import RecordingsSettings
from .sink import RecordingsSink

DESCRIPTION = (
    "Download the recording of every call.ended event that has a recording_url (Sarj.ai: "
    "signed, expiring) while it is valid: streamed, size-capped, sha256 on the way, into "
    "a local directory or an S3-compatible bucket; then record the durable location in "
    "the warehouse (table recordings, calls.recording_location). Applies the warehouse "
    "migrations at start. An expired Sarj.ai URL (a 4xx) is fetched again with a fresh URL "
    "from Sarj.ai's call API when the source has a key (HOOKSTREAM_SARJ_API_*). Dead URLs "
    "and oversized recordings are dead-lettered; a failing source is retried via the "
    "retry topic. See docs/sinks-recordings.md.")


def build() -> RecordingsSink:
    settings = load(RecordingsSettings)
    settings.validate()
    api_settings = load(SarjApiSettings)
    api_settings.validate()
    api = None
    if api_settings.url:
        keys = load_api_keys(api_settings.sources_file) if api_settings.sources_file else {}
        api = SarjApi(api_settings, keys)
    return RecordingsSink(settings, load(PostgresSettings), load(WarehouseSettings), api=api)


def main(argv: list[str] | None = None) -> int:
    return sink_main("recordings", DESCRIPTION, build,
                     (RecordingsSettings, SarjApiSettings, WarehouseSettings, PostgresSettings),
                     argv)


if __name__ == "__main__":
    sys.exit(main())
