"""Uniform width pruning: remove the lowest-scoring GLU neurons and (GQA-aware) attention heads of every layer.

Targets (per layer; hidden size is never pruned):

* ``ratio`` r: remove ``⌊r·I_l⌋`` neurons of a layer with I_l neurons (OptiPFair's count,
  ``int(pct/100·I)``), or ``expansion_ratio`` e: keep ``round(e·H)`` neurons (intermediate / hidden = e).
* kept widths are rounded *down* to a multiple of ``round_to`` (as OptiPFair's ``expansion_divisor``).
* ``heads_ratio`` h: remove ``⌊h·n_q⌋`` query heads; the kept count must factor as ``m·p`` with m ≤ n_kv kept KV
  groups of p ≤ group_size query heads each, so ``num_heads % num_kv_heads == 0`` holds afterwards.

Selection: the kept neurons are the top-k scores (``torch.topk``, as OptiPFair). For heads, every valid
``(m, p)`` is tried: each KV group keeps its p best query heads, the m groups with the largest
``kv score + kept head scores`` are kept, and the ``(m, p)`` keeping the largest total score wins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.adapters import HeadLayout, adapter_for
from prunelab.models.counts import count_parameters
from prunelab.models.surgery import prune_attention_heads, prune_mlp_neurons, sync_config
from prunelab.prune.calibration_stats import CalibrationStats, check_calibration, collect_statistics
from prunelab.prune.criteria import CRITERIA, LayerScores, check_criterion_use
from prunelab.prune.repair import DEFAULT_RIDGE, DEFAULT_TOKEN_WEIGHTS, REPAIRS, TOKEN_WEIGHTS, LayerPlan, RepairReport, check_repair, repair_width

_EPS = 1e-9  # guards int(r·n) against 0.29·100 = 28.999… style float error


@dataclass
class WidthPruneReport:
    """Result of :func:`prune_width` (the model is pruned in place)."""

    criterion: str
    ratio: float | None
    expansion_ratio: float | None
    heads_ratio: float
    round_to: int
    params_before: int
    params_after: int
    non_embedding_before: int
    non_embedding_after: int
    widths_before: list[int]
    widths_after: list[int]
    heads_before: list[int]
    heads_after: list[int]
    kv_heads_before: list[int]
    kv_heads_after: list[int]
    seconds: float
    score_seconds: float
    calibration_shape: list[int] | None = None
    #: kept neuron indices per layer (sorted, in the layer's numbering before pruning)
    kept_neurons: list[list[int]] = field(default_factory=list, repr=False)
    kept_heads: list[list[int]] = field(default_factory=list, repr=False)
    #: reconstruction repair applied after pruning (:mod:`prunelab.prune.repair`), None for ``repair="none"``
    repair: RepairReport | None = None

    @property
    def param_ratio(self) -> float:
        return self.params_after / self.params_before


# ----------------------------------------------------------------------------------------------------------
# planning (pure, validated before anything is modified)
# ----------------------------------------------------------------------------------------------------------
def round_down(k: int, multiple: int) -> int:
    return (k // multiple) * multiple


def head_options(layout: HeadLayout, keep: int) -> list[tuple[int, int]]:
    """GQA-valid ``(kept KV groups m, query heads per group p)`` with ``m·p == keep``."""
    return [(m, keep // m) for m in range(1, layout.num_kv_heads + 1)
            if keep % m == 0 and keep // m <= layout.group_size]


def valid_head_counts(layout: HeadLayout) -> list[int]:
    return sorted({m * p for m in range(1, layout.num_kv_heads + 1) for p in range(1, layout.group_size + 1)})


def plan_widths(widths: list[int], hidden: int, ratio: float | None, expansion_ratio: float | None,
                round_to: int) -> list[int]:
    """Kept MLP width per layer for a ratio or an expansion ratio (see module docstring); validates."""
    if ratio is not None and expansion_ratio is not None:
        raise PrunelabError("give either a pruning ratio or an expansion ratio, not both")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise PrunelabError(f"round_to must be a positive integer, got {round_to!r}")
    if ratio is None and expansion_ratio is None:
        return list(widths)
    kept = []
    if ratio is not None:
        if not 0.0 <= ratio < 1.0:
            raise PrunelabError(f"ratio must be in [0, 1), got {ratio}")
        for w in widths:
            k = w - int(ratio * w + _EPS)
            kept.append(round_down(k, round_to))
    else:
        own = max(widths) / hidden
        if not expansion_ratio > 0:
            raise PrunelabError(f"expansion ratio must be > 0, got {expansion_ratio}")
        target = int(round(expansion_ratio * hidden))
        if target >= max(widths):
            raise PrunelabError(
                f"expansion ratio {expansion_ratio} keeps {target} neurons, not fewer than the model's own "
                f"{max(widths)} (expansion {own:.3f}); give a smaller value"
            )
        kept = [round_down(min(w, target), round_to) for w in widths]
    for i, (w, k) in enumerate(zip(widths, kept)):
        if k < 1:
            what = f"ratio {ratio}" if ratio is not None else f"expansion ratio {expansion_ratio}"
            raise PrunelabError(
                f"{what} (round_to {round_to}) leaves layer {i} ({w} neurons) with 0 MLP neurons; use a smaller value"
            )
    return [min(k, w) for k, w in zip(kept, widths)]


def plan_heads(layouts: list[HeadLayout], heads_ratio: float) -> list[int]:
    """Kept query heads per layer for ``heads_ratio``; errors when GQA divisibility would break."""
    if not 0.0 <= heads_ratio < 1.0:
        raise PrunelabError(f"heads ratio must be in [0, 1), got {heads_ratio}")
    kept = []
    for i, lay in enumerate(layouts):
        k = lay.num_heads - int(heads_ratio * lay.num_heads + _EPS)
        if k < 1:
            raise PrunelabError(f"heads ratio {heads_ratio} leaves layer {i} with 0 attention heads")
        if not head_options(lay, k):
            raise PrunelabError(
                f"heads ratio {heads_ratio} keeps {k} of {lay.num_heads} query heads in layer {i}, which cannot be "
                f"split evenly over {lay.num_kv_heads} KV groups of {lay.group_size} (GQA needs num_heads % "
                f"num_kv_heads == 0); valid kept counts: {valid_head_counts(lay)}"
            )
        kept.append(k)
    return kept


# ----------------------------------------------------------------------------------------------------------
# selection
# ----------------------------------------------------------------------------------------------------------
def select_neurons(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, sorted (``torch.topk``, the same tie-breaking as OptiPFair)."""
    if keep >= scores.numel():
        return list(range(scores.numel()))
    return sorted(torch.topk(scores.float(), keep, largest=True).indices.tolist())


def best_heads_for(layout: HeadLayout, head_scores: torch.Tensor, kv_scores: torch.Tensor, m: int,
                   p: int) -> tuple[list[int], float]:
    """Best kept query heads with m KV groups of p heads each, and their total score (heads + KV groups)."""
    g = layout.group_size
    per_group = head_scores.float().reshape(layout.num_kv_heads, g)
    top = torch.topk(per_group, p, dim=1)
    group_total = top.values.sum(1) + kv_scores.float()
    groups = torch.topk(group_total, m).indices.tolist()
    heads = sorted(int(gi * g + top.indices[gi, j]) for gi in groups for j in range(p))
    return heads, float(group_total[groups].sum())


def select_heads(layout: HeadLayout, head_scores: torch.Tensor, kv_scores: torch.Tensor, keep: int) -> list[int]:
    """The GQA-valid set of ``keep`` query heads with the largest total score (see module docstring)."""
    if keep >= layout.num_heads:
        return list(range(layout.num_heads))
    best = max((best_heads_for(layout, head_scores, kv_scores, m, p) for m, p in head_options(layout, keep)),
               key=lambda hs: hs[1])
    return best[0]


def compute_scores(model: nn.Module, criterion: str, calibration: torch.Tensor | None, seed: int = 0,
                   batch_size: int = 8, progress: bool = True,
                   heads: bool = True) -> tuple[list[LayerScores], CalibrationStats | None]:
    """Scores of every group of every layer under ``criterion`` (running calibration if it needs data)."""
    crit = CRITERIA.get(criterion)
    if crit.selects_in_repair:  # before any calibration pass: its scoring function is the refusal
        return crit(model, None, seed, heads), None
    stats = None
    if crit.needs:
        if calibration is None:
            raise PrunelabError(f"criterion '{criterion}' needs calibration data (pass a tokenizer or a batch)")
        stats = collect_statistics(model, calibration, activations="activations" in crit.needs,
                                   gradients="gradients" in crit.needs, batch_size=batch_size, progress=progress)
    return crit(model, stats, seed, heads), stats


def resolve_calibration(tokenizer, calibration, n_samples: int, seq_len: int, source: str, seed: int):
    """The calibration batch to use: the given tensor, or ``calibration_batch(tokenizer, ...)``."""
    if calibration is not None:
        return check_calibration(calibration)
    if tokenizer is None:
        raise PrunelabError("this criterion needs calibration data: pass a tokenizer or a calibration batch")
    from prunelab.data.calibration import calibration_batch

    return calibration_batch(tokenizer, n_samples=n_samples, seq_len=seq_len, source=source, seed=seed)


# ----------------------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------------------
def prune_width(
    model: nn.Module,
    tokenizer=None,
    criterion: str = "maw",
    ratio: float | None = None,
    expansion_ratio: float | None = None,
    heads_ratio: float = 0.0,
    round_to: int = 1,
    calibration: torch.Tensor | None = None,
    seed: int = 0,
    *,
    calibration_samples: int = 128,
    calibration_seq_len: int = 128,
    calibration_source: str = "lambada",
    batch_size: int = 8,
    progress: bool = True,
    repair: str = "none",
    ridge: float | None = DEFAULT_RIDGE,
    repair_target: str = "layer",
    token_weights: str = DEFAULT_TOKEN_WEIGHTS,
) -> WidthPruneReport:
    """Prune every layer's MLP neurons (and optionally attention heads) in place by ``criterion``.

    Every input is validated before the model is touched. Data-driven criteria (``*_hybrid``, ``taylor``) use
    ``calibration`` ([n, L] token ids) or, if None, ``calibration_batch(tokenizer, calibration_samples,
    calibration_seq_len, calibration_source, seed)``. ``repair`` (``none``, ``bias``, ``ls``, ``ls+bias``) re-fits
    the kept weights layer by layer on the same calibration batch (:func:`prunelab.prune.repair.repair_width`,
    relative ridge ``ridge``; ``token_weights`` uniform or normalized, :data:`prunelab.prune.repair.TOKEN_WEIGHTS`).
    """
    start = time.perf_counter()
    crit = check_criterion_use(criterion, repair, repair_target)
    TOKEN_WEIGHTS.get(token_weights)
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    widths = [adapter.mlp_width(layer) for layer in layers]
    layouts = [adapter.head_layout(layer) for layer in layers]
    hidden = model.config.hidden_size
    if ratio is None and expansion_ratio is None and not heads_ratio:
        raise PrunelabError("nothing to prune: give a ratio, an expansion ratio or a heads ratio")
    kept_widths = plan_widths(widths, hidden, ratio, expansion_ratio, round_to)
    kept_heads_n = plan_heads(layouts, heads_ratio)
    fix = REPAIRS.get(repair)
    if crit.needs or fix.active:
        calibration = resolve_calibration(tokenizer, calibration, calibration_samples, calibration_seq_len,
                                          calibration_source, seed)
    pruned_mlp = [k < w for k, w in zip(kept_widths, widths)]
    pruned_attn = [k < lay.num_heads for k, lay in zip(kept_heads_n, layouts)]
    check_repair(model, repair, ridge, calibration, any(pruned_mlp), any(pruned_attn),
                 max([k for k, p in zip(kept_widths, pruned_mlp) if p]
                     + [k * lay.head_dim for k, lay, p in zip(kept_heads_n, layouts, pruned_attn) if p], default=0),
                 target=repair_target)
    before = count_parameters(model)

    t0 = time.perf_counter()
    kept_neurons, kept_heads = [], []
    if crit.selects_in_repair:  # chosen layer by layer inside repair_width; until then every layer stays whole
        kept_neurons = [list(range(w)) for w in widths]
        kept_heads = [list(range(lay.num_heads)) for lay in layouts]
    else:
        scores, _ = compute_scores(model, criterion, calibration, seed, batch_size, progress,
                                   heads=any(k < lay.num_heads for k, lay in zip(kept_heads_n, layouts)))
        for i in range(len(layers)):
            kept_neurons.append(select_neurons(scores[i].mlp, kept_widths[i]))
            kept_heads.append(select_heads(layouts[i], scores[i].heads, scores[i].kv, kept_heads_n[i]))
    score_seconds = time.perf_counter() - t0
    # surgery only after every layer's selection is known (scores refer to the unpruned model)
    def surgery(i: int) -> nn.Module:
        dense = adapter.layers(model)[i]
        if len(kept_neurons[i]) < widths[i]:
            prune_mlp_neurons(model, i, kept_neurons[i])
        if len(kept_heads[i]) < layouts[i].num_heads:
            prune_attention_heads(model, i, kept_heads[i])
        return dense

    repair_report = None
    if fix.active:  # layer by layer: layer i is pruned right before it is repaired, one dense layer alive at a time
        if crit.selects_in_repair:
            plans = [LayerPlan(select_neurons=kept_widths[i] if pruned_mlp[i] else None,
                               select_heads=kept_heads_n[i] if pruned_attn[i] else None) for i in range(len(layers))]
        else:
            plans = [LayerPlan(kept_neurons[i] if pruned_mlp[i] else None, kept_heads[i] if pruned_attn[i] else None)
                     for i in range(len(layers))]

        def choose_heads(i: int, cost: torch.Tensor) -> list[int]:
            # keep the GQA-valid set of largest total removal cost; KV groups carry no cost of their own
            return select_heads(layouts[i], cost, torch.zeros(layouts[i].num_kv_heads), kept_heads_n[i])

        repair_report = repair_width(model, calibration, plans, surgery, repair, ridge, batch_size=batch_size,
                                     progress=progress, target=repair_target, choose_heads=choose_heads,
                                     token_weights=token_weights)
        for i, chosen in repair_report.kept_neurons.items():
            kept_neurons[i] = chosen
        for i, chosen in repair_report.kept_heads.items():
            kept_heads[i] = chosen
    else:
        for i in range(len(layers)):
            surgery(i)
    sync_config(model)
    after = count_parameters(model)
    new_layouts = [adapter.head_layout(layer) for layer in adapter.layers(model)]
    return WidthPruneReport(
        criterion=criterion, ratio=ratio, expansion_ratio=expansion_ratio, heads_ratio=heads_ratio,
        round_to=round_to, params_before=before.total, params_after=after.total,
        non_embedding_before=before.non_embedding, non_embedding_after=after.non_embedding,
        widths_before=widths, widths_after=[adapter.mlp_width(layer) for layer in adapter.layers(model)],
        heads_before=[lay.num_heads for lay in layouts], heads_after=[lay.num_heads for lay in new_layouts],
        kv_heads_before=[lay.num_kv_heads for lay in layouts], kv_heads_after=[lay.num_kv_heads for lay in new_layouts],
        seconds=time.perf_counter() - start, score_seconds=score_seconds,
        calibration_shape=list(calibration.shape) if calibration is not None and (crit.needs or fix.active) else None,
        kept_neurons=kept_neurons, kept_heads=kept_heads, repair=repair_report,
    )
