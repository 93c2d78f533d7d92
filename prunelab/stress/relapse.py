"""Acute relapse (the recovery-isodose study's relapse test, its Table 2): merge any adapter, then prune 30% of
the remaining weights by L1 magnitude.

``relapse(model, fraction=0.3)`` zeroes ``round(fraction · nnz)`` of the smallest-|w| remaining weights of
every linear layer inside the decoder blocks (embeddings and ``lm_head`` untouched) and reports the
achieved share per layer, which must equal the request (to rounding of one weight). The study's
``relapse_drop = composite_treated − composite_after_relapse`` is computed by
:func:`prunelab.scores.relapse_drop` from evaluations before and after.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.scores import relapse_drop
from prunelab.stress.common import EvalFn, default_eval_fn, merge_adapter
from prunelab.stress.magnitude import LayerSparsity, _check_fraction, magnitude_prune, summarize
from prunelab.table import Table

__all__ = ["RelapseReport", "merge_adapter", "relapse"]


@dataclass
class RelapseReport:
    """Per-layer result of :func:`relapse`. Fractions are 0–1; ``max_deviation`` is the largest
    ``|pruned_fraction − fraction|`` over layers. The pruned (merged) model is ``report.model`` (not in JSON)."""

    fraction: float
    merged_adapter: bool
    layers: list[LayerSparsity]
    overall_sparsity: float
    min_pruned_fraction: float
    max_pruned_fraction: float
    max_deviation: float
    seconds: float
    scores_before: dict[str, float] = field(default_factory=dict)
    scores_after: dict[str, float] = field(default_factory=dict)
    relapse_drop: float | None = None

    model = None  # plain attribute (no annotation): the pruned model, excluded from dataclass fields / JSON

    def layer_table(self) -> Table:
        """Per layer: weights, zeros before and after, the share of the remaining weights pruned, sparsity."""
        columns = ["layer", "weights", "zeros before", "zeros after", "pruned of remaining", "sparsity"]
        rows = [[l.name, f"{l.numel:,}", f"{l.zeros_before:,}", f"{l.zeros_after:,}", f"{l.pruned_fraction:.3%}",
                 f"{l.sparsity:.3%}"] for l in self.layers]
        return Table(None, "relapse_layers", self.title(), columns, rows)

    def score_table(self) -> Table:
        """Each metric before and after the relapse pruning, and the change (NaN when not scored after)."""
        rows = []
        for metric, before in self.scores_before.items():
            after = self.scores_after.get(metric, float("nan"))
            rows.append([metric, f"{before:.2f}", f"{after:.2f}", f"{after - before:+.2f}"])
        return Table(None, "relapse_scores", "Scores before and after the relapse", ["metric", "before", "after",
                                                                                      "change"], rows)

    def title(self) -> str:
        return f"Acute relapse: L1-magnitude pruning of {self.fraction:.1%} of the remaining weights"

    def to_markdown(self) -> str:
        md = (f"# {self.title()}\n\n" + self.layer_table().pipe_table()
              + f"\nOverall sparsity {self.overall_sparsity:.3%}; max deviation from the request "
                f"{self.max_deviation:.4%}.\n")
        if self.scores_before:
            md += "\n" + self.score_table().pipe_table()
        if self.relapse_drop is not None:
            md += f"\nRelapse drop (composite, pp): {self.relapse_drop:+.2f}\n"
        return md


def relapse(model: nn.Module, fraction: float = 0.3, *, tokenizer: Any = None, tasks: Sequence[str] | None = None,
            limit: int | None = None, seed: int = 0, batch_size: int = 8,
            eval_fn: EvalFn | None = None) -> RelapseReport:
    """Merge any PEFT adapter, then L1-prune ``fraction`` of each decoder linear layer's nonzero weights.

    In place for plain models; a ``PeftModel`` is merged first and the plain pruned model is ``report.model``.
    With ``tasks`` (needs ``tokenizer``) or an ``eval_fn(model, tokenizer) -> {metric: %}``, the model is
    evaluated before and after; ``relapse_drop = composite_before − composite_after`` when the composite
    (``arc_easy_gen`` + ``lambada_gen``) is among the scores. Every input is checked before any work.
    """
    fraction = _check_fraction(fraction, "relapse fraction")
    if tasks is not None and eval_fn is None:
        from prunelab.evaluate import resolve_tasks

        if tokenizer is None:
            raise PrunelabError("evaluating before/after relapse needs the tokenizer")
        if limit is not None and limit <= 0:
            raise PrunelabError(f"eval limit must be a positive number of items, got {limit}")
        eval_fn = default_eval_fn(resolve_tasks(list(tasks)), limit, seed, batch_size)
    start = time.perf_counter()
    model, merged = merge_adapter(model)
    before = dict(eval_fn(model, tokenizer)) if eval_fn is not None else {}
    result = magnitude_prune(model, fraction=fraction)
    after = dict(eval_fn(model, tokenizer)) if eval_fn is not None else {}
    s = summarize(result.layers)
    # |deviation| ≤ 0.5 / nnz (rounding to whole weights): < 0.1% for any layer with ≥ 500 nonzero weights.
    deviation = max(abs(l.pruned_fraction - fraction) for l in result.layers)
    drop = relapse_drop(before["composite"], after["composite"]) if "composite" in before and "composite" in after else None
    report = RelapseReport(
        fraction=fraction, merged_adapter=merged, layers=result.layers, overall_sparsity=s.overall,
        min_pruned_fraction=s.min_pruned_fraction, max_pruned_fraction=s.max_pruned_fraction,
        max_deviation=deviation, seconds=time.perf_counter() - start, scores_before=before, scores_after=after,
        relapse_drop=drop,
    )
    report.model = model
    return report
