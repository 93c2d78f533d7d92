"""Structured pruning: width (GLU neurons + GQA-aware heads, :mod:`.width`, :mod:`.adaptive`) and depth (blocks).

Imports are lazy (``prunelab.prune.prune_width`` loads :mod:`prunelab.prune.width` on first use), so each stage
registers its public names with one line in ``_LAZY`` and importing the package stays cheap.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CRITERIA": "prunelab.prune.criteria",
    "LayerScores": "prunelab.prune.criteria",
    "WidthPruneReport": "prunelab.prune.width",
    "prune_width": "prunelab.prune.width",
    "AdaptiveReport": "prunelab.prune.adaptive",
    "adapt_prune": "prunelab.prune.adaptive",
    "amplitude_ablation": "prunelab.prune.adaptive",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunelab.prune' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
