"""Sarj.ai's share of ``hookstream load``: calls that end completed or not connected."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..base import LoadMix
from .adapter import NOT_CONNECTED

if TYPE_CHECKING:
    from ...devtools.samples import Sample


def conversation(rng: random.Random, by_event: Mapping[str, Sequence[Sample]]) -> list[Sample]:
    kind = "complete" if rng.random() < 0.6 else rng.choice(list(NOT_CONNECTED))
    return [by_event[kind][0]]


MIX = LoadMix(share=0.3, conversation=conversation)
