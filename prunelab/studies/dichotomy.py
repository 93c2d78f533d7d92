"""The width-pruning dichotomy study (Martra 2025, "Fragile Knowledge, Robust Instruction-Following").

For each expansion ratio ``e = intermediate / hidden`` (the dense model's own ratio included), a fresh copy of
the model is width-pruned with a criterion (MAW by default) so that every GLU-MLP keeps
``round(e · hidden)`` neurons, then a capability battery grouped by kind is evaluated and efficiency is
measured. From the per-ratio scores the study derives:

- each capability **normalised to dense**: ``score(e) / score(dense)`` (for perplexity, where lower is
  better, ``ppl(dense) / ppl(e)``, so 1 = dense and < 1 = worse for every series);
- per kind, the mean of its tasks' normalised scores;
- **Pearson r with its two-sided p** (``scipy.stats.pearsonr`` via :func:`prunelab.report.metrics.pearson`)
  between every pair of task series (raw primary metrics, as the study correlates MMLU with
  TruthfulQA-MC2: r = −0.864, p = 0.012 on Llama-3.2-3B) and between every pair of kind series.

Everything is seeded and greedy, so a rerun gives the same capability numbers; efficiency timings are
measurements and vary from run to run (they are written to separate files).
"""

from __future__ import annotations

import copy
import csv
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError

#: The battery, grouped by kind (task names of :data:`prunelab.evaluate.TASKS`).
BATTERY: dict[str, list[str]] = {
    "knowledge": ["mmlu_5shot", "mmlu", "arc_challenge"],
    "language": ["wikitext2", "lambada"],
    "commonsense": ["hellaswag", "piqa", "boolq", "winogrande"],
    "instruction": ["ifeval"],
    "truthfulness": ["truthfulqa_mc1", "truthfulqa_mc2"],
    "math": ["gsm8k"],
}
#: Tasks whose primary metric is better when lower (perplexity).
LOWER_IS_BETTER = {"wikitext2", "c4"}
#: Tasks that generate text (their own, usually smaller, item limit).
GENERATIVE = {"ifeval", "gsm8k"}


def _probe(task: str) -> Callable[[], Any] | None:
    """A loader that raises :class:`PrunelabError` when the task's data is absent (None: nothing to check)."""
    from prunelab import data

    probes: dict[str, Callable[[], Any]] = {
        "mmlu_5shot": lambda: data.load_mmlu(5), "mmlu": lambda: data.load_mmlu(0),
        "arc_challenge": lambda: data.load_arc("challenge", "test"), "arc_easy": lambda: data.load_arc("easy", "test"),
        "wikitext2": data.load_wikitext2_text, "lambada": data.load_lambada, "hellaswag": data.load_hellaswag,
        "piqa": data.load_piqa, "boolq": data.load_boolq, "winogrande": data.load_winogrande,
        "ifeval": data.load_ifeval, "truthfulqa_mc1": lambda: data.load_truthfulqa("mc1"),
        "truthfulqa_mc2": lambda: data.load_truthfulqa("mc2"), "gsm8k": lambda: data.load_gsm8k("test"),
    }
    return probes.get(task)


def kind_of(task: str) -> str:
    for kind, tasks in BATTERY.items():
        if task in tasks:
            return kind
    return "other"


# ----------------------------------------------------------------------------------------------------------
# ratio validation
# ----------------------------------------------------------------------------------------------------------
@dataclass
class RatioPlan:
    """The validated sweep: the dense point first, then pruned points by decreasing expansion ratio."""

    hidden_size: int
    dense_width: int
    dense_ratio: float
    points: list[tuple[float, int]]  # (expansion ratio, kept neurons per layer); points[0] is dense


def kept_width(expansion_ratio: float, hidden_size: int, round_to: int = 1) -> int:
    """Neurons kept per layer: ``round(e · hidden)`` rounded down to a multiple of ``round_to`` (the rule of
    :func:`prunelab.prune.width.plan_widths`)."""
    target = int(round(expansion_ratio * hidden_size))
    return target - target % round_to


def validate_expansion_ratios(model: Any, ratios: Sequence[float], round_to: int = 1) -> RatioPlan:
    """Check every ratio before any work; the dense point (the model's own ratio) is always included.

    Errors: a ratio that is not a finite number > 0; one ≥ the model's own ratio (width pruning cannot
    widen; listing the exact own ratio names the dense point); one that rounds to zero neurons; one that
    rounds to the dense width; two that round to the same width.
    """
    from prunelab.models import adapter_for

    if round_to < 1:
        raise PrunelabError(f"round_to must be a positive integer, got {round_to}")
    adapter = adapter_for(model)
    hidden = int(model.config.hidden_size)
    widths = [adapter.mlp_width(layer) for layer in adapter.layers(model)]
    if not widths:
        raise PrunelabError("the model has no decoder layers to prune")
    dense_width = min(widths)  # a ratio must prune every layer, so the narrowest one bounds it
    own = dense_width / hidden
    if len(set(widths)) > 1:
        own_text = f"{own:.4g} (narrowest layer {dense_width}/{hidden}; widths differ per layer)"
    else:
        own_text = f"{own:.4g} ({dense_width}/{hidden})"
    points: list[tuple[float, int]] = [(own, dense_width)]
    seen: dict[int, float] = {}
    for r in ratios:
        r = float(r)
        if not math.isfinite(r) or r <= 0:
            raise PrunelabError(f"expansion ratio {r:g} must be a number > 0")
        if math.isclose(r, own, rel_tol=1e-9, abs_tol=1e-12):
            continue  # the dense point, always included
        if r > own:
            raise PrunelabError(f"expansion ratio {r:g} is ≥ the model's own {own_text}: width pruning cannot "
                                f"widen a layer (the dense point is always included)")
        kept = kept_width(r, hidden, round_to)
        if kept <= 0:
            raise PrunelabError(f"expansion ratio {r:g} rounds to zero neurons (hidden size {hidden}"
                                f"{f', rounding to multiples of {round_to}' if round_to > 1 else ''})")
        if kept >= dense_width:
            raise PrunelabError(f"expansion ratio {r:g} rounds to {kept} neurons, no fewer than the dense "
                                f"{dense_width}; the dense point is always included")
        if kept in seen:
            raise PrunelabError(f"expansion ratios {seen[kept]:g} and {r:g} both keep {kept} neurons per layer")
        seen[kept] = r
        points.append((r, kept))
    points[1:] = sorted(points[1:], key=lambda p: -p[0])
    return RatioPlan(hidden_size=hidden, dense_width=dense_width, dense_ratio=own, points=points)


def parse_ratios(text: str) -> list[float]:
    """``"2.4,2.0,1.6"`` → floats; a clear error for anything else."""
    out = []
    for tok in text.split(","):
        tok = tok.strip()
        if not tok:
            continue
        try:
            out.append(float(tok))
        except ValueError:
            raise PrunelabError(f"expansion ratio '{tok}' is not a number (use e.g. 2.4,2.0,1.6)") from None
    if not out:
        raise PrunelabError("no expansion ratio given (use e.g. --expansion-ratios 2.4,2.0,1.6,1.2,1.0)")
    return out


# ----------------------------------------------------------------------------------------------------------
# correlations
# ----------------------------------------------------------------------------------------------------------
@dataclass
class PairCorrelation:
    """Pearson r and two-sided p between two capability series over ``n`` ratios (None + reason if undefined)."""

    a: str
    b: str
    r: float | None
    p: float | None
    n: int
    reason: str = ""


def correlation_matrix(series: dict[str, Sequence[float | None]]) -> list[PairCorrelation]:
    """Pearson r with p for every unordered pair of series (upper triangle, in the dict's order).

    Points where either series is missing are dropped pairwise; fewer than 3 pairs or a constant series give
    ``r = None`` with the reason (``scipy.stats.pearsonr`` is undefined there).
    """
    from prunelab.report.metrics import pearson

    names = list(series)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pairs = [(x, y) for x, y in zip(series[a], series[b]) if x is not None and y is not None
                     and math.isfinite(x) and math.isfinite(y)]
            try:
                c = pearson([x for x, _ in pairs], [y for _, y in pairs])
                out.append(PairCorrelation(a, b, c.statistic, c.pvalue, c.n))
            except PrunelabError as exc:
                out.append(PairCorrelation(a, b, None, None, len(pairs), str(exc)))
    return out


def _square(names: list[str], pairs: list[PairCorrelation], attr: str) -> list[list[float | None]]:
    """Symmetric matrix of ``attr`` (r or p); the diagonal is r = 1 / p = 0 for series that correlate with
    anything (a constant or too-short series stays undefined there too)."""
    idx = {n: i for i, n in enumerate(names)}
    m: list[list[float | None]] = [[None] * len(names) for _ in names]
    defined = {n for c in pairs if c.r is not None for n in (c.a, c.b)}
    for i, n in enumerate(names):
        if n in defined:
            m[i][i] = 1.0 if attr == "r" else 0.0
    for c in pairs:
        v = getattr(c, attr)
        m[idx[c.a]][idx[c.b]] = m[idx[c.b]][idx[c.a]] = v
    return m


# ----------------------------------------------------------------------------------------------------------
# the sweep
# ----------------------------------------------------------------------------------------------------------
@dataclass
class RatioPoint:
    """One expansion ratio: its pruned width, every task's metrics and the efficiency measurement."""

    expansion_ratio: float
    dense: bool
    intermediate_size: int
    params: int
    flops_per_token: float
    scores: dict[str, float | None]
    metrics: dict[str, dict[str, float]]
    efficiency: dict[str, Any]
    seconds: float
    task_seconds: dict[str, float] = field(default_factory=dict)
    #: per-item outcomes per task (``TaskResult.outcomes``; empty for evaluators that keep none): the
    #: "each ratio vs dense" CIs are computed from these, never by re-evaluating
    outcomes: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class DichotomyResult:
    """The whole study. ``absent`` maps a task whose data is missing to the reason (its scores are None)."""

    model: str
    criterion: str
    hidden_size: int
    dense_ratio: float
    kinds: dict[str, list[str]]
    tasks: list[str]
    absent: dict[str, str]
    limits: dict[str, int | None]
    seed: int
    settings: dict[str, Any]
    points: list[RatioPoint]
    normalised: dict[str, list[float | None]]
    kind_series: dict[str, list[float | None]]
    task_correlations: list[PairCorrelation]
    kind_correlations: list[PairCorrelation]
    seconds: float
    files: list[str] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [p.expansion_ratio for p in self.points]

    def correlation(self, a: str, b: str) -> PairCorrelation:
        for c in self.task_correlations + self.kind_correlations:
            if {c.a, c.b} == {a, b}:
                return c
        raise PrunelabError(f"no correlation between '{a}' and '{b}'")


EvaluateFn = Callable[[Any, Any, str, "int | None", int, int], Any]
PruneFn = Callable[[Any, Any, str, float, int], Any]
EfficiencyFn = Callable[[Any, Any], Any]
ProgressFn = Callable[[str, int, int], None]


def _library_evaluate(item_progress: Callable[[str, int, int], None] | None = None) -> EvaluateFn:
    """``prunelab.evaluate.evaluate`` for one task; ``item_progress(task, done, total)`` as items finish."""
    from prunelab.evaluate import evaluate

    def run(model: Any, tokenizer: Any, task: str, limit: int | None, seed: int, batch_size: int) -> Any:
        return evaluate(model, tokenizer, [task], limit=limit, seed=seed, batch_size=batch_size,
                        progress=item_progress).results[task]

    return run


def _default_prune(model: Any, tokenizer: Any, criterion: str, expansion_ratio: float, round_to: int) -> Any:
    from prunelab.prune.width import prune_width

    return prune_width(model, tokenizer, criterion=criterion, expansion_ratio=expansion_ratio, round_to=round_to,
                       progress=False)


def _flatten(obj: Any) -> dict[str, Any]:
    """An efficiency report (dataclass or dict) as a flat ``{name: number | str | None}``."""
    from prunelab.atomic import to_jsonable

    out: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        elif v is None or isinstance(v, (int, float, str, bool)):
            out[prefix] = v

    walk("", to_jsonable(obj))
    return out


def run_dichotomy(
    model: Any,
    tokenizer: Any,
    expansion_ratios: Sequence[float],
    *,
    criterion: str = "maw",
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    limits: dict[str, int | None] | None = None,
    seed: int = 0,
    batch_size: int = 8,
    round_to: int = 1,
    efficiency: bool = True,
    generation: dict[str, Any] | None = None,
    efficiency_kwargs: dict[str, Any] | None = None,
    model_name: str = "",
    evaluate_fn: EvaluateFn | None = None,
    prune_fn: PruneFn | None = None,
    efficiency_fn: EfficiencyFn | None = None,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
) -> DichotomyResult:
    """Prune a fresh copy of ``model`` to each expansion ratio, evaluate the battery, measure efficiency.

    ``model`` itself is the dense point and is left untouched. ``limit`` = items per task (seeded sample;
    for ``wikitext2`` the number of 512-token windows), ``limits`` overrides it per task. ``generation`` sets
    :func:`prunelab.evaluate.generative_tasks.generation_settings` (IFEval / GSM8K budgets). ``evaluate_fn``,
    ``prune_fn`` and ``efficiency_fn`` default to the library's own and exist so tests can inject fast
    fakes; ``efficiency_kwargs`` go to :func:`prunelab.evaluate.efficiency.measure_efficiency`.
    ``progress(message, steps_done, steps_total)`` is called before each step and as items finish; ``log(line)``
    after each finished task.
    Every input is validated before any work.
    """
    from prunelab.evaluate.generative_tasks import generation_settings
    from prunelab.models import count_parameters, flops_per_token

    start = time.perf_counter()
    plan = validate_expansion_ratios(model, expansion_ratios, round_to)
    names = list(tasks) if tasks is not None else [t for ts in BATTERY.values() for t in ts]
    steps = {"done": 0, "total": 0, "label": ""}

    def say(label: str) -> None:
        steps["label"] = label
        if progress:
            progress(label, steps["done"], steps["total"])

    if evaluate_fn is None:
        from prunelab.evaluate import resolve_tasks

        names = resolve_tasks(names)
        evaluate_fn = _library_evaluate(
            (lambda t, d, n: progress(f"{steps['label']} {d}/{n}", steps["done"], steps["total"])) if progress else None)
    elif not names:
        raise PrunelabError("no task given")
    if len(set(names)) != len(names):
        raise PrunelabError("a task is listed twice")
    if prune_fn is None:
        from prunelab.prune.width import CRITERIA

        CRITERIA.get(criterion)  # unknown criterion: error listing the known ones, before any work
        prune_fn = _default_prune
    if limit is not None and limit <= 0:
        raise PrunelabError(f"limit must be a positive number of items, got {limit}")
    task_limits = {t: (limits or {}).get(t, limit) for t in names}
    for t, n in task_limits.items():
        if n is not None and n <= 0:
            raise PrunelabError(f"limit for {t} must be a positive number of items, got {n}")
    if batch_size <= 0:
        raise PrunelabError(f"batch size must be positive, got {batch_size}")
    if efficiency and efficiency_fn is None:
        from prunelab.evaluate.efficiency import measure_efficiency

        eff_kw = dict(efficiency_kwargs or {})
        efficiency_fn = lambda m, t: measure_efficiency(m, t, **eff_kw)  # noqa: E731
    gen = dict(generation or {})
    with generation_settings(**gen):  # validates the generation settings now, before any work
        pass

    # data presence: a task whose data is absent is reported as absent, never silently skipped
    absent: dict[str, str] = {}
    for t in names:
        probe = _probe(t)
        if probe is None:
            continue
        say(f"checking data for {t}")
        try:
            probe()
        except PrunelabError as exc:
            absent[t] = str(exc)
    present = [t for t in names if t not in absent]

    points: list[RatioPoint] = []
    steps["total"] = len(plan.points) * (len(present) + int(efficiency)) + len(plan.points) - 1
    with generation_settings(**gen) as settings:
        for ratio, width in plan.points:
            dense = not points
            t0 = time.perf_counter()
            if dense:
                m = model
            else:
                say(f"e={ratio:g}: pruning to {width} neurons/layer ({criterion})")
                m = copy.deepcopy(model)  # a fresh copy per ratio: pruning is in place
                prune_fn(m, tokenizer, criterion, ratio, round_to)
                _check_width(m, width, ratio)
                steps["done"] += 1
            m.eval()
            scores: dict[str, float | None] = {t: None for t in names}
            metrics: dict[str, dict[str, float]] = {}
            task_seconds: dict[str, float] = {}
            outcomes: dict[str, list[Any]] = {}
            for t in present:
                say(f"e={ratio:g}: {t}")
                res = evaluate_fn(m, tokenizer, t, task_limits[t], seed, batch_size)
                steps["done"] += 1
                scores[t] = float(res.metrics[res.primary])
                metrics[t] = {k: float(v) for k, v in res.metrics.items()}
                task_seconds[t] = float(getattr(res, "seconds", 0.0))
                outcomes[t] = list(getattr(res, "outcomes", None) or [])
                if log:
                    log(f"e={ratio:.4g} (I={width}) {t}: {scores[t]:.3f} [{res.primary}, n={res.n}, "
                        f"{task_seconds[t]:.0f}s]")
            eff: dict[str, Any] = {}
            if efficiency and efficiency_fn is not None:
                say(f"e={ratio:g}: efficiency")
                eff = _flatten(efficiency_fn(m, tokenizer))
                steps["done"] += 1
            points.append(RatioPoint(
                expansion_ratio=ratio, dense=dense, intermediate_size=width,
                params=count_parameters(m).total, flops_per_token=float(flops_per_token(m)), scores=scores,
                metrics=metrics, efficiency=eff, seconds=time.perf_counter() - t0, task_seconds=task_seconds,
                outcomes=outcomes))
            if not dense:
                del m
        settings_used = {k: getattr(settings, k) for k in vars(settings)}

    normalised = {t: _normalise(t, [p.scores[t] for p in points]) for t in present}
    kind_series: dict[str, list[float | None]] = {}
    for kind in dict.fromkeys(kind_of(t) for t in present):
        members = [normalised[t] for t in present if kind_of(t) == kind]
        kind_series[kind] = [_mean([s[i] for s in members]) for i in range(len(points))]
    raw = {t: [p.scores[t] for p in points] for t in present}
    return DichotomyResult(
        model=model_name, criterion=criterion, hidden_size=plan.hidden_size, dense_ratio=plan.dense_ratio,
        kinds={k: [t for t in names if kind_of(t) == k] for k in dict.fromkeys(kind_of(t) for t in names)},
        tasks=names, absent=absent, limits=task_limits, seed=seed, settings=settings_used, points=points,
        normalised=normalised, kind_series=kind_series, task_correlations=correlation_matrix(raw),
        kind_correlations=correlation_matrix(kind_series), seconds=time.perf_counter() - start)


def _check_width(model: Any, width: int, ratio: float) -> None:
    from prunelab.models import adapter_for

    adapter = adapter_for(model)
    got = sorted({adapter.mlp_width(layer) for layer in adapter.layers(model)})
    if got != [width]:
        raise PrunelabError(f"pruning to expansion ratio {ratio:g} left MLP widths {got}, expected {width}")


def _normalise(task: str, values: list[float | None]) -> list[float | None]:
    """Score relative to dense (``values[0]``); perplexity inverted so higher is better everywhere."""
    dense = values[0]
    out: list[float | None] = []
    for v in values:
        if v is None or dense is None or not math.isfinite(v):
            out.append(None)
        elif task in LOWER_IS_BETTER:
            out.append(dense / v if v > 0 else None)
        else:
            out.append(v / dense if dense != 0 else None)  # a dense score of 0 has no relative scale
    return out


def _mean(values: list[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


# ----------------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan"
        return f"{v:.{digits}f}" if abs(v) < 1e6 else f"{v:.4g}"
    return str(v)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def capability_rows(result: DichotomyResult) -> tuple[list[str], list[list[Any]]]:
    """Ratio × task table (raw primary metrics; ``"absent"`` for missing data)."""
    header = ["expansion_ratio", "intermediate_size", "params", "flops_per_token"] + result.tasks
    rows = []
    for p in result.points:
        row: list[Any] = [round(p.expansion_ratio, 6), p.intermediate_size, p.params, p.flops_per_token]
        row += ["absent" if t in result.absent else p.scores[t] for t in result.tasks]
        rows.append(row)
    return header, rows


def vs_dense_table(result: DichotomyResult):
    """Each pruned ratio vs dense, per task, as a :class:`prunelab.report.tables.Table` (``None`` without a
    pruned point): accuracy tasks as the paired difference ``pruned − dense`` in percentage points
    (:func:`prunelab.stats.accuracy_difference`: bootstrap over items, McNemar's exact p for 0/1 outcomes),
    perplexity tasks as ``ppl(pruned) / ppl(dense)`` bootstrapped over windows
    (:func:`prunelab.stats.perplexity_ratio`). Both models are evaluated on the same seeded items, so every
    comparison is paired; without stored outcomes the bare difference prints with "no per-item data, no CI"."""
    from prunelab.report.comparisons import (DiffCell, MdeCollector, Outcomes, accuracy_cell, correct_map,
                                             observe, perplexity_cell)
    from prunelab.report.tables import Table

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
        row: list[Any] = [_fmt(p.expansion_ratio, 3), str(p.intermediate_size)]
        rec: dict[str, Any] = {"expansion_ratio": p.expansion_ratio, "intermediate_size": p.intermediate_size}
        for t in tasks:
            a, b = p.scores.get(t), dense.scores.get(t)
            if a is None or b is None:
                row.append("–")
                rec[t] = None
                continue
            ppl_task = t in LOWER_IS_BETTER or (p.outcomes.get(t) and p.outcomes[t][0].nll is not None)
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
    return Table(None, "vs_dense", f"Each expansion ratio vs dense ({result.model or 'model'}, {result.criterion})",
                 ["e", "I", *tasks], rows, records, notes, mde.lines())


def efficiency_rows(result: DichotomyResult) -> tuple[list[str], list[list[Any]]]:
    keys = list(dict.fromkeys(k for p in result.points for k in p.efficiency))
    header = ["expansion_ratio", "intermediate_size"] + keys
    rows = [[round(p.expansion_ratio, 6), p.intermediate_size]
             + [p.efficiency.get(k) if p.efficiency.get(k) is not None or not k.startswith("energy") else "unavailable"
                for k in keys]
            for p in result.points]
    return header, rows


def write_outputs(result: DichotomyResult, out_dir: str | Path) -> list[Path]:
    """Write the study into ``out_dir`` atomically (all files appear together or none does):

    ``table.{md,csv,json}`` (ratio × task, raw and normalised), ``efficiency.{md,csv,json}``,
    ``correlations.{md,csv}`` (pairs with r, p, n) and ``correlation_matrix.csv`` / ``correlation_pvalues.csv``,
    ``vs_dense.{md,csv,json}`` (each ratio vs dense with 95 % CIs, also a section of ``table.md``),
    ``capabilities.png`` (normalised to dense vs expansion ratio), ``correlations.png`` (heatmaps),
    ``result.json`` (everything).
    """
    import json

    from prunelab.atomic import atomic_dir, to_jsonable

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        header, rows = capability_rows(result)
        labels = [f"{t} ({kind_of(t)})" for t in result.tasks]
        md_head = ["e", "I", "params"] + labels
        md_rows = [[_fmt(r[0], 3), str(r[1]), f"{r[2]:,}"] + [_fmt(v) for v in r[4:]] for r in rows]
        norm_rows = [[_fmt(p.expansion_ratio, 3), str(p.intermediate_size)]
                     + ["absent" if t in result.absent else _fmt(result.normalised[t][i], 3) for t in result.tasks]
                     + [_fmt(result.kind_series[k][i], 3) for k in result.kind_series]
                     for i, p in enumerate(result.points)]
        limits = ", ".join(f"{t}={n if n is not None else 'all'}" for t, n in result.limits.items())
        absent = "".join(f"- **{t}: absent** — {why}\n" for t, why in result.absent.items()) or "- none\n"
        md = (f"# Width-pruning dichotomy: {result.model or 'model'} ({result.criterion})\n\n"
              f"Dense expansion ratio {result.dense_ratio:.4g} (hidden {result.hidden_size}); seed {result.seed}; "
              f"items per task: {limits}.\nPrimary metrics: accuracies in percent, wikitext2 = perplexity "
              f"(lower is better).\n\n## Scores\n\n" + _md_table(md_head, md_rows)
              + "\n## Normalised to dense (perplexity inverted: dense/ppl)\n\n"
              + _md_table(["e", "I"] + result.tasks + [f"**{k}**" for k in result.kind_series], norm_rows)
              + "\n## Absent tasks\n\n" + absent)
        vs_dense = vs_dense_table(result)
        if vs_dense is not None:
            md += "\n## Each ratio vs dense (95 % CI)\n\n" + vs_dense.markdown()
            (tmp / "vs_dense.md").write_text(vs_dense.markdown(), encoding="utf-8")
            (tmp / "vs_dense.csv").write_text(vs_dense.csv(), encoding="utf-8")
            (tmp / "vs_dense.json").write_text(json.dumps(to_jsonable(vs_dense.as_dict()), indent=2) + "\n",
                                               encoding="utf-8")
        (tmp / "table.md").write_text(md, encoding="utf-8")
        (tmp / "table.csv").write_text(_csv(header, rows), encoding="utf-8")
        table_json = {"tasks": result.tasks, "kinds": result.kinds, "absent": result.absent,
                      "rows": [dict(zip(header, r)) for r in rows],
                      "normalised": result.normalised, "kind_series": result.kind_series}
        (tmp / "table.json").write_text(json.dumps(to_jsonable(table_json), indent=2) + "\n", encoding="utf-8")

        eh, er = efficiency_rows(result)
        (tmp / "efficiency.md").write_text(
            "# Efficiency per expansion ratio\n\nTimings are measurements (they vary between runs)."
            + (" Peak memory is the process's peak RSS, which only grows within one process: later (smaller) "
               "ratios inherit the largest earlier peak." if any(p.efficiency.get("memory_kind") == "process_rss_peak"
                                                                 for p in result.points) else "")
            + ("" if result.points and result.points[0].efficiency else " Efficiency was not measured.")
            + "\n\n"
            + _md_table(eh, [[_fmt(v, 4) for v in r] for r in er]), encoding="utf-8")
        (tmp / "efficiency.csv").write_text(_csv(eh, er), encoding="utf-8")
        (tmp / "efficiency.json").write_text(json.dumps(to_jsonable([dict(zip(eh, r)) for r in er]), indent=2) + "\n",
                                             encoding="utf-8")

        corr_rows = [[c.a, c.b, c.r, c.p, c.n, c.reason] for c in result.task_correlations + result.kind_correlations]
        (tmp / "correlations.csv").write_text(_csv(["a", "b", "r", "p", "n", "reason"], corr_rows), encoding="utf-8")
        names = list(result.normalised)
        r_m, p_m = _square(names, result.task_correlations, "r"), _square(names, result.task_correlations, "p")
        (tmp / "correlation_matrix.csv").write_text(_csv([""] + names, [[n] + row for n, row in zip(names, r_m)]),
                                                    encoding="utf-8")
        (tmp / "correlation_pvalues.csv").write_text(_csv([""] + names, [[n] + row for n, row in zip(names, p_m)]),
                                                     encoding="utf-8")
        kinds = list(result.kind_series)
        kr_m = _square(kinds, result.kind_correlations, "r")
        md = (f"# Pearson correlations between capability series ({len(result.points)} expansion ratios)\n\n"
              "## Tasks (raw primary metrics): r (two-sided p)\n\n"
              + ("wikitext2 is a perplexity (lower is better): its signs are reversed relative to capability.\n\n"
                 if "wikitext2" in names else "")
              + _md_table([""] + names, [[n] + [_cell(r, p, i == j) for j, (r, p) in enumerate(zip(rr, pp))]
                                         for i, (n, rr, pp) in enumerate(zip(names, r_m, p_m))])
              + "\n## Kinds (mean of the kind's tasks normalised to dense)\n\n"
              + _md_table([""] + kinds, [[k] + [_fmt(v, 3) for v in row] for k, row in zip(kinds, kr_m)])
              + "\n## All pairs\n\n"
              + _md_table(["a", "b", "r", "p", "n", "note"],
                          [[c.a, c.b, _fmt(c.r, 3), _fmt(c.p, 4), str(c.n), c.reason]
                           for c in result.task_correlations + result.kind_correlations]))
        (tmp / "correlations.md").write_text(md, encoding="utf-8")

        _plot_capabilities(result, tmp / "capabilities.png")
        _plot_heatmaps(result, tmp / "correlations.png")
        files = sorted(p.name for p in tmp.iterdir()) + ["result.json"]
        result.files = [str(out_dir / f) for f in files]
        (tmp / "result.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n", encoding="utf-8")
    return [Path(f) for f in result.files]


def _cell(r: float | None, p: float | None, diagonal: bool = False) -> str:
    if r is None:
        return "–"
    return "1" if diagonal else f"{r:.3f} (p={p:.3g})"


def _plot_capabilities(result: DichotomyResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = result.ratios
    kinds = list(result.kind_series)
    cmap = plt.get_cmap("tab10")
    colour = {k: cmap(i % 10) for i, k in enumerate(kinds)}
    markers = "osD^v<>pP*"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for kind in kinds:
        members = [t for t in result.normalised if kind_of(t) == kind]
        for j, t in enumerate(members):
            ys = [float("nan") if v is None else v for v in result.normalised[t]]
            undefined = "" if any(v is not None for v in result.normalised[t]) else ", undefined: dense = 0"
            ax1.plot(x, ys, marker=markers[j % len(markers)], color=colour[kind], label=f"{t} ({kind}{undefined})",
                     linestyle="-" if j == 0 else "--", alpha=0.85)
        ys = [float("nan") if v is None else v for v in result.kind_series[kind]]
        ax2.plot(x, ys, marker="o", color=colour[kind], label=kind, linewidth=2)
    for ax, title in ((ax1, "each task"), (ax2, "mean per kind")):
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.axvline(result.dense_ratio, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel("expansion ratio (intermediate / hidden)")
        ax.set_title(f"{title} (dashed line = dense {result.dense_ratio:.3g})")
        ax.invert_xaxis()  # dense on the left, more pruning to the right
        ax.grid(alpha=0.3)
    ax1.set_ylabel("capability relative to dense (perplexity: dense/ppl)")
    ax1.legend(fontsize=7, loc="best")
    ax2.legend(fontsize=8, loc="best")
    fig.suptitle(f"Width-pruning dichotomy — {result.model or 'model'}, {result.criterion}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_heatmaps(result: DichotomyResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [("tasks (raw metrics)", list(result.normalised), result.task_correlations),
              ("kinds (normalised means)", list(result.kind_series), result.kind_correlations)]
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1.6, 1]})
    for ax, (title, names, pairs) in zip(axes, panels):
        m = np.array([[np.nan if v is None else v for v in row] for row in _square(names, pairs, "r")], dtype=float)
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        pv = _square(names, pairs, "p")
        for i in range(len(names)):
            for j in range(len(names)):
                if i == j:
                    continue
                p = pv[i][j]
                txt = "n/a" if m[i, j] != m[i, j] else f"{m[i, j]:.2f}" + ("*" if p is not None and p < 0.05 else "")
                dark = m[i, j] == m[i, j] and abs(m[i, j]) > 0.6
                ax.text(j, i, txt, ha="center", va="center", fontsize=6.5, color="white" if dark else "black")
        ax.set_title(f"Pearson r — {title}; * p<0.05", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
