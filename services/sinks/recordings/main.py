"""``hookstream-sink-recordings``: fetch the recordings events link to (signed, expiring
URLs) to a durable store and record the location in the warehouse."""

from __future__ import annotations

import sys

from ...core.config import PostgresSettings, load
from ...providers import PROVIDERS, settings_of
from ..runner import sink_main
from ..warehouse.settings import WarehouseSettings
from .settings import RecordingsSettings
from .sink import RecordingsSink

PROCESS = "hookstream-sink-recordings"
DESCRIPTION = (
    "Download the recording of every call.ended event that has a recording_url (signed, "
    "expiring) while it is valid: streamed, size-capped, sha256 on the way, into "
    "a local directory or an S3-compatible bucket; then record the durable location in "
    "the warehouse (table recordings, calls.recording_location). Applies the warehouse "
    "migrations at start. An expired URL (a 4xx) is fetched again with a fresh URL from "
    "the provider's call API where it has one and the source has a key (see the provider "
    "settings below). Dead URLs "
    "and oversized recordings are dead-lettered; a failing source is retried via the "
    "retry topic. See docs/sinks-recordings.md.")


def build() -> RecordingsSink:
    settings = load(RecordingsSettings)
    settings.validate()
    # Each provider's way to fresh recording URLs (ProviderSpec.recording_urls), if set up.
    apis = [api for spec in PROVIDERS.values() if spec.recording_urls is not None
            if (api := spec.recording_urls()) is not None]
    return RecordingsSink(settings, load(PostgresSettings), load(WarehouseSettings), apis=apis)


def main(argv: list[str] | None = None) -> int:
    return sink_main("recordings", DESCRIPTION, build,
                     (RecordingsSettings, *settings_of(PROCESS), WarehouseSettings,
                      PostgresSettings),
                     argv)


if __name__ == "__main__":
    sys.exit(main())
