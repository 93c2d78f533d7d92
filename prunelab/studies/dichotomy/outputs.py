"""The dichotomy study's tables and files, each table one :class:`prunelab.table.Table` (Markdown, CSV, JSON).

:func:`write_outputs` writes the study directory atomically; the figures come from
:mod:`prunelab.studies.dichotomy.figures`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from prunelab.atomic import atomic_dir, to_jsonable
from prunelab.evaluate.registry import task_spec
from prunelab.report.comparisons import (DiffCell, MdeCollector, Outcomes, accuracy_cell, correct_map, observe,
                                         perplexity_cell)
from prunelab.report.tables import Table as ComparisonTable
from prunelab.studies.dichotomy.analysis import PairCorrelation, square_matrix
from prunelab.studies.dichotomy.figures import plot_capabilities, plot_heatmaps
from prunelab.studies.dichotomy.run import DichotomyResult
from prunelab.studies.tabulate import value_table
from prunelab.table import Table

#: Digits of the Markdown-only tables (normalised scores, correlation matrices): read, not parsed.
READING_DIGITS = 3


def _name(result: DichotomyResult) -> str:
    return f"{result.model or 'model'}, {result.criterion}"


def _ratio_label(expansion_ratio: float) -> str:
    """An expansion ratio as a row label: fixed three decimals, so the column lines up."""
    return f"{expansion_ratio:.3f}"


def scores_table(result: DichotomyResult) -> Table:
    """Ratio × task: raw primary metrics (``"absent"`` for missing data), parameters and FLOPs per token."""
    columns = ["expansion_ratio", "intermediate_size", "params", "flops_per_token", *result.tasks]
    values = [[round(p.expansion_ratio, 6), p.intermediate_size, p.params, p.flops_per_token,
               *["absent" if t in result.absent else p.scores[t] for t in result.tasks]] for p in result.points]
    return value_table("scores", f"Primary metric per expansion ratio ({_name(result)})", columns, values)


def normalised_table(result: DichotomyResult) -> Table:
    """Ratio × task normalised to dense (perplexity inverted), then the mean of each kind (bold columns)."""
    columns = ["e", "I", *result.tasks, *[f"**{k}**" for k in result.kind_series]]
    values = [[_ratio_label(p.expansion_ratio), p.intermediate_size,
               *["absent" if t in result.absent else result.normalised[t][i] for t in result.tasks],
               *[series[i] for series in result.kind_series.values()]] for i, p in enumerate(result.points)]
    return value_table("normalised", f"Normalised to dense ({_name(result)})", columns, values,
                       digits=READING_DIGITS)


def efficiency_table(result: DichotomyResult) -> Table:
    """Ratio × efficiency measurement (an energy reading the machine cannot take prints ``unavailable``)."""
    keys = list(dict.fromkeys(k for p in result.points for k in p.efficiency))

    def value(p, key: str) -> Any:
        v = p.efficiency.get(key)
        return "unavailable" if v is None and key.startswith("energy") else v

    values = [[round(p.expansion_ratio, 6), p.intermediate_size, *[value(p, k) for k in keys]] for p in result.points]
    return value_table("efficiency", f"Efficiency per expansion ratio ({_name(result)})",
                       ["expansion_ratio", "intermediate_size", *keys], values)


def pairs_table(result: DichotomyResult) -> Table:
    """Every correlated pair (tasks, then kinds): Pearson r, two-sided p, points, why undefined (an undefined r
    or p is an empty cell, so the CSV columns stay numeric)."""
    values = [[c.a, c.b, c.r, c.p, c.n, c.reason] for c in result.task_correlations + result.kind_correlations]
    return value_table("correlations", f"Pearson correlations ({_name(result)})", ["a", "b", "r", "p", "n", "reason"],
                       values, label_columns=2, missing="")


def matrix_table(slug: str, names: list[str], pairs: list[PairCorrelation], attr: str,
                 digits: int = 6, missing: str = "") -> Table:
    """The symmetric ``attr`` (r or p) matrix of ``pairs`` over ``names``, one row per series."""
    values = [[n, *row] for n, row in zip(names, square_matrix(names, pairs, attr), strict=True)]
    return value_table(slug, f"Pearson {attr}", ["", *names], values, digits=digits, missing=missing)


def _r_with_p(r: float | None, p: float | None, diagonal: bool = False) -> str:
    if r is None:
        return "–"
    return "1" if diagonal else f"{r:.3f} (p={p:.3g})"


def task_matrix_table(result: DichotomyResult) -> Table:
    """Task × task Pearson r with its p in each cell (Markdown)."""
    names = list(result.normalised)
    r_m = square_matrix(names, result.task_correlations, "r")
    p_m = square_matrix(names, result.task_correlations, "p")
    values = [[n, *[_r_with_p(r, p, i == j) for j, (r, p) in enumerate(zip(rr, pp, strict=True))]]
              for i, (n, rr, pp) in enumerate(zip(names, r_m, p_m, strict=True))]
    return value_table("task_correlations", "Pearson r (two-sided p) between tasks", ["", *names], values)


def vs_dense_table(result: DichotomyResult) -> ComparisonTable | None:
    """Each pruned ratio vs dense, per task, as a :class:`prunelab.report.tables.Table` (``None`` without a
    pruned point): accuracy tasks as the paired difference ``pruned − dense`` in percentage points
    (:func:`prunelab.stats.accuracy_difference`: bootstrap over items, McNemar's exact p for 0/1 outcomes),
    perplexity tasks as ``ppl(pruned) / ppl(dense)`` bootstrapped over windows
    (:func:`prunelab.stats.perplexity_ratio`). Both models are evaluated on the same seeded items, so every
    comparison is paired; without stored outcomes the bare difference prints with "no per-item data, no CI"."""
    if len(result.points) < 2:
        return None
    key = [f"e={p.expansion_ratio:.6g}" for p in result.points]
    outcomes = Outcomes({(key[i], "eval", t): {o.item_id: o for o in items}
                         for i, p in enumerate(result.points) for t, items in p.outcomes.items() if items})
    dense = result.points[0]
    tasks = [t for t in result.tasks if t not in result.absent]
    mde = MdeCollector()
    rows, records = [], []
    for i, p in enumerate(result.points[1:], start=1):
        row: list[Any] = [_ratio_label(p.expansion_ratio), str(p.intermediate_size)]
        rec: dict[str, Any] = {"expansion_ratio": p.expansion_ratio, "intermediate_size": p.intermediate_size}
        for t in tasks:
            a, b = p.scores.get(t), dense.scores.get(t)
            if a is None or b is None:
                row.append("–")
                rec[t] = None
                continue
            ppl_task = not task_spec(t).higher_is_better or (p.outcomes.get(t) and p.outcomes[t][0].nll is not None)
            if ppl_task:
                cell = perplexity_cell(outcomes.get(key[i], "eval", t), outcomes.get(key[0], "eval", t),
                                       {"mean": a / b if b else math.nan, "sd": None, "n": None})
            else:
                x, y = {0: (key[i], "eval")}, {0: (key[0], "eval")}
                cell = accuracy_cell(outcomes, x, y, (t,), {"mean": a - b, "sd": None, "n": None})
                if correct_map(outcomes.get(key[0], "eval", t)):
                    observe(outcomes, x, y, (t,), mde)
            row.append(cell)
            rec[t] = cell.as_dict() if isinstance(cell, DiffCell) else None
        rows.append(row)
        records.append(rec)
    notes = ["Accuracy tasks: pruned − dense in percentage points; perplexity tasks: ×ppl(pruned) / ppl(dense) "
             "(above 1 = worse). Same seeded items for every ratio, so every comparison is paired."]
    return ComparisonTable(None, "vs_dense", f"Each expansion ratio vs dense ({_name(result)})",
                           ["e", "I", *tasks], rows, records, notes, mde.lines())


def _dump(data: Any) -> str:
    return json.dumps(to_jsonable(data), indent=2) + "\n"


def _table_markdown(result: DichotomyResult, vs_dense: ComparisonTable | None) -> str:
    """``table.md``: settings, scores, normalised scores, absent tasks, each ratio vs dense."""
    limits = ", ".join(f"{t}={n if n is not None else 'all'}" for t, n in result.limits.items())
    kinds = "; ".join(f"{kind}: {', '.join(tasks)}" for kind, tasks in result.kinds.items())
    absent = "".join(f"- **{t}: absent** — {why}\n" for t, why in result.absent.items()) or "- none\n"
    md = (f"# Width-pruning dichotomy: {result.model or 'model'} ({result.criterion})\n\n"
          f"Dense expansion ratio {result.dense_ratio:.4g} (hidden {result.hidden_size}); seed {result.seed}; "
          f"items per task: {limits}.\nPrimary metrics: accuracies in percent, wikitext2 = perplexity "
          f"(lower is better). Kinds: {kinds}.\n\n## Scores\n\n" + scores_table(result).pipe_table()
          + "\n## Normalised to dense (perplexity inverted: dense/ppl)\n\n" + normalised_table(result).pipe_table()
          + "\n## Absent tasks\n\n" + absent)
    if vs_dense is not None:
        md += "\n## Each ratio vs dense (95 % CI)\n\n" + vs_dense.markdown()
    return md


def _efficiency_markdown(result: DichotomyResult, table: Table) -> str:
    rss = any(p.efficiency.get("memory_kind") == "process_rss_peak" for p in result.points)
    return ("# Efficiency per expansion ratio\n\nTimings are measurements (they vary between runs)."
            + (" Peak memory is the process's peak RSS, which only grows within one process: later (smaller) "
               "ratios inherit the largest earlier peak." if rss else "")
            + ("" if result.points and result.points[0].efficiency else " Efficiency was not measured.")
            + "\n\n" + table.pipe_table())


def _correlations_markdown(result: DichotomyResult, pairs: Table) -> str:
    names, kinds = list(result.normalised), list(result.kind_series)
    kind_matrix = matrix_table("kind_correlations", kinds, result.kind_correlations, "r", READING_DIGITS, "–")
    return (f"# Pearson correlations between capability series ({len(result.points)} expansion ratios)\n\n"
            "## Tasks (raw primary metrics): r (two-sided p)\n\n"
            + ("wikitext2 is a perplexity (lower is better): its signs are reversed relative to capability.\n\n"
               if "wikitext2" in names else "")
            + task_matrix_table(result).pipe_table()
            + "\n## Kinds (mean of the kind's tasks normalised to dense)\n\n" + kind_matrix.pipe_table()
            + "\n## All pairs\n\n" + pairs.pipe_table())


def write_outputs(result: DichotomyResult, out_dir: str | Path) -> list[Path]:
    """Write the study into ``out_dir`` atomically (all files appear together or none does):

    ``table.{md,csv,json}`` (ratio × task, raw and normalised), ``efficiency.{md,csv,json}``,
    ``correlations.{md,csv}`` (pairs with r, p, n) and ``correlation_matrix.csv`` / ``correlation_pvalues.csv``,
    ``vs_dense.{md,csv,json}`` (each ratio vs dense with 95 % CIs, also a section of ``table.md``),
    ``capabilities.png`` (normalised to dense vs expansion ratio), ``correlations.png`` (heatmaps),
    ``result.json`` (everything).
    """
    out_dir = Path(out_dir)
    names = list(result.normalised)
    scores, efficiency, pairs = scores_table(result), efficiency_table(result), pairs_table(result)
    vs_dense = vs_dense_table(result)
    with atomic_dir(out_dir) as tmp:
        if vs_dense is not None:
            (tmp / "vs_dense.md").write_text(vs_dense.markdown(), encoding="utf-8")
            (tmp / "vs_dense.csv").write_text(vs_dense.csv(), encoding="utf-8")
            (tmp / "vs_dense.json").write_text(_dump(vs_dense.as_dict()), encoding="utf-8")
        (tmp / "table.md").write_text(_table_markdown(result, vs_dense), encoding="utf-8")
        (tmp / "table.csv").write_text(scores.csv(), encoding="utf-8")
        table_json = {"tasks": result.tasks, "kinds": result.kinds, "absent": result.absent, "rows": scores.records,
                      "normalised": result.normalised, "kind_series": result.kind_series}
        (tmp / "table.json").write_text(_dump(table_json), encoding="utf-8")
        (tmp / "efficiency.md").write_text(_efficiency_markdown(result, efficiency), encoding="utf-8")
        (tmp / "efficiency.csv").write_text(efficiency.csv(), encoding="utf-8")
        (tmp / "efficiency.json").write_text(_dump(efficiency.records), encoding="utf-8")
        (tmp / "correlations.csv").write_text(pairs.csv(), encoding="utf-8")
        for name, attr in (("correlation_matrix", "r"), ("correlation_pvalues", "p")):
            matrix = matrix_table(name, names, result.task_correlations, attr)
            (tmp / f"{name}.csv").write_text(matrix.csv(), encoding="utf-8")
        (tmp / "correlations.md").write_text(_correlations_markdown(result, pairs), encoding="utf-8")
        plot_capabilities(result, tmp / "capabilities.png")
        plot_heatmaps(result, tmp / "correlations.png")
        files = sorted(p.name for p in tmp.iterdir()) + ["result.json"]
        result.files = [str(out_dir / f) for f in files]
        (tmp / "result.json").write_text(_dump(result), encoding="utf-8")
    return [Path(f) for f in result.files]
