"""Sawt's share of ``hookstream load``: whole call lifecycles, now and then with a tool
failure."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..base import LoadMix

if TYPE_CHECKING:
    from ...devtools.samples import Sample


def conversation(rng: random.Random, by_event: Mapping[str, Sequence[Sample]]) -> list[Sample]:
    events = ["call.initializing", "call.started", "call.updated"]
    if rng.random() < 0.1:
        events.append(rng.choice(["tool.knowledge_base.failed", "tool.function.failed"]))
    events += ["call.ended", "call.analyzed"]
    return [by_event[e][0] for e in events]


MIX = LoadMix(share=0.4, conversation=conversation)
