"""Run the width-pruning dichotomy study (Martra 2025, "Fragile Knowledge, Robust Instruction-Following").

For each expansion ratio ``e = intermediate / hidden`` (the dense model's own ratio included), a fresh copy of
the model is width-pruned with a criterion (MAW by default) so that every GLU-MLP keeps
``round(e · hidden)`` neurons, then a capability battery grouped by kind is evaluated and efficiency is
measured; :mod:`prunelab.studies.dichotomy.analysis` derives the normalised series and the correlations.

Everything is seeded and greedy, so a rerun gives the same capability numbers; efficiency timings are
measurements and vary from run to run (they are written to separate files).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.studies.dichotomy.analysis import PairCorrelation, correlation_matrix, kind_means, normalise_to_dense
from prunelab.studies.dichotomy.plan import BATTERY, kind_of, validate_expansion_ratios


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
        item_progress = None
        if progress:
            def item_progress(task: str, done: int, total: int) -> None:
                progress(f"{steps['label']} {done}/{total}", steps["done"], steps["total"])
        evaluate_fn = _library_evaluate(item_progress)
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

    absent = _absent_tasks(names, say)
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

    normalised = {t: normalise_to_dense(t, [p.scores[t] for p in points]) for t in present}
    kind_series = kind_means(normalised, len(points))
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


def _absent_tasks(names: list[str], say: Callable[[str], None]) -> dict[str, str]:
    """``{task: reason}`` for every task whose data is missing: reported as absent, never silently skipped."""
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
    return absent
