"""Depth pruning: choose ``k`` blocks to remove by a search under a calibration objective, then remove them.

``S* = argmin_{|S|=k} L(D; θ ⊙ m_S)`` ("Rethinking Layer Redundancy", eq. 2). Objectives live in
:mod:`prunelab.prune.depth_objectives` (:data:`OBJECTIVES`: ``perplexity``, ``margin``), the cached
:class:`BlockEvaluator` in :mod:`prunelab.prune.block_evaluator`, searches in :mod:`prunelab.prune.depth_search`
(:data:`SEARCHES`: ``one-shot``, ``greedy``, ``beam``, ``ga``, ``bo``, ``cbo``, ``fast-block-select``). Block
removal itself is the foundation's :func:`prunelab.models.surgery.remove_layers` (renumbers ``layer_idx`` for the
KV cache, updates ``num_hidden_layers`` and ``layer_types``).

    res = search_blocks(model, k=7, objective="perplexity", search="greedy", tokenizer=tok)
    remove_layers(model, res.removed)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunelab.data.mc_calibration import load_mc_calibration
from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for
from prunelab.models.surgery import remove_layers
from prunelab.prune.block_evaluator import BlockEvaluator, blocks_removed
from prunelab.prune.depth_objectives import OBJECTIVES, Objective
from prunelab.prune.depth_search import SEARCH_DEFAULTS, SEARCHES, minimise_quadratic
from prunelab.prune.repair import DEFAULT_RIDGE, DEFAULT_TOKEN_WEIGHTS

__all__ = [
    "OBJECTIVES", "SEARCHES", "SEARCH_DEFAULTS", "SearchResult", "BlockEvaluator", "Objective",
    "search_blocks", "build_objective", "prune_depth", "remove_layers", "blocks_removed",
    "load_mc_calibration", "minimise_quadratic", "validate_budget",
]


@dataclass
class SearchResult:
    """Outcome of one depth search.

    ``mask[i]`` is ``(m_S)_i = 1[i ∉ S]`` (True = block kept); ``objective_value = L(S)`` and
    ``baseline_value = L(∅)`` (dense); ``candidates`` = distinct removed sets evaluated (incl. the final one);
    ``seconds`` = wall time of the search (calibration preparation excluded).
    """

    search: str
    objective: str
    k: int
    n_blocks: int
    removed: list[int]
    mask: list[bool]
    objective_value: float
    baseline_value: float
    candidates: int
    seconds: float
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


def validate_budget(k: int, n_blocks: int) -> None:
    """``1 ≤ k < n_blocks`` or a clear error."""
    if k <= 0:
        raise PrunelabError(f"--remove must be at least 1 block, got {k}")
    if k >= n_blocks:
        raise PrunelabError(f"cannot remove {k} of {n_blocks} blocks: at least one block must remain")


def build_objective(model: nn.Module, tokenizer, objective: str, calibration=None, **options) -> Objective:
    """Objective ``objective`` over ``calibration`` (token ids for perplexity, MC items for margin), or over
    the default calibration (LAMBADA calibration pool / ARC-Easy validation) sized by ``options``."""
    factory = OBJECTIVES.get(objective)
    if calibration is not None and len(calibration) == 0:
        raise PrunelabError("empty calibration set")
    if calibration is None and tokenizer is None:
        raise PrunelabError("a tokenizer is needed to build the default calibration set")
    return factory(model, tokenizer, calibration=calibration, **options)


def search_blocks(model: nn.Module, k: int, objective: str | Objective = "perplexity", search: str = "greedy",
                  calibration=None, seed: int = 0, tokenizer=None, options: dict[str, Any] | None = None,
                  calibration_options: dict[str, Any] | None = None, cached: bool = True,
                  cache_bytes: int = 2 << 30, batch_tokens: int = 8192, screen: bool = True,
                  progress: bool = True,
                  on_evaluate: Callable[[int], None] | None = None, compensate: str = "none",
                  ridge: float | None = DEFAULT_RIDGE, token_weights: str = DEFAULT_TOKEN_WEIGHTS) -> SearchResult:
    """Find ``k`` blocks to remove from ``model`` (not modified) with ``search`` under ``objective``.

    ``options`` override the search's study defaults (:data:`SEARCH_DEFAULTS`, e.g. ``{"trials": 50}`` for
    BO); ``calibration_options`` size the default calibration (``n_samples``, ``seq_len``, ``source``,
    ``mc_source``, ``batch_size``). ``batch_tokens`` caps the calibration tokens of candidates stacked into one
    block call (:meth:`BlockEvaluator.evaluate_many`; 0 evaluates one candidate at a time). ``screen`` lets
    greedy, beam and one-shot skip the full objective of candidates whose cheap lower bound already loses
    (:meth:`BlockEvaluator.best_of`; the result is the same). Every input is validated before any work.

    ``compensate`` (``linear`` / ``scale``, :mod:`prunelab.prune.depth_repair`) scores every candidate *after*
    compensation (:class:`~prunelab.prune.depth_repair.CompensatedEvaluator`), so the search picks blocks that are
    removable after repair; perplexity objective and one-shot / greedy / beam only. Cost: each candidate ``S`` is
    fitted and scored from scratch — ``3n − 2|S|`` uncached block passes over the calibration tokens (a dense and a
    pruned pass for the fit, one for the objective; ≈ 2.5 full forwards at k = 7 of n = 30) instead of the few cached
    blocks :class:`BlockEvaluator` runs, plus one ``H × H`` solve per run for ``linear``. Greedy evaluates
    ``Σ_{j<k} (n − j)`` candidates (189 for k = 7 of 30 blocks, ≈ 470 full forwards), one-shot ``n``; on SmolLM2-135M
    with 32 × 128 calibration tokens on 2 CPU cores that is ≈ 1 h for greedy instead of ≈ 10 min (an estimate from
    these pass counts and the measured block time, not a measurement).
    """
    fn = SEARCHES.get(search)
    if not isinstance(objective, Objective):
        OBJECTIVES.get(objective)
    from prunelab.prune.depth_repair import COMPENSATED_SEARCHES, COMPENSATIONS, CompensatedEvaluator

    COMPENSATIONS.get(compensate)
    if compensate != "none":
        if search not in COMPENSATED_SEARCHES:
            raise PrunelabError(f"a compensated search supports {', '.join(COMPENSATED_SEARCHES)}, not '{search}'")
        if (objective.name if isinstance(objective, Objective) else objective) != "perplexity":
            raise PrunelabError("a compensated search needs the perplexity objective (calibration token windows)")
        if ridge is not None and not ridge >= 0:
            raise PrunelabError(f"ridge must be ≥ 0, got {ridge}")
        from prunelab.prune.depth_repair import check_family

        check_family(model, compensate)
    n = len(adapter_for(model).layers(model))
    validate_budget(k, n)
    opts = dict(SEARCH_DEFAULTS.get(search, {}))
    for key, val in (options or {}).items():
        if key not in opts:
            raise PrunelabError(f"search '{search}' has no option '{key}'; options: {', '.join(opts) or 'none'}")
        opts[key] = type(opts[key])(val)
    obj = objective if isinstance(objective, Objective) else build_objective(
        model, tokenizer, objective, calibration, seed=seed, **(calibration_options or {}))

    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                       console=Console(stderr=True), transient=True)
        task = bar.add_task(f"{search} / {obj.name}: 0 candidates")

        def tick(c: int) -> None:
            bar.update(task, description=f"{search} / {obj.name}, k={k}: {c} candidates")
            if on_evaluate:
                on_evaluate(c)

        callback = tick
    else:
        callback = on_evaluate
    if compensate != "none":
        import torch

        tokens = torch.cat([b.input_ids for b in obj.batches])
        ev = CompensatedEvaluator(model, obj, tokens, compensate, ridge, batch_size=len(obj.batches[0].input_ids),
                                  on_evaluate=callback, token_weights=token_weights)
    else:
        ev = BlockEvaluator(model, obj, cached=cached, cache_bytes=cache_bytes, on_evaluate=callback,
                            batch_tokens=batch_tokens, screen=screen)
    try:
        if bar:
            bar.start()
        start = time.perf_counter()
        removed = sorted(int(i) for i in fn(ev, k, seed=seed, **opts))
        value = ev(removed)
        seconds = time.perf_counter() - start
        candidates, requests, blocks_run = ev.candidates, ev.requests, ev.blocks_run
        baseline = ev([])  # after the clock: the dense value is a reference, not part of the search
    finally:
        if bar:
            bar.stop()
        model.train(was_training)
    if len(set(removed)) != k:
        raise AssertionError(f"search {search} returned {removed}, not {k} distinct blocks")  # a bug, not user error
    return SearchResult(
        search=search, objective=obj.name, k=k, n_blocks=n, removed=removed,
        mask=[i not in set(removed) for i in range(n)], objective_value=value, baseline_value=baseline,
        candidates=candidates, seconds=seconds, seed=seed, options=opts,
        stats={"requests": requests, "blocks_run": blocks_run, "cache_hits": ev.cache_hits,
               "cached": cached, "batch_tokens": batch_tokens if cached else 0, "screened": ev.screened,
               **ev.notes},
    )


def prune_depth(model: nn.Module, tokenizer, k: int, objective: str = "perplexity", search: str = "greedy",
                calibration=None, seed: int = 0, *, compensate: str = "none", ridge: float | None = DEFAULT_RIDGE,
                compensate_calibration=None, token_weights: str = DEFAULT_TOKEN_WEIGHTS, **kwargs) -> SearchResult:
    """:func:`search_blocks` then :func:`remove_layers` in place; returns the search result.

    ``compensate`` (``none``, ``linear``, ``scale``; :mod:`prunelab.prune.depth_repair`) folds a compensation for the
    removed blocks into the kept weights, fitted on ``compensate_calibration`` (token ids ``[n, L]``; default: the
    perplexity calibration tokens when the objective is perplexity). Its report is ``res.stats["compensation"]``.
    """
    from prunelab.prune.depth_repair import check_compensation, check_family, compensate_and_remove

    check_family(model, compensate)  # a family refusal comes before the search, not after it
    if compensate != "none" and compensate_calibration is None:
        if calibration is None or not hasattr(calibration, "numel"):
            raise PrunelabError("--compensate needs calibration token ids (pass compensate_calibration)")
        compensate_calibration = calibration
    res = search_blocks(model, k, objective, search, calibration=calibration, seed=seed, tokenizer=tokenizer,
                        **kwargs)
    if compensate == "none":
        remove_layers(model, res.removed)
        return res
    check_compensation(model, res.removed, compensate, ridge, compensate_calibration)
    comp = compensate_and_remove(model, res.removed, compensate_calibration, compensate, ridge,
                                 progress=kwargs.get("progress", True), token_weights=token_weights)
    res.stats["compensation"] = comp
    return res
