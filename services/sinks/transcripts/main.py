"""``hookstream-sink-transcripts``: fetch the transcripts events link to
(``transcript_url``) and store them with their session in the warehouse."""

from __future__ import annotations

import sys

from ...core.config import PostgresSettings, load
from ..runner import sink_main
from ..warehouse.settings import WarehouseSettings
from .settings import TranscriptsSettings
from .sink import TranscriptsSink

DESCRIPTION = (
    "Fetch the transcript of every session.ended (or session.errored) event that has a "
    "transcript_url: allow-listed hosts and public addresses only, "
    "streamed and size-capped; store the document in the warehouse (table transcripts) "
    "and its turns in calls.transcript. Applies the warehouse migrations at start. "
    "Refused URLs, gone or oversized transcripts and bodies that are not a transcript "
    "are dead-lettered; a failing source is retried via the retry topic. See "
    "docs/sinks-transcripts.md.")


def build() -> TranscriptsSink:
    settings = load(TranscriptsSettings)
    settings.validate()
    return TranscriptsSink(settings, load(PostgresSettings), load(WarehouseSettings))


def main(argv: list[str] | None = None) -> int:
    return sink_main("transcripts", DESCRIPTION, build,
                     (TranscriptsSettings, WarehouseSettings, PostgresSettings), argv)


if __name__ == "__main__":
    sys.exit(main())
