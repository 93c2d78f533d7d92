"""The depth study's tables and files. :func:`write_study` writes, atomically into one directory:

* ``accuracy.md/.csv`` — accuracy per task and average, calibration objective value, removed blocks; plus the
  inter-method variance ``σ² = (1/M) Σ_m (acc_m − mean)²`` of the average accuracy per (k, objective);
* ``perplexity.md/.csv`` — perplexity per task and average, with the Spearman ρ of each budget;
* ``time_vs_accuracy.md/.csv`` — search wall time, candidates evaluated, average accuracy;
* ``comparisons.md/.csv/.json`` — each search vs the best search of its (k, objective) and each objective vs the
  first objective at the same (k, search), as differences with 95 % CIs from the per-item outcomes
  (:mod:`prunelab.report.comparisons`: accuracy paired by item, perplexity as a ratio bootstrapped over windows),
  ``*`` for p < 0.05, and the minimum detectable accuracy difference at the evaluated size;
* ``masks_<objective>.png`` and ``rank_scatter.png`` (:mod:`prunelab.studies.depth.figures`);
* ``results.json`` — everything above, machine-readable.

Every table is one :class:`prunelab.table.Table`, rendered to Markdown and CSV by the table itself (the
comparisons: :class:`prunelab.report.tables.Table`, whose notes explain the CIs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from prunelab.atomic import atomic_dir, to_jsonable
from prunelab.report.comparisons import DiffCell, MdeCollector, Outcomes, accuracy_cell, observe, perplexity_cell
from prunelab.report.tables import Table as ComparisonTable
from prunelab.table import Table
from prunelab.studies.depth.figures import mask_grid_figure, rank_scatter_figure
from prunelab.studies.depth.run import DepthStudy, StudyRow
from prunelab.studies.tabulate import number_text, value_table

#: Passed as ``comparisons`` to :func:`study_tables`: build the comparison table there.
COMPUTE = "compute"


def _row_id(r: StudyRow) -> str:
    return f"{r.k}/{r.objective}/{r.search}"


def _comparison_pairs(study: DepthStudy) -> list[tuple[str, StudyRow, StudyRow, str]]:
    """``(kind, row, reference, reference label)``: every search vs the best search of its (k, objective) —
    highest average accuracy, or lowest average perplexity without accuracy tasks — then every objective vs the
    first objective at the same (k, search)."""
    pairs = []
    for k in study.removes:
        for objective in study.objectives:
            cell = [r for r in study.rows if r.k == k and r.objective == objective and r.result]
            if len(cell) < 2:
                continue
            if study.acc_tasks:
                best = max(cell, key=lambda r: (r.avg_accuracy, -r.avg_perplexity))
            else:
                best = min(cell, key=lambda r: r.avg_perplexity)
            pairs += [("search vs best", r, best, f"{best.search} (best)") for r in cell if r is not best]
        if len(study.objectives) > 1:
            first = study.objectives[0]
            for search in study.searches:
                ref = next((r for r in study.rows if r.k == k and r.objective == first and r.search == search), None)
                for other in study.objectives[1:]:
                    r = next((x for x in study.rows if x.k == k and x.objective == other and x.search == search), None)
                    if ref is not None and r is not None:
                        pairs.append(("objective vs objective", r, ref, f"{first} objective"))
    return pairs


def comparison_table(study: DepthStudy) -> Table | None:
    """Each search vs the best search of its (k, objective) and each objective vs the first objective at the same
    (k, search), as a :class:`prunelab.report.tables.Table` (``None`` with nothing to compare).

    Accuracy: the difference in average accuracy over the accuracy tasks (pp), paired by item, CI by a
    bootstrap resampling each task's items (:func:`prunelab.stats.composite_difference`; one task:
    :func:`prunelab.stats.accuracy_difference`, McNemar's exact p). Perplexity: ``ppl(row) / ppl(reference)``
    per task, bootstrapped over windows (:func:`prunelab.stats.perplexity_ratio`). Rows whose outcomes were
    not kept (a study loaded from an older ``results.json``) print the bare difference and "no per-item data,
    no CI".
    """
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

    rows = [[str(x.k), kind, x.objective, x.search, vs, acc_cell(x, ref),
             *[ppl_cell(x, ref, t) for t in study.ppl_tasks]] for kind, x, ref, vs in _comparison_pairs(study)]
    if not rows:
        return None
    acc_head = "Δ avg accuracy (pp)"
    cols = ["k", "comparison", "objective", "search", "vs", acc_head, *[f"{t} ppl ratio" for t in study.ppl_tasks]]
    records = [{**dict(zip(cols[:5], r[:5], strict=True)),
                **{c: v.as_dict() if isinstance(v, DiffCell) else None for c, v in zip(cols[5:], r[5:], strict=True)}}
               for r in rows]
    notes = [f"Δ = row − reference; accuracy averaged over {', '.join(acc_tasks) or 'no tasks'}; perplexity ratio "
             "= ppl(row) / ppl(reference) (below 1 = the row is better). Identical masks give identical "
             "models: [0, 0], p = 1."]
    return ComparisonTable(None, "comparisons", f"{study.model}: each search vs the best, each objective vs the other",
                           cols, rows, records, notes, mde.lines(), short={acc_head: "accuracy"})


def _removed(r: StudyRow) -> str:
    return " ".join(map(str, r.result.removed)) if r.result else ""


def _objective_value(r: StudyRow) -> float:
    return r.result.objective_value if r.result else math.nan


def accuracy_table(study: DepthStudy) -> Table:
    """Accuracy per task (percent) and its average for every row, with the inter-method variance per cell."""
    columns = ["k", "objective", "search", *study.acc_tasks, "avg_acc", "calib_objective", "removed"]
    values = [[r.k, r.objective, r.search, *[r.accuracy.get(t, math.nan) for t in study.acc_tasks], r.avg_accuracy,
               _objective_value(r), _removed(r)] for r in study.rows]
    notes = [f"Inter-method variance of the average accuracy (σ², population), {key}: {number_text(v)}"
             for key, v in study.variance.items()]
    return value_table("accuracy", f"{study.model}: accuracy (%) after removing k blocks", columns, values, notes,
                       label_columns=3)


def perplexity_table(study: DepthStudy) -> Table:
    """Perplexity per task and its average for every row, with the Spearman ρ of each budget."""
    columns = ["k", "objective", "search", *study.ppl_tasks, "avg_ppl", "calib_objective", "removed"]
    values = [[r.k, r.objective, r.search, *[r.perplexity.get(t, math.nan) for t in study.ppl_tasks],
               r.avg_perplexity, _objective_value(r), _removed(r)] for r in study.rows]
    notes = [f"Spearman ρ(perplexity rank, accuracy rank), perplexity-pruned models, {key}: ρ = "
             f"{number_text(v['rho'])} (p = {number_text(v['p'])}, n = {v['n']})" for key, v in study.spearman.items()]
    return value_table("perplexity", f"{study.model}: perplexity after removing k blocks", columns, values, notes,
                       label_columns=3)


def time_table(study: DepthStudy) -> Table:
    """Search wall time and candidates evaluated against the resulting average accuracy and perplexity."""
    columns = ["k", "objective", "search", "seconds", "candidates", "avg_acc", "avg_ppl"]
    values = [[r.k, r.objective, r.search, r.result.seconds, r.result.candidates, r.avg_accuracy, r.avg_perplexity]
              for r in study.rows if r.result]
    return value_table("time_vs_accuracy", f"{study.model}: search time vs accuracy", columns, values, label_columns=3)


def study_table_objects(study: DepthStudy, comparisons: Table | None | str = COMPUTE) -> dict[str, Table]:
    """``{"accuracy": Table, "perplexity": ..., "time_vs_accuracy": ..., "comparisons": ...}`` (``comparisons``:
    an already built :func:`comparison_table`, so the bootstraps run once; absent with nothing to compare)."""
    out = {"accuracy": accuracy_table(study), "perplexity": perplexity_table(study),
           "time_vs_accuracy": time_table(study)}
    comp = comparison_table(study) if isinstance(comparisons, str) else comparisons
    if comp is not None:
        out["comparisons"] = comp
    return out


def study_tables(study: DepthStudy, comparisons: Table | None | str = COMPUTE) -> dict[str, tuple[str, str]]:
    """``{name: (markdown, csv)}`` of :func:`study_table_objects`."""
    return {name: (t.markdown(), t.csv()) for name, t in study_table_objects(study, comparisons).items()}


def _results_json(study: DepthStudy) -> str:
    """The whole study, each row with its average accuracy and perplexity added."""
    data = to_jsonable(study)
    for row, r in zip(data["rows"], study.rows, strict=True):
        row["avg_accuracy"], row["avg_perplexity"] = r.avg_accuracy, r.avg_perplexity
    return json.dumps(to_jsonable(data), indent=2) + "\n"


def write_study(study: DepthStudy, out_dir: str | Path, tables: dict[str, Table] | None = None) -> Path:
    """Write tables, figures and ``results.json`` into ``out_dir`` atomically (all or nothing).

    ``tables``: the study's :func:`study_table_objects`, when the caller already built them (the comparison
    bootstraps then run once); built here otherwise.
    """
    if tables is None:
        tables = study_table_objects(study)
    with atomic_dir(out_dir) as tmp:
        for name, table in tables.items():
            (tmp / f"{name}.md").write_text(table.markdown(), encoding="utf-8")
            (tmp / f"{name}.csv").write_text(table.csv(), encoding="utf-8")
        if "comparisons" in tables:
            (tmp / "comparisons.json").write_text(
                json.dumps(to_jsonable(tables["comparisons"].as_dict()), indent=2) + "\n", encoding="utf-8")
        for objective in study.objectives:
            mask_grid_figure(study, objective, tmp / f"masks_{objective}.png")
        if "perplexity" in study.objectives:
            rank_scatter_figure(study, tmp / "rank_scatter.png")
        (tmp / "results.json").write_text(_results_json(study), encoding="utf-8")
    return Path(out_dir)
