"""Saaya's settings of its own, read once at start from the environment."""

from __future__ import annotations

import dataclasses

from ...core.config import env


@dataclasses.dataclass(frozen=True)
class SaayaSettings:
    versions: tuple[str, ...] = env(
        "HOOKSTREAM_SAAYA_VERSIONS", (),
        "Saaya envelope versions accepted (comma list; empty: every version with schemas)")
