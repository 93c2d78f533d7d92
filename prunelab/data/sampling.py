"""Seeded, reproducible subsets (the studies' "200 ARC / 100 LAMBADA questions" are seeded samples)."""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

from prunelab.errors import PrunelabError

T = TypeVar("T")

#: LAMBADA passages reserved for calibration (never evaluated): the last 1000 of the 5153 test passages.
LAMBADA_CALIBRATION_POOL = 1000


def seeded_sample(items: Sequence[T], limit: int | None, seed: int = 0) -> list[T]:
    """``limit`` items drawn without replacement with ``random.Random(seed)``, kept in their original order.

    ``limit=None`` returns everything. The same (items, limit, seed) always gives the same subset, and a larger
    limit with the same seed is not guaranteed to contain a smaller one (use the same limit to compare runs).
    """
    if limit is None:
        return list(items)
    if limit <= 0:
        raise PrunelabError(f"limit must be a positive number of items, got {limit}")
    if not items:
        raise PrunelabError("no items to sample from")
    if limit >= len(items):
        return list(items)
    idx = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in idx]


def split_lambada(items: Sequence[T]) -> tuple[list[T], list[T]]:
    """``(evaluation pool, calibration pool)``: calibration text is never evaluated text."""
    cut = max(0, len(items) - LAMBADA_CALIBRATION_POOL)
    return list(items[:cut]), list(items[cut:])
