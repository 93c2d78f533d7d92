"""Stress a treated model: acute relapse (one-shot magnitude pruning) and chronic prune/maintain cycles.

``relapse(model, fraction=0.3) -> RelapseReport`` and ``chronic(model, tokenizer, mechanism, cycles, step, ...)
-> ChronicReport``; the unstructured L1-magnitude pruning they share is in :mod:`prunelab.stress.magnitude`, the
adapter merge and default evaluation in :mod:`prunelab.stress.common`.
"""

from prunelab.stress.chronic import ChronicReport, CycleResult, chronic, maintenance_records
from prunelab.stress.common import merge_adapter
from prunelab.stress.magnitude import (
    LayerSparsity,
    MagnitudeResult,
    apply_masks,
    cumulative_schedule,
    decoder_linears,
    magnitude_prune,
    measure_sparsity,
)
from prunelab.stress.relapse import RelapseReport, relapse

__all__ = [
    "ChronicReport", "CycleResult", "LayerSparsity", "MagnitudeResult", "RelapseReport", "apply_masks", "chronic",
    "cumulative_schedule", "decoder_linears", "magnitude_prune", "maintenance_records", "measure_sparsity",
    "merge_adapter", "relapse",
]
