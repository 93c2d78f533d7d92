"""The depth-pruning study (objectives × searches × budgets), as in "Rethinking Layer Redundancy".

For every budget ``k``, objective and search: find ``S`` with :func:`prunelab.prune.depth.search_blocks`, remove
the blocks from a copy of the model and evaluate it with :func:`prunelab.evaluate.evaluate` on accuracy tasks
(percent) and perplexity tasks. :func:`write_study` writes, atomically into one directory:

* ``accuracy.md/.csv`` — accuracy per task and average, calibration objective value, removed blocks; plus the
  inter-method variance ``σ² = (1/M) Σ_m (acc_m − mean)²`` of the average accuracy per (k, objective);
* ``perplexity.md/.csv`` — perplexity per task and average;
* ``time_vs_accuracy.md/.csv`` — search wall time, candidates evaluated, average accuracy;
* ``comparisons.md/.csv/.json`` — each search vs the best search of its (k, objective) and each objective vs the
  first objective at the same (k, search), as differences with 95 % CIs from the per-item outcomes
  (:mod:`prunelab.report.comparisons`: accuracy paired by item, perplexity as a ratio bootstrapped over windows),
  ``*`` for p < 0.05, and the minimum detectable accuracy difference at the evaluated size;
* ``masks_<objective>.png`` — search × layer grid of removed blocks per budget;
* ``rank_scatter.png`` — perplexity rank vs accuracy rank of the perplexity-pruned models per budget with
  Spearman ρ (``scipy.stats.spearmanr``);
* ``results.json`` — everything above, machine-readable.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.prune.depth import OBJECTIVES, SEARCHES, SearchResult, search_blocks, validate_budget


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


def _evaluate(model, tokenizer, acc_tasks, ppl_tasks, eval_limit, ppl_windows, seed, batch_size):
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


def run_depth_study(model, tokenizer, removes: list[int], objectives: list[str], searches: list[str],
                    acc_tasks: list[str] | None = None, ppl_tasks: list[str] | None = None,
                    eval_limit: int | None = 100, ppl_windows: int | None = 8, seed: int = 0,
                    calibration_options: dict[str, dict[str, Any]] | None = None,
                    search_options: dict[str, dict[str, Any]] | None = None, eval_batch_size: int = 8,
                    model_name: str = "model", progress: Callable[[str], None] | None = None) -> DepthStudy:
    """Run the study; ``calibration_options[objective]`` and ``search_options[search]`` are passed through
    to :func:`search_blocks`. Every name and budget is validated before any work."""
    from prunelab.evaluate import resolve_tasks
    from prunelab.models import adapter_for
    from prunelab.models.surgery import remove_layers

    acc_tasks = list(acc_tasks if acc_tasks is not None else ["arc_easy"])
    ppl_tasks = list(ppl_tasks if ppl_tasks is not None else ["wikitext2"])
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
    calibration_options = calibration_options or {}
    search_options = search_options or {}
    for s in search_options:
        SEARCHES.get(s)
    say = progress or (lambda msg: None)

    start = time.perf_counter()
    say("evaluating the dense model")
    acc, ppl, outs = _evaluate(model, tokenizer, acc_tasks, ppl_tasks, eval_limit, ppl_windows, seed, eval_batch_size)
    rows = [StudyRow(0, "-", "dense", None, acc, ppl, outs)]
    evaluated: dict[tuple[int, ...], tuple[dict, dict, dict]] = {}
    objs = {}
    for k in removes:
        for objective in objectives:
            for search in searches:
                say(f"k={k} {objective} {search}: searching")
                if objective not in objs:  # build each calibration set once; searches share it
                    from prunelab.prune.depth import build_objective

                    objs[objective] = build_objective(model, tokenizer, objective, seed=seed,
                                                      **calibration_options.get(objective, {}))
                res = search_blocks(
                    model, k, objs[objective], search, seed=seed, options=search_options.get(search),
                    progress=False,
                    on_evaluate=lambda c, k=k, o=objective, s=search: say(f"k={k} {o} {s}: {c} candidates"))
                key = tuple(res.removed)
                if key not in evaluated:  # identical masks (one-shot = fast-block-select, ...) evaluate once
                    say(f"k={k} {objective} {search}: evaluating blocks {res.removed}")
                    pruned = remove_layers(copy.deepcopy(model), res.removed)
                    evaluated[key] = _evaluate(pruned, tokenizer, acc_tasks, ppl_tasks, eval_limit, ppl_windows,
                                               seed, eval_batch_size)
                    del pruned
                rows.append(StudyRow(k, objective, search, res, *evaluated[key]))
    study = DepthStudy(model=model_name, removes=list(removes), objectives=list(objectives),
                       searches=list(searches), acc_tasks=acc_tasks, ppl_tasks=ppl_tasks,
                       settings={"eval_limit": eval_limit, "ppl_windows": ppl_windows, "seed": seed,
                                 "calibration_options": calibration_options, "search_options": search_options},
                       rows=rows)
    for k in removes:
        for objective in objectives:
            cell = [r for r in rows if r.k == k and r.objective == objective]
            accs = [r.avg_accuracy for r in cell if not math.isnan(r.avg_accuracy)]
            if accs:
                study.variance[f"k={k}/{objective}"] = statistics.pvariance(accs)
        ppl_rows = [r for r in rows if r.k == k and r.objective == "perplexity"]
        if ppl_rows:
            study.spearman[f"k={k}"] = spearman_ranks(ppl_rows)
    study.seconds = time.perf_counter() - start
    return study


# ----------------------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> tuple[str, str]:
    """``(markdown, csv)`` of the same rows."""
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows([[v if not isinstance(v, float) else repr(v) for v in row] for row in rows])
    return "\n".join(md) + "\n", buf.getvalue()


def _row_id(r: StudyRow) -> str:
    return f"{r.k}/{r.objective}/{r.search}"


def comparison_table(study: DepthStudy):
    """Each search vs the best search of its (k, objective) — highest average accuracy, or lowest average
    perplexity without accuracy tasks — and each objective vs the first objective at the same (k, search), as a
    :class:`prunelab.report.tables.Table` (``None`` with nothing to compare).

    Accuracy: the difference in average accuracy over the accuracy tasks (pp), paired by item, CI by a
    bootstrap resampling each task's items (:func:`prunelab.stats.composite_difference`; one task:
    :func:`prunelab.stats.accuracy_difference`, McNemar's exact p). Perplexity: ``ppl(row) / ppl(reference)``
    per task, bootstrapped over windows (:func:`prunelab.stats.perplexity_ratio`). Rows whose outcomes were
    not kept (a study loaded from an older ``results.json``) print the bare difference and "no per-item data,
    no CI".
    """
    from prunelab.report.comparisons import DiffCell, MdeCollector, Outcomes, accuracy_cell, observe, perplexity_cell
    from prunelab.report.tables import Table

    outcomes = Outcomes({(_row_id(r), "eval", t): {o.item_id: o for o in items}
                         for r in study.rows for t, items in r.outcomes.items() if items})
    acc_tasks = tuple(study.acc_tasks)
    mde = MdeCollector()

    def acc_cell(x: StudyRow, y: StudyRow) -> Any:
        if not acc_tasks or math.isnan(x.avg_accuracy) or math.isnan(y.avg_accuracy):
            return "–"
        summary = {"mean": x.avg_accuracy - y.avg_accuracy, "sd": None, "n": None}
        sx, sy = {0: (_row_id(x), "eval")}, {0: (_row_id(y), "eval")}
        observe(outcomes, sx, sy, acc_tasks, mde)
        return accuracy_cell(outcomes, sx, sy, acc_tasks, summary)

    def ppl_cell(x: StudyRow, y: StudyRow, t: str) -> Any:
        if t not in x.perplexity or t not in y.perplexity or not y.perplexity[t]:
            return "–"
        summary = {"mean": x.perplexity[t] / y.perplexity[t], "sd": None, "n": None}
        return perplexity_cell(outcomes.get(_row_id(x), "eval", t), outcomes.get(_row_id(y), "eval", t), summary)

    def line(kind: str, x: StudyRow, ref: StudyRow, vs: str) -> list[Any]:
        return [str(x.k), kind, x.objective, x.search, vs, acc_cell(x, ref),
                *[ppl_cell(x, ref, t) for t in study.ppl_tasks]]

    rows: list[list[Any]] = []
    records: list[dict[str, Any]] = []
    for k in study.removes:
        for objective in study.objectives:
            cell = [r for r in study.rows if r.k == k and r.objective == objective and r.result]
            if len(cell) < 2:
                continue
            if acc_tasks:
                best = max(cell, key=lambda r: (r.avg_accuracy, -r.avg_perplexity))
            else:
                best = min(cell, key=lambda r: r.avg_perplexity)
            for r in cell:
                if r is not best:
                    rows.append(line("search vs best", r, best, f"{best.search} (best)"))
        if len(study.objectives) > 1:
            first = study.objectives[0]
            for search in study.searches:
                ref = next((r for r in study.rows if r.k == k and r.objective == first and r.search == search), None)
                for other in study.objectives[1:]:
                    r = next((x for x in study.rows if x.k == k and x.objective == other and x.search == search), None)
                    if ref is not None and r is not None:
                        rows.append(line("objective vs objective", r, ref, f"{first} objective"))
    if not rows:
        return None
    acc_head = "Δ avg accuracy (pp)"
    cols = ["k", "comparison", "objective", "search", "vs", acc_head, *[f"{t} ppl ratio" for t in study.ppl_tasks]]
    for r in rows:
        rec = dict(zip(cols[:5], r[:5]))
        for c, v in zip(cols[5:], r[5:]):
            rec[c] = v.as_dict() if isinstance(v, DiffCell) else None
        records.append(rec)
    notes = [f"Δ = row − reference; accuracy averaged over {', '.join(acc_tasks) or 'no tasks'}; perplexity ratio "
             "= ppl(row) / ppl(reference) (below 1 = the row is better). Identical masks give identical "
             "models: [0, 0], p = 1."]
    return Table(None, "comparisons", f"{study.model}: each search vs the best, each objective vs the other",
                 cols, rows, records, notes, mde.lines(), short={acc_head: "accuracy"})


def study_tables(study: DepthStudy, comparisons: Any = "compute") -> dict[str, tuple[str, str]]:
    """``{"accuracy": (md, csv), "perplexity": ..., "time_vs_accuracy": ..., "comparisons": ...}``
    (``comparisons``: an already built :func:`comparison_table`, so the bootstraps run once)."""

    def base(r: StudyRow) -> list[Any]:
        return [r.k, r.objective, r.search]

    def removed(r: StudyRow) -> str:
        return " ".join(map(str, r.result.removed)) if r.result else ""

    def value(r: StudyRow) -> float:
        return r.result.objective_value if r.result else math.nan

    acc_h = ["k", "objective", "search", *study.acc_tasks, "avg_acc", "calib_objective", "removed"]
    acc_rows = [[*base(r), *[r.accuracy.get(t, math.nan) for t in study.acc_tasks], r.avg_accuracy, value(r),
                 removed(r)] for r in study.rows]
    ppl_h = ["k", "objective", "search", *study.ppl_tasks, "avg_ppl", "calib_objective", "removed"]
    ppl_rows = [[*base(r), *[r.perplexity.get(t, math.nan) for t in study.ppl_tasks], r.avg_perplexity, value(r),
                 removed(r)] for r in study.rows]
    time_h = ["k", "objective", "search", "seconds", "candidates", "avg_acc", "avg_ppl"]
    time_rows = [[*base(r), r.result.seconds, r.result.candidates, r.avg_accuracy, r.avg_perplexity]
                 for r in study.rows if r.result]
    acc_md, acc_csv = _table(acc_h, acc_rows)
    if study.variance:
        acc_md += "\nInter-method variance of the average accuracy (σ², population):\n\n"
        acc_md += "".join(f"- {key}: {v:.3f}\n" for key, v in study.variance.items())
    ppl_md, ppl_csv = _table(ppl_h, ppl_rows)
    if study.spearman:
        ppl_md += "\nSpearman ρ(perplexity rank, accuracy rank), perplexity-pruned models:\n\n"
        ppl_md += "".join(f"- {key}: ρ = {_fmt(v['rho'])} (p = {_fmt(v['p'])}, n = {v['n']})\n"
                          for key, v in study.spearman.items())
    out = {"accuracy": (acc_md, acc_csv), "perplexity": (ppl_md, ppl_csv),
           "time_vs_accuracy": _table(time_h, time_rows)}
    comp = comparison_table(study) if isinstance(comparisons, str) else comparisons
    if comp is not None:
        out["comparisons"] = (comp.markdown(), comp.csv())
    return out


def write_study(study: DepthStudy, out_dir: str | Path) -> Path:
    """Write tables, figures and ``results.json`` into ``out_dir`` atomically (all or nothing)."""
    from prunelab.atomic import atomic_dir, to_jsonable
    from prunelab.report.depth_figures import mask_grid_figure, rank_scatter_figure

    comp = comparison_table(study)
    with atomic_dir(out_dir) as tmp:
        for name, (md, csv_text) in study_tables(study, comp).items():
            (tmp / f"{name}.md").write_text(md, encoding="utf-8")
            (tmp / f"{name}.csv").write_text(csv_text, encoding="utf-8")
        if comp is not None:
            import json as _json

            (tmp / "comparisons.json").write_text(_json.dumps(to_jsonable(comp.as_dict()), indent=2) + "\n",
                                                  encoding="utf-8")
        for objective in study.objectives:
            mask_grid_figure(study, objective, tmp / f"masks_{objective}.png")
        if "perplexity" in study.objectives:
            rank_scatter_figure(study, tmp / "rank_scatter.png")
        import json

        data = to_jsonable(study)
        for row, r in zip(data["rows"], study.rows):
            row["avg_accuracy"], row["avg_perplexity"] = r.avg_accuracy, r.avg_perplexity
        (tmp / "results.json").write_text(json.dumps(to_jsonable(data), indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)
