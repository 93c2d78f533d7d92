"""Multiple-choice calibration items for the depth-pruning ``margin`` objective (Wee et al., 2025).

The items come from a train or validation split of ARC, never the ``test`` split that evaluation samples, so
the blocks a search removes are not chosen on the items the pruned model is then scored on.
"""

from __future__ import annotations

from prunelab.data.loaders import MCItem, load_arc
from prunelab.data.sampling import seeded_sample
from prunelab.errors import PrunelabError

#: calibration source name -> ARC subset
_ARC_SUBSETS = {"arc_easy": "easy", "arc_challenge": "challenge"}


def load_mc_calibration(source: str = "arc_easy:validation", n_samples: int | None = 64,
                        seed: int = 0) -> list[MCItem]:
    """Seeded MC items for the margin objective from ``arc_easy|arc_challenge:train|validation``."""
    name, _, split = source.partition(":")
    split = split or "validation"
    if name not in _ARC_SUBSETS:
        raise PrunelabError(f"unknown margin calibration source '{name}'; use arc_easy or arc_challenge")
    if split == "test":
        raise PrunelabError("margin calibration must not use the test split (it is the evaluation split)")
    if split not in ("train", "validation"):
        raise PrunelabError(f"unknown split '{split}' for {name}; use train or validation")
    items = load_arc(_ARC_SUBSETS[name], split=split)
    if not items:
        raise PrunelabError(f"margin calibration source {source} is empty")
    return seeded_sample(items, n_samples, seed)
