"""What the command families share: where the repository and the local sources file are."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO / "deploy" / "local" / "stack"
DEFAULT_SOURCES = os.environ.get("HOOKSTREAM_SOURCES_FILE", "deploy/local/sources.toml")
