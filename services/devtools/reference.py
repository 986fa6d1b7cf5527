"""The configuration reference of every service, generated from the settings classes.

    python -m hookstream.devtools.reference        # prints the Markdown the README embeds

``tests/unit/devtools/test_reference.py`` fails when the README's copy differs, so the
documented variables and defaults are always the ones the code reads.
"""

from __future__ import annotations

from typing import Any

from ..core.config import KafkaSettings, LogSettings, PostgresSettings, markdown_table
from ..ingest.settings import IngestSettings
from ..normalizer.settings import NormalizerSettings
from ..providers import PROVIDERS
from ..sinks.alerts.settings import AlertsSettings
from ..sinks.crm.settings import CRMSettings
from ..sinks.recordings.settings import RecordingsSettings
from ..sinks.runner import SinkSettings
from ..sinks.transcripts.settings import TranscriptsSettings
from ..sinks.warehouse.settings import WarehouseSettings

SECTIONS: list[tuple[str, tuple[type[Any], ...]]] = [
    ("Every process", (KafkaSettings, LogSettings)),
    ("PostgreSQL (normalizer, warehouse, recordings, transcripts)", (PostgresSettings,)),
    ("hookstream-ingest", (IngestSettings,)),
    ("hookstream-normalizer", (NormalizerSettings,)),
    ("Every sink worker", (SinkSettings,)),
    ("hookstream-sink-warehouse", (WarehouseSettings,)),
    ("hookstream-sink-alerts", (AlertsSettings,)),
    ("hookstream-sink-crm", (CRMSettings,)),
    ("hookstream-sink-recordings", (RecordingsSettings,)),
    ("hookstream-sink-transcripts", (TranscriptsSettings,)),
    # Each provider's own settings (ProviderSpec.settings), by provider.
    *((f"{spec.title} {s.label} ({', '.join(s.used_by)})", (s.cls,))
      for _, spec in sorted(PROVIDERS.items()) for s in spec.settings),
]

START = "<!-- config-reference:start (generated: python -m hookstream.devtools.reference) -->"
END = "<!-- config-reference:end -->"


def render() -> str:
    parts = []
    for title, classes in SECTIONS:
        parts.append(f"#### {title}\n\n{markdown_table(*classes)}\n")
    return "\n".join(parts)


def write_readme(path: str = "README.md") -> None:
    """Replace the README's section between the markers with :func:`render`."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{START}\n{render()}{END}{tail}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write"]:  # python -m hookstream.devtools.reference --write
        write_readme()
    else:
        print(render(), end="")
