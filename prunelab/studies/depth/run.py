"""Run the depth-pruning study (objectives × searches × budgets), as in "Rethinking Layer Redundancy".

For every budget ``k``, objective and search: find ``S`` with :func:`prunelab.prune.depth.search_blocks`, remove
the blocks from a copy of the model and evaluate it with :func:`prunelab.evaluate.evaluate` on accuracy tasks
(percent) and perplexity tasks. Per (k, objective) the study keeps the inter-method variance of the average
accuracy ``σ² = (1/M) Σ_m (acc_m − mean)²``, and per budget the Spearman ρ between the perplexity rank and the
accuracy rank of the perplexity-pruned models.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.prune.depth import (OBJECTIVES, SEARCHES, Objective, SearchResult, build_objective, search_blocks,
                                  validate_budget)

#: (accuracy per task, perplexity per task, per-item outcomes per task) of one evaluated model
Evaluation = tuple[dict[str, float], dict[str, float], dict[str, list[Any]]]


@dataclass
class StudyRow:
    """One (k, objective, search) cell: the search result and the pruned model's evaluation."""

    k: int
    objective: str
    search: str
    result: SearchResult | None
    accuracy: dict[str, float] = field(default_factory=dict)
    perplexity: dict[str, float] = field(default_factory=dict)
    #: per-item outcomes per task (``TaskResult.outcomes``): what the comparisons' CIs are computed from
    outcomes: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def avg_accuracy(self) -> float:
        return statistics.fmean(self.accuracy.values()) if self.accuracy else math.nan

    @property
    def avg_perplexity(self) -> float:
        return statistics.fmean(self.perplexity.values()) if self.perplexity else math.nan


@dataclass
class DepthStudy:
    """All rows (``k = 0`` is the dense baseline) plus the settings that produced them."""

    model: str
    removes: list[int]
    objectives: list[str]
    searches: list[str]
    acc_tasks: list[str]
    ppl_tasks: list[str]
    settings: dict[str, Any]
    rows: list[StudyRow]
    spearman: dict[str, dict[str, float]] = field(default_factory=dict)
    variance: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _evaluate(model, tokenizer, acc_tasks, ppl_tasks, eval_limit, ppl_windows, seed, batch_size) -> Evaluation:
    from prunelab.evaluate import evaluate

    acc, ppl, outcomes = {}, {}, {}
    if acc_tasks:
        rep = evaluate(model, tokenizer, acc_tasks, limit=eval_limit, seed=seed, batch_size=batch_size)
        acc = {t: rep.score(t) for t in acc_tasks}
        outcomes.update({t: list(rep.results[t].outcomes) for t in acc_tasks})
    if ppl_tasks:
        rep = evaluate(model, tokenizer, ppl_tasks, limit=ppl_windows, seed=seed, batch_size=batch_size)
        ppl = {t: rep.score(t) for t in ppl_tasks}
        outcomes.update({t: list(rep.results[t].outcomes) for t in ppl_tasks})
    return acc, ppl, outcomes


def spearman_ranks(rows: list[StudyRow]) -> dict[str, float]:
    """Spearman ρ between perplexity rank (1 = lowest) and accuracy rank (1 = highest) across ``rows``."""
    from scipy.stats import rankdata, spearmanr

    ppl = [r.avg_perplexity for r in rows]
    acc = [r.avg_accuracy for r in rows]
    if len(rows) < 3 or any(math.isnan(v) for v in ppl + acc):
        return {"rho": math.nan, "p": math.nan, "n": len(rows)}
    pr, ar = rankdata(ppl), rankdata([-a for a in acc])
    if len(set(pr)) == 1 or len(set(ar)) == 1:  # a constant ranking has no correlation
        return {"rho": math.nan, "p": math.nan, "n": len(rows)}
    res = spearmanr(pr, ar)
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": len(rows)}


def _check_inputs(model, removes: list[int], objectives: list[str], searches: list[str], acc_tasks: list[str],
                  ppl_tasks: list[str], search_options: dict[str, dict[str, Any]]) -> None:
    """Every task, objective, search and budget name is checked before any work (an unknown one raises)."""
    from prunelab.evaluate import resolve_tasks
    from prunelab.models import adapter_for

    if acc_tasks:
        resolve_tasks(acc_tasks)
    if ppl_tasks:
        resolve_tasks(ppl_tasks)
    for o in objectives:
        OBJECTIVES.get(o)
    for s in searches:
        SEARCHES.get(s)
    if not removes or not objectives or not searches:
        raise PrunelabError("the study needs at least one budget, one objective and one search")
    n = len(adapter_for(model).layers(model))
    for k in removes:
        validate_budget(k, n)
    for s in search_options:
        SEARCHES.get(s)


def _variance(rows: list[StudyRow], removes: list[int], objectives: list[str]) -> dict[str, float]:
    """``{"k=K/OBJECTIVE": σ²}``: population variance of the average accuracy over the searches of a cell."""
    out = {}
    for k in removes:
        for objective in objectives:
            accs = [r.avg_accuracy for r in rows if r.k == k and r.objective == objective
                    and not math.isnan(r.avg_accuracy)]
            if accs:
                out[f"k={k}/{objective}"] = statistics.pvariance(accs)
    return out


def _spearman(rows: list[StudyRow], removes: list[int]) -> dict[str, dict[str, float]]:
    """``{"k=K": spearman_ranks(...)}`` over the perplexity-pruned models of each budget."""
    out = {}
    for k in removes:
        ppl_rows = [r for r in rows if r.k == k and r.objective == "perplexity"]
        if ppl_rows:
            out[f"k={k}"] = spearman_ranks(ppl_rows)
    return out


def run_depth_study(model, tokenizer, removes: list[int], objectives: list[str], searches: list[str],
                    acc_tasks: list[str] | None = None, ppl_tasks: list[str] | None = None,
                    eval_limit: int | None = 100, ppl_windows: int | None = 8, seed: int = 0,
                    calibration_options: dict[str, dict[str, Any]] | None = None,
                    search_options: dict[str, dict[str, Any]] | None = None, eval_batch_size: int = 8,
                    model_name: str = "model", progress: Callable[[str], None] | None = None) -> DepthStudy:
    """Run the study; ``calibration_options[objective]`` and ``search_options[search]`` are passed through
    to :func:`search_blocks`. Every name and budget is validated before any work."""
    from prunelab.models.surgery import remove_layers

    acc_tasks = list(acc_tasks if acc_tasks is not None else ["arc_easy"])
    ppl_tasks = list(ppl_tasks if ppl_tasks is not None else ["wikitext2"])
    calibration_options = calibration_options or {}
    search_options = search_options or {}
    _check_inputs(model, removes, objectives, searches, acc_tasks, ppl_tasks, search_options)
    say = progress or (lambda msg: None)

    def evaluate(m) -> Evaluation:
        return _evaluate(m, tokenizer, acc_tasks, ppl_tasks, eval_limit, ppl_windows, seed, eval_batch_size)

    start = time.perf_counter()
    say("evaluating the dense model")
    rows = [StudyRow(0, "-", "dense", None, *evaluate(model))]
    evaluated: dict[tuple[int, ...], Evaluation] = {}
    built: dict[str, Objective] = {}
    for k in removes:
        for objective in objectives:
            for search in searches:
                say(f"k={k} {objective} {search}: searching")
                if objective not in built:  # build each calibration set once; searches share it
                    built[objective] = build_objective(model, tokenizer, objective, seed=seed,
                                                       **calibration_options.get(objective, {}))
                res = search_blocks(
                    model, k, built[objective], search, seed=seed, options=search_options.get(search),
                    progress=False,
                    on_evaluate=lambda c, k=k, o=objective, s=search: say(f"k={k} {o} {s}: {c} candidates"))
                key = tuple(res.removed)
                if key not in evaluated:  # identical masks (one-shot = fast-block-select, ...) evaluate once
                    say(f"k={k} {objective} {search}: evaluating blocks {res.removed}")
                    pruned = remove_layers(copy.deepcopy(model), res.removed)
                    evaluated[key] = evaluate(pruned)
                    del pruned
                rows.append(StudyRow(k, objective, search, res, *evaluated[key]))
    return DepthStudy(model=model_name, removes=list(removes), objectives=list(objectives),
                      searches=list(searches), acc_tasks=acc_tasks, ppl_tasks=ppl_tasks,
                      settings={"eval_limit": eval_limit, "ppl_windows": ppl_windows, "seed": seed,
                                "calibration_options": calibration_options, "search_options": search_options},
                      rows=rows, spearman=_spearman(rows, removes), variance=_variance(rows, removes, objectives),
                      seconds=time.perf_counter() - start)
