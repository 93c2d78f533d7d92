"""The recovery study's scores: the composite, defined once, and the metrics derived from it, as pure functions.

The recovery study scores a model by ``composite = mean(ARC-Easy %, LAMBADA %)`` over its generation
protocols (:data:`STUDY_COMPOSITE`). An experiment may name other parts (``eval.composite`` in the YAML: e.g.
the log-likelihood ``arc_easy`` and ``lambada`` on a small Instruct model whose letter-generation ARC-Easy sits at
chance); every reader takes the parts from the run's config, so the evaluation, chronic cycles and the report
agree on what "composite" means.

The derived metrics (recovery, relapse drop, net retained benefit, isodose efficiency, longitudinal decline, the
rank-sweep score, mean ± SD over seeds, correlations) take plain numbers (accuracies in percent, 0–100; FLOPs as
raw floats) and return plain numbers or small frozen dataclasses, so evaluation, stress, the experiment runner,
the report and the tests compute the same figures the same way. The formulas are those of the recovery-isodose
study; ``tests/report/test_metrics.py`` feeds in its published inputs and checks its published derived columns
(Tables 1–6). Pure, ground floor: no imports from any stage (scipy only inside the correlations).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prunelab.errors import PrunelabError

__all__ = [
    "STUDY_COMPOSITE", "Correlation", "MeanSD", "composite", "composite_parts", "composite_score", "efficiency",
    "longitudinal_decline", "mean_sd", "net_retained", "pearson", "recovery", "relapse_drop", "spearman",
    "sweep_score", "with_composite",
]

#: The study's composite: ARC-Easy generation accuracy and LAMBADA generation accuracy (percent).
STUDY_COMPOSITE: tuple[str, ...] = ("arc_easy_gen", "lambada_gen")


def composite_parts(eval_config: Any) -> tuple[str, ...]:
    """The composite's parts named by a run's eval config (``eval.composite``), else the study's.

    ``eval_config`` is the eval mapping of a stored config, or anything with a ``composite`` attribute (the typed
    ``prunelab.runs.config.EvalSpec``, whose ``RunConfig.composite_parts`` calls this), or None.
    """
    if isinstance(eval_config, Mapping):
        parts = eval_config.get("composite")
    else:
        parts = getattr(eval_config, "composite", None)
    return tuple(parts) if parts else STUDY_COMPOSITE


def composite_score(scores: Mapping[str, float], parts: Sequence[str] = STUDY_COMPOSITE) -> float | None:
    """``mean(scores[p] for p in parts)`` (percent) when every part was scored, else None."""
    if not parts or any(p not in scores or scores[p] is None for p in parts):
        return None
    return sum(float(scores[p]) for p in parts) / len(parts)


def with_composite(scores: dict[str, float], parts: Sequence[str] = STUDY_COMPOSITE) -> dict[str, float]:
    """``scores`` plus ``composite`` when every part is present and ``composite`` itself was not scored."""
    if "composite" in scores:
        return scores
    value = composite_score(scores, parts)
    return scores if value is None else {**scores, "composite": value}


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise PrunelabError(f"{name} must be a finite number, got {value}")
    return value


def composite(arc_easy: float, lambada: float) -> float:
    """The study's composite of two finite accuracies: ``(ARC-Easy % + LAMBADA %) / 2`` (its Table 1).

    :func:`composite_score` over :data:`STUDY_COMPOSITE`, with the inputs checked, for callers holding the two
    numbers rather than a scores mapping.
    """
    parts = dict(zip(STUDY_COMPOSITE, (_finite("ARC-Easy accuracy", arc_easy), _finite("LAMBADA accuracy", lambada)),
                     strict=True))
    value = composite_score(parts, STUDY_COMPOSITE)
    assert value is not None  # both parts are present by construction
    return value


def recovery(composite_treated: float, composite_untreated: float) -> float:
    """Recovery in percentage points: ``recovery = composite_treated − composite_untreated``."""
    return _finite("treated composite", composite_treated) - _finite("untreated composite", composite_untreated)


def relapse_drop(composite_treated: float, composite_after_relapse: float) -> float:
    """Acute relapse drop (pp): ``relapse_drop = composite_treated − composite_after_relapse``.

    Positive means the extra 30% magnitude pruning cost accuracy; negative means it (by chance) helped.
    """
    return _finite("treated composite", composite_treated) - _finite("post-relapse composite", composite_after_relapse)


def net_retained(recovery_pp: float, relapse_drop_pp: float) -> float:
    """Net retained benefit (pp): ``net_retained = recovery − relapse_drop`` (the study's Table 2)."""
    return _finite("recovery", recovery_pp) - _finite("relapse drop", relapse_drop_pp)


def efficiency(recovery_pp: float, flops: float) -> float:
    """Recovery per petaFLOP: ``efficiency = recovery / (FLOPs / 1e15)`` (the study's Tables 3 and 5)."""
    flops = _finite("FLOPs", flops)
    if flops <= 0:
        raise PrunelabError(f"FLOPs must be positive to compute efficiency, got {flops:g}")
    return _finite("recovery", recovery_pp) / (flops / 1e15)


def longitudinal_decline(accuracies: Sequence[float]) -> float:
    """Total decline over chronic stress: ``decline = acc(cycle 0) − acc(last cycle)`` (the study's Table 4).

    ``accuracies`` is the per-cycle accuracy series starting at cycle 0 (the treated model before any stress).
    """
    values = [_finite("cycle accuracy", a) for a in accuracies]
    if not values:
        raise PrunelabError("longitudinal decline needs at least the cycle-0 accuracy")
    return values[0] - values[-1]


def sweep_score_terms(recovery_pp: float, efficiency_per_pflop: float, relapse_drop_pp: float) -> tuple[float, float, float]:
    """The three weighted terms of :func:`sweep_score`: ``(0.4·recovery, 0.1·efficiency, −0.4·relapse_drop)``."""
    return (0.4 * _finite("recovery", recovery_pp), 0.1 * _finite("efficiency", efficiency_per_pflop),
            -0.4 * _finite("relapse drop", relapse_drop_pp))


def sweep_score(recovery_pp: float, efficiency_per_pflop: float, relapse_drop_pp: float) -> float:
    """Rank-sweep composite score: ``score = 0.4·recovery + 0.1·efficiency − 0.4·relapse_drop + 4``.

    Reverse-engineered from the study's Table 5, which it reproduces for every row to the printed 2 decimals.
    """
    return sum(sweep_score_terms(recovery_pp, efficiency_per_pflop, relapse_drop_pp)) + 4.0


@dataclass(frozen=True)
class MeanSD:
    """Mean and sample standard deviation (``ddof=1``) of ``n`` values; ``sd`` is NaN when ``n == 1``."""

    mean: float
    sd: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.sd:.2f}" if self.n > 1 else f"{self.mean:.2f}"


def mean_sd(values: Sequence[float]) -> MeanSD:
    """Mean ± sample SD over seeds: ``mean = Σx/n``, ``sd = sqrt(Σ(x − mean)² / (n − 1))``.

    One value has no sample SD: ``sd`` is NaN then (JSON ``null``), never a made-up 0.
    """
    xs = [_finite("value", v) for v in values]
    if not xs:
        raise PrunelabError("mean ± SD needs at least one value")
    # statistics.stdev is the exact ddof=1 estimator (fsum-based), no need for numpy here.
    sd = statistics.stdev(xs) if len(xs) > 1 else math.nan
    return MeanSD(mean=statistics.fmean(xs), sd=sd, n=len(xs))


@dataclass(frozen=True)
class Correlation:
    """A correlation coefficient with its two-sided p-value over ``n`` pairs."""

    statistic: float
    pvalue: float
    n: int
    method: str


def _pairs(x: Sequence[float], y: Sequence[float]) -> tuple[list[float], list[float]]:
    xs = [_finite("x", v) for v in x]
    ys = [_finite("y", v) for v in y]
    if len(xs) != len(ys):
        raise PrunelabError(f"correlation needs paired values, got {len(xs)} x and {len(ys)} y")
    if len(xs) < 3:
        # With two points r is always ±1 and the p-value is meaningless.
        raise PrunelabError(f"correlation needs at least 3 pairs, got {len(xs)}")
    if len(set(xs)) == 1 or len(set(ys)) == 1:
        raise PrunelabError("correlation is undefined when one of the series is constant")
    return xs, ys


def pearson(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Pearson ``r = cov(x, y) / (σx σy)`` with its two-sided p-value (``scipy.stats.pearsonr``)."""
    from scipy import stats

    xs, ys = _pairs(x, y)
    res = stats.pearsonr(xs, ys)
    return Correlation(float(res.statistic), float(res.pvalue), len(xs), "pearson")


def spearman(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Spearman ``ρ`` = Pearson r of the ranks (ties averaged), two-sided p (``scipy.stats.spearmanr``)."""
    from scipy import stats

    xs, ys = _pairs(x, y)
    res = stats.spearmanr(xs, ys)
    return Correlation(float(res.statistic), float(res.pvalue), len(xs), "spearman")
