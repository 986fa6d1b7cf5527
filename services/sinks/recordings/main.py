"""``hookstream-sink-recordings``: fetch Sarj.ai's signed, expiring recording URLs to a
durable store and record the location in the warehouse."""

from __future__ import annotations

import sys

from ...core.config import PostgresSettings, load
from ...core.sink import sink_main
from ..warehouse.settings import WarehouseSettings
from .settings import RecordingsSettings
from .sink import RecordingsSink

DESCRIPTION = (
    "Download the recording of every call.ended event that has a recording_url (Sarj.ai: "
    "signed, expiring) while it is valid: streamed, size-capped, sha256 on the way, into "
    "a local directory or an S3-compatible bucket; then record the durable location in "
    "the warehouse (table recordings, calls.recording_location). Applies the warehouse "
    "migrations at start. Dead URLs and oversized recordings are dead-lettered; a failing "
    "source is retried via the retry topic. See docs/sinks-recordings.md.")


def build() -> RecordingsSink:
    settings = load(RecordingsSettings)
    settings.validate()
    return RecordingsSink(settings, load(PostgresSettings), load(WarehouseSettings))


def main(argv: list[str] | None = None) -> int:
    return sink_main("recordings", DESCRIPTION, build,
                     (RecordingsSettings, WarehouseSettings, PostgresSettings), argv)


if __name__ == "__main__":
    sys.exit(main())
