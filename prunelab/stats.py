"""Paired confidence intervals, exact tests and detectable effects for comparing evaluations.

Every difference prunelab reports (recovery, relapse drop, mechanism vs mechanism, search vs search, pruned vs
dense) compares two models *evaluated on the same items*. Such a comparison is paired: the item-to-item spread
of difficulty cancels, so the honest interval is a bootstrap over items of the per-item difference (Efron &
Tibshirani 1993, "An Introduction to the Bootstrap", ch. 14 for BCa), and the honest test for 0/1 outcomes is
McNemar's (1947) exact test, i.e. a binomial test on the discordant pairs. Everything is built on
``scipy.stats`` (``bootstrap``, ``binomtest``, ``permutation_test``); the only hand-written pieces are the
closed-form power formulas, which scipy does not provide.

Units: accuracies come in as per-item outcomes in [0, 1] (0/1 for exact-match tasks) and differences go out in
**percentage points** (``unit="pp"``); perplexities go out as the **ratio** ``ppl_b / ppl_a`` (``unit="ratio"``).
Every result is a :class:`Difference` (``estimate``, ``low``, ``high``, ``p``, ``n``, ``method``) with
``markdown()`` for tables and ``as_dict()`` for CSV/JSON.

Resampling unit with several seeds: the **item**. Seeds of one arm (e.g. three LoRA training seeds, all
evaluated on the same fixed item sample) are averaged per item first, and the bootstrap resamples items — a
cluster bootstrap (Davison & Hinkley 1997, "Bootstrap Methods and their Application", §3.8), because the items
are the sample drawn from a population and the seeds are repeated measurements on each item. Treating
seeds × items as independent units would triple ``n`` and shrink the interval for no reason.

This module is a ground-floor library module: numpy, scipy, the standard library and ``prunelab.errors`` only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from prunelab.errors import PrunelabError

__all__ = [
    "Difference", "Interval", "accuracy_difference", "composite_difference", "critical_difference",
    "mcnemar_exact", "mde_composite", "mde_paired", "mde_unpaired", "mean_ci", "n_needed", "n_needed_unpaired",
    "observed_discordance", "paired_outcomes", "perplexity_ratio", "unpaired_accuracy_difference",
]

_MINUS = "\u2212"  # typographic minus, as in "+2.1 [−1.3, +5.4]"


# --------------------------------------------------------------------------------------------------------------
# result types
# --------------------------------------------------------------------------------------------------------------


def _fmt_signed(x: float, digits: int) -> str:
    if not math.isfinite(x):
        return "n/a" if math.isnan(x) else ("+∞" if x > 0 else f"{_MINUS}∞")
    if round(x, digits) == 0:
        x = 0.0  # never print "−0.0"
    return f"{x:+.{digits}f}".replace("-", _MINUS)


def _fmt_plain(x: float, digits: int) -> str:
    if not math.isfinite(x):
        return "n/a" if math.isnan(x) else "∞"
    return f"{x:.{digits}f}".replace("-", _MINUS)


@dataclass(frozen=True)
class Difference:
    """``b − a`` with its confidence interval and two-sided p-value.

    ``estimate``/``low``/``high`` are percentage points for accuracies (``unit="pp"``) or, for perplexity,
    the ratio ``ppl_b / ppl_a`` (``unit="ratio"``). ``p`` is McNemar's exact p for paired single-seed 0/1
    outcomes, a permutation p otherwise, ``None`` when not computed. ``n`` counts the paired units (items or
    windows; for unpaired comparisons the items of both arms).
    """

    estimate: float
    low: float
    high: float
    p: float | None
    n: int
    method: str
    paired: bool = True
    unit: str = "pp"

    @property
    def null(self) -> float:
        """The no-effect value: 0 pp, or a perplexity ratio of 1."""
        return 1.0 if self.unit == "ratio" else 0.0

    @property
    def significant(self) -> bool:
        """``p < 0.05`` when the p-value is known, else whether the CI excludes the null (0, or ratio 1)."""
        if self.p is not None and math.isfinite(self.p):
            return self.p < 0.05
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return False
        return self.low > self.null or self.high < self.null

    def markdown(self, digits: int = 1) -> str:
        """``+2.1 [−1.3, +5.4]`` (pp) or ``×0.93 [0.90, 0.97]`` (ratio, one more digit), ``*`` when significant.

        Unpaired comparisons carry a trailing ``(unpaired)`` so a reader never mistakes them for paired ones.
        """
        if self.unit == "ratio":
            d = digits + 1  # ratios near 1 need one more digit than percentage points to be readable
            ci = "[n/a]" if not math.isfinite(self.low) else f"[{_fmt_plain(self.low, d)}, {_fmt_plain(self.high, d)}]"
            text = f"×{_fmt_plain(self.estimate, d)} {ci}"
        else:
            ci = ("[n/a]" if not math.isfinite(self.low)
                  else f"[{_fmt_signed(self.low, digits)}, {_fmt_signed(self.high, digits)}]")
            text = f"{_fmt_signed(self.estimate, digits)} {ci}"
        if self.significant:
            text += "*"
        if not self.paired:
            text += " (unpaired)"
        return text

    def as_dict(self) -> dict:
        """Flat fields for CSV/JSON: estimate, low, high, p, n, method, paired, unit, significant."""
        return {
            "estimate": self.estimate, "low": self.low, "high": self.high, "p": self.p, "n": self.n,
            "method": self.method, "paired": self.paired, "unit": self.unit, "significant": self.significant,
        }


@dataclass(frozen=True)
class Interval:
    """One arm's accuracy (percent) with its confidence interval over ``n`` items."""

    estimate: float
    low: float
    high: float
    n: int
    method: str

    def markdown(self, digits: int = 1) -> str:
        """``32.3 [26.1, 39.0]``."""
        if not math.isfinite(self.low):
            return f"{_fmt_plain(self.estimate, digits)} [n/a]"
        return f"{_fmt_plain(self.estimate, digits)} [{_fmt_plain(self.low, digits)}, {_fmt_plain(self.high, digits)}]"

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n, "method": self.method}


# --------------------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------------------


def _check_confidence(confidence: float, n_resamples: int) -> None:
    if not (0.0 < float(confidence) < 1.0):
        raise PrunelabError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    if int(n_resamples) < 1:
        raise PrunelabError(f"n_resamples must be a positive integer, got {n_resamples}")


def _outcome(value, where: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PrunelabError(f"per-item outcome {value!r} ({where}) is not a number") from None
    if not (0.0 <= v <= 1.0):  # also rejects NaN
        raise PrunelabError(f"per-item outcomes must be in [0, 1] (0/1 correct, or a fraction), got {v} ({where})")
    return v


def _seed_runs(x, name: str) -> list[dict[str, float]]:
    """A mapping (one seed) or a sequence of mappings (one per seed) -> list of {item_id: outcome}."""
    if isinstance(x, Mapping):
        runs = [x]
    elif isinstance(x, Sequence) and not isinstance(x, (str, bytes)) and x and all(isinstance(r, Mapping) for r in x):
        runs = list(x)
    else:
        raise PrunelabError(f"{name} must be a mapping item id -> outcome, or a non-empty list of such mappings "
                            "(one per seed)")
    out = []
    for s, run in enumerate(runs):
        if not run:
            raise PrunelabError(f"{name} has no evaluated items" + (f" (seed run {s})" if len(runs) > 1 else ""))
        out.append({str(k): _outcome(v, f"{name}, item {k!r}") for k, v in run.items()})
    ids = set(out[0])
    for s, run in enumerate(out[1:], start=1):
        if set(run) != ids:
            shared = len(ids & set(run))
            raise PrunelabError(f"the seed runs of {name} were not evaluated on the same items ({shared} of "
                                f"{len(ids | set(run))} shared between seed runs 0 and {s}); evaluate every seed on "
                                "the same item sample")
    return out


def _item_means(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per item, the mean outcome over seed runs (the cluster bootstrap's unit is the item)."""
    if len(runs) == 1:
        return runs[0]
    return {k: math.fsum(r[k] for r in runs) / len(runs) for k in runs[0]}


def paired_outcomes(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Align two ``{item_id: value}`` mappings by item id -> two float arrays in the same (sorted-id) order.

    Refuses (``PrunelabError``) when the id sets differ: a paired comparison on different items would be
    silently wrong. Use :func:`unpaired_accuracy_difference` for genuinely different item samples.
    """
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        raise PrunelabError("paired outcomes must be mappings item id -> value")
    ka, kb = set(map(str, a)), set(map(str, b))
    if ka != kb:
        shared = len(ka & kb)
        raise PrunelabError(f"the two models were not evaluated on the same items ({shared} of {len(ka | kb)} "
                            "shared); a paired comparison needs identical items — re-evaluate on the same sample "
                            "or compare unpaired")
    if not ka:
        raise PrunelabError("no evaluated items to compare")
    am = {str(k): v for k, v in a.items()}
    bm = {str(k): v for k, v in b.items()}
    ids = sorted(ka)
    return np.array([am[i] for i in ids], dtype=float), np.array([bm[i] for i in ids], dtype=float)


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0.0) | (x == 1.0)))


# --------------------------------------------------------------------------------------------------------------
# bootstrap / permutation wrappers
# --------------------------------------------------------------------------------------------------------------


def _bootstrap_ci(data: tuple[np.ndarray, ...], statistic, *, paired: bool, confidence: float, n_resamples: int,
                  seed: int) -> tuple[float, float, str]:
    """BCa interval from ``scipy.stats.bootstrap``; percentile when BCa degenerates (heavily tied data).

    BCa's acceleration comes from a jackknife; with very few discordant items the bootstrap distribution is
    lumpy and scipy returns NaN bounds (``DegenerateDataWarning``). The percentile interval is still defined
    there, so it is the fallback, and the method string says which one was used.
    """
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning / RuntimeWarning: handled by the NaN check
            res = stats.bootstrap(data, statistic, n_resamples=int(n_resamples), paired=paired, vectorized=True,
                                  axis=-1, confidence_level=confidence, method=method,
                                  rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi, method
    return math.nan, math.nan, "none"


def _permutation_p(data: tuple[np.ndarray, ...], statistic, *, permutation_type: str, n_resamples: int,
                   seed: int) -> float | None:
    if min(np.size(x) for x in data) < 2:
        return None  # scipy needs two observations per sample; one item cannot be tested
    res = stats.permutation_test(data, statistic, permutation_type=permutation_type, vectorized=True, axis=-1,
                                 n_resamples=int(n_resamples), alternative="two-sided",
                                 rng=np.random.default_rng(seed))
    return float(min(1.0, res.pvalue))


def _mean_diff(xa, xb, axis=-1):
    return np.mean(xb, axis=axis) - np.mean(xa, axis=axis)


# --------------------------------------------------------------------------------------------------------------
# accuracy comparisons
# --------------------------------------------------------------------------------------------------------------


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """McNemar's exact test (McNemar 1947, Psychometrika 12:153) for paired 0/1 outcomes, two-sided.

    With ``n01`` = items ``a`` got wrong and ``b`` right, ``n10`` the reverse, under H0 each discordant item is
    equally likely either way, so ``p = binomtest(k=n01, n=n01 + n10, p=0.5).pvalue``. No discordant item at
    all -> ``p = 1.0`` (nothing contradicts H0).
    """
    xa = np.asarray([_outcome(v, "first arm") for v in a], dtype=float)
    xb = np.asarray([_outcome(v, "second arm") for v in b], dtype=float)
    if xa.shape != xb.shape:
        raise PrunelabError(f"McNemar's test needs paired outcomes of equal length, got {xa.size} and {xb.size}")
    if not (_is_binary(xa) and _is_binary(xb)):
        raise PrunelabError("McNemar's test needs 0/1 outcomes; use a permutation test for fractional outcomes")
    n01 = int(np.sum((xa == 0) & (xb == 1)))
    n10 = int(np.sum((xa == 1) & (xb == 0)))
    if n01 + n10 == 0:
        return 1.0
    return float(stats.binomtest(n01, n01 + n10, p=0.5).pvalue)


def accuracy_difference(a, b, *, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> Difference:
    """Paired accuracy difference ``b − a`` in percentage points, with a bootstrap CI and a two-sided p.

    ``a`` and ``b`` are ``{item_id: correct}`` (0/1, or fractions in [0, 1]) or sequences of such mappings, one
    per seed; both arms must cover the same item ids (else ``PrunelabError``).

    * Estimate: ``100 · (mean_i b̄_i − mean_i ā_i)`` where ``ā_i`` is item ``i``'s outcome averaged over ``a``'s
      seeds (a single seed: the outcome itself).
    * CI: paired bootstrap over **items** of the per-item difference ``b̄_i − ā_i`` (BCa, ``n_resamples``;
      percentile when BCa degenerates). With several seeds this is a cluster bootstrap — the item is the
      resampling unit and its seeds move with it.
    * p: single seed and 0/1 outcomes -> McNemar's exact test (:func:`mcnemar_exact`); otherwise a paired
      permutation test (``scipy.stats.permutation_test``, ``permutation_type="samples"``: the arms' labels are
      swapped within an item) of the same statistic on per-item means.
    * A model compared with itself (every per-item difference equal to 0): estimate 0, CI [0, 0], p = 1,
      without resampling (BCa is undefined on constant data).
    """
    _check_confidence(confidence, n_resamples)
    runs_a, runs_b = _seed_runs(a, "the first arm"), _seed_runs(b, "the second arm")
    xa, xb = paired_outcomes(_item_means(runs_a), _item_means(runs_b))
    n = xa.size
    d = xb - xa
    est = 100.0 * float(np.mean(d))
    single_binary = len(runs_a) == 1 and len(runs_b) == 1 and _is_binary(xa) and _is_binary(xb)
    p_method = "McNemar exact" if single_binary else f"paired permutation test ({n_resamples})"
    seeds = "" if len(runs_a) == len(runs_b) == 1 else (
        f", {len(runs_a)}×{len(runs_b)} seeds averaged per item (cluster bootstrap)")
    if np.all(d == d[0]) and (n >= 2 or d[0] == 0):
        # Zero variance: every resample gives the same difference, so the CI is that point. p stays computed
        # (all-discordant-one-way data is highly significant), except for the exact-null case.
        p = 1.0 if d[0] == 0 else (mcnemar_exact(xa, xb) if single_binary else
                                   _permutation_p((xa, xb), _mean_diff, permutation_type="samples",
                                                  n_resamples=n_resamples, seed=seed))
        return Difference(est, est, est, p, n, f"paired, all item differences equal{seeds}; {p_method}")
    if n < 2:
        lo = hi = math.nan
        ci_method = "too few items for a CI"
    else:
        # Resampling the per-item differences is exactly the paired bootstrap (items resampled jointly).
        lo, hi, used = _bootstrap_ci((d,), lambda x, axis=-1: np.mean(x, axis=axis), paired=False,
                                     confidence=confidence, n_resamples=n_resamples, seed=seed)
        lo, hi = 100.0 * lo, 100.0 * hi
        ci_method = f"paired bootstrap over items ({used}, {n_resamples}){seeds}"
    if single_binary:
        p = mcnemar_exact(xa, xb)
    else:
        p = _permutation_p((xa, xb), _mean_diff, permutation_type="samples", n_resamples=n_resamples, seed=seed)
    return Difference(est, lo, hi, p, n, f"{ci_method}; {p_method}")


def _values(x, name: str) -> np.ndarray:
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, (str, bytes)) or not isinstance(x, (Sequence, np.ndarray)):
        raise PrunelabError(f"{name} must be a sequence of per-item outcomes")
    arr = np.asarray([_outcome(v, name) for v in x], dtype=float)
    if arr.size == 0:
        raise PrunelabError(f"{name} has no evaluated items")
    return arr


def unpaired_accuracy_difference(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
                                 n_resamples: int = 9999, seed: int = 0) -> Difference:
    """Accuracy difference ``b − a`` (pp) between two *independent* item samples, labelled ``paired=False``.

    For comparisons that cannot be paired (different items). CI: bootstrap resampling each arm independently
    (``scipy.stats.bootstrap``, BCa); p: two-sample permutation test (``permutation_type="independent"``) of the
    difference in means. ``n`` is the total number of items over both arms. Mappings are accepted (their values
    are used, ids ignored).
    """
    _check_confidence(confidence, n_resamples)
    xa, xb = _values(a, "the first arm"), _values(b, "the second arm")
    n = int(xa.size + xb.size)
    est = 100.0 * float(xb.mean() - xa.mean())
    desc = f"unpaired (n_a={xa.size}, n_b={xb.size})"
    if np.all(xa == xa[0]) and np.all(xb == xb[0]) and min(xa.size, xb.size) >= 2:
        p = 1.0 if xa[0] == xb[0] else _permutation_p((xa, xb), _mean_diff, permutation_type="independent",
                                                      n_resamples=n_resamples, seed=seed)
        return Difference(est, est, est, p, n, f"{desc}, constant outcomes; permutation test", paired=False)
    if xa.size < 2 or xb.size < 2:
        lo = hi = math.nan
        used = "too few items for a CI"
    else:
        lo, hi, used = _bootstrap_ci((xa, xb), _mean_diff, paired=False, confidence=confidence,
                                     n_resamples=n_resamples, seed=seed)
        lo, hi = 100.0 * lo, 100.0 * hi
        used = f"independent bootstrap per arm ({used}, {n_resamples})"
    p = _permutation_p((xa, xb), _mean_diff, permutation_type="independent", n_resamples=n_resamples, seed=seed)
    return Difference(est, lo, hi, p, n, f"{desc}: {used}; two-sample permutation test ({n_resamples})",
                      paired=False)


def composite_difference(parts: Sequence[tuple], *, confidence: float = 0.95, n_resamples: int = 9999,
                         seed: int = 0) -> Difference:
    """Difference ``b − a`` (pp) of a composite = unweighted mean of several tasks' accuracies.

    ``parts`` is ``[(a_task, b_task), ...]``, each side shaped as for :func:`accuracy_difference` (a mapping or
    one mapping per seed); within a task both arms must share item ids. Estimate:
    ``100 · mean_t (mean_i b̄_ti − mean_i ā_ti)`` — e.g. the study's composite
    ``(ARC-Easy % + LAMBADA %) / 2``. CI: stratified paired bootstrap — each task's per-item differences are
    resampled independently at their own size (``scipy.stats.bootstrap`` with one sample per task,
    ``paired=False`` across tasks), so a 200-item task and a 100-item task keep their sizes. p: paired
    permutation test swapping the arms within each item. ``n`` is the total number of items.
    """
    _check_confidence(confidence, n_resamples)
    if isinstance(parts, (str, bytes, Mapping)) or not isinstance(parts, Sequence) or not parts:
        raise PrunelabError("a composite needs a non-empty list of (first arm, second arm) pairs, one per task")
    xs_a, xs_b = [], []
    for t, part in enumerate(parts):
        if not (isinstance(part, (tuple, list)) and len(part) == 2):
            raise PrunelabError(f"composite part {t} must be a (first arm, second arm) pair")
        xa, xb = paired_outcomes(_item_means(_seed_runs(part[0], f"the first arm of task {t}")),
                                 _item_means(_seed_runs(part[1], f"the second arm of task {t}")))
        xs_a.append(xa)
        xs_b.append(xb)
    ds = [xb - xa for xa, xb in zip(xs_a, xs_b)]
    sizes = [d.size for d in ds]
    n = int(sum(sizes))
    k = len(ds)
    est = 100.0 * float(np.mean([d.mean() for d in ds]))
    desc = f"stratified paired bootstrap over items of {k} tasks"
    flat = np.concatenate(ds)
    if np.all(flat == 0):
        return Difference(0.0, 0.0, 0.0, 1.0, n, f"{desc}: all item differences 0")

    def comp(*samples, axis=-1):
        return sum(np.mean(s, axis=axis) for s in samples) / k

    if min(sizes) < 2:
        lo = hi = math.nan
        used = "too few items for a CI"
    else:
        lo, hi, used = _bootstrap_ci(tuple(ds), comp, paired=False, confidence=confidence, n_resamples=n_resamples,
                                     seed=seed)
        lo, hi = 100.0 * lo, 100.0 * hi

    # Permutation test over all items at once: the samples are item *indices* into [arm a values ; arm b values],
    # so permutation_type="samples" swaps the two arms' values of one item while each position keeps its task.
    va, vb = np.concatenate(xs_a), np.concatenate(xs_b)
    lookup = np.concatenate([va, vb])
    bounds = np.cumsum([0, *sizes])

    def comp_idx(ia, ib, axis=-1):
        diff = lookup[np.asarray(ib, dtype=np.intp)] - lookup[np.asarray(ia, dtype=np.intp)]
        return sum(diff[..., bounds[t]:bounds[t + 1]].mean(axis=-1) for t in range(k)) / k

    p = _permutation_p((np.arange(n), np.arange(n) + n), comp_idx, permutation_type="samples",
                       n_resamples=n_resamples, seed=seed)
    return Difference(est, lo, hi, p, n, f"{desc} ({used}, {n_resamples}); paired permutation test ({n_resamples})")


def observed_discordance(a, b) -> float:
    """Discordance ψ = mean over items of ``(b̄_i − ā_i)²`` — for single-seed 0/1 outcomes, the share of items
    exactly one model gets right (``(n01 + n10) / n``). Feed it to :func:`mde_paired` as ``discordance``.
    """
    xa, xb = paired_outcomes(_item_means(_seed_runs(a, "the first arm")), _item_means(_seed_runs(b, "the second arm")))
    return float(np.mean((xb - xa) ** 2))


def mean_ci(values, *, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> Interval:
    """One arm's accuracy (percent) with its CI.

    ``values``: ``{item_id: outcome}``, a sequence of outcomes, or a sequence of mappings (one per seed). For
    single-seed 0/1 outcomes the CI is Wilson's score interval (Wilson 1927, JASA 22:209; via
    ``scipy.stats.binomtest(...).proportion_ci(method="wilson")``), which stays inside [0, 100] and is not
    degenerate at 0 % or 100 % the way a bootstrap is. Otherwise (fractions, or several seeds averaged per item)
    a bootstrap over items (BCa).
    """
    _check_confidence(confidence, n_resamples)
    if isinstance(values, Mapping) or (isinstance(values, Sequence) and values
                                       and all(isinstance(v, Mapping) for v in values)):
        runs = _seed_runs(values, "the arm")
        x = np.fromiter(_item_means(runs).values(), dtype=float)
        n_seeds = len(runs)
    else:
        x = _values(values, "the arm")
        n_seeds = 1
    n = int(x.size)
    est = 100.0 * float(x.mean())
    if n_seeds == 1 and _is_binary(x):
        ci = stats.binomtest(int(x.sum()), n).proportion_ci(confidence_level=confidence, method="wilson")
        return Interval(est, 100.0 * float(ci.low), 100.0 * float(ci.high), n, "Wilson score interval")
    seeds = "" if n_seeds == 1 else f", {n_seeds} seeds averaged per item"
    if np.all(x == x[0]) or n < 2:
        return Interval(est, est if n >= 2 else math.nan, est if n >= 2 else math.nan, n,
                        f"bootstrap over items (constant outcomes){seeds}")
    lo, hi, used = _bootstrap_ci((x,), lambda s, axis=-1: np.mean(s, axis=axis), paired=False,
                                 confidence=confidence, n_resamples=n_resamples, seed=seed)
    return Interval(est, 100.0 * lo, 100.0 * hi, n, f"bootstrap over items ({used}, {n_resamples}){seeds}")


# --------------------------------------------------------------------------------------------------------------
# perplexity
# --------------------------------------------------------------------------------------------------------------


def _windows(x, name: str) -> dict[str, tuple[float, float]]:
    if not isinstance(x, Mapping) or not x:
        raise PrunelabError(f"{name} must be a non-empty mapping window id -> (nll_sum, n_tokens)")
    out = {}
    for k, v in x.items():
        try:
            nll, tok = float(v[0]), float(v[1])
        except (TypeError, ValueError, IndexError):
            raise PrunelabError(f"window {k!r} of {name} must be (nll_sum, n_tokens), got {v!r}") from None
        if not math.isfinite(nll) or nll < 0:
            raise PrunelabError(f"window {k!r} of {name} has an invalid NLL sum {nll}")
        if not (tok > 0):
            raise PrunelabError(f"window {k!r} of {name} has no scored tokens ({tok})")
        out[str(k)] = (nll, tok)
    return out


def perplexity_ratio(a: Mapping[str, tuple[float, int]], b: Mapping[str, tuple[float, int]], *,
                     confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> Difference:
    """Perplexity ratio ``ppl_b / ppl_a`` over the same windows, with a paired bootstrap CI over windows.

    Each side maps window id -> ``(nll_sum, n_tokens)``. With token-weighted mean NLLs
    ``m = Σ nll / Σ tokens`` (the usual corpus perplexity ``exp(m)``), the estimate is
    ``exp(m_b − m_a) = ppl_b / ppl_a``. CI: windows resampled jointly for both models (BCa on ``m_b − m_a``,
    exponentiated — BCa and percentile intervals are transformation-respecting); p: paired permutation test
    swapping the two models' ``(nll, tokens)`` within a window. Identical windows -> ×1 [1, 1], p = 1.
    """
    _check_confidence(confidence, n_resamples)
    wa, wb = _windows(a, "the first model's windows"), _windows(b, "the second model's windows")
    ka, kb = set(wa), set(wb)
    if ka != kb:
        raise PrunelabError(f"the two models were not evaluated on the same windows ({len(ka & kb)} of "
                            f"{len(ka | kb)} shared); a perplexity ratio needs identical windows")
    ids = sorted(ka)
    n = len(ids)
    nll = np.array([wa[i][0] for i in ids] + [wb[i][0] for i in ids])
    tok = np.array([wa[i][1] for i in ids] + [wb[i][1] for i in ids])
    est_log = nll[n:].sum() / tok[n:].sum() - nll[:n].sum() / tok[:n].sum()
    est = float(math.exp(est_log))
    desc = "paired bootstrap over windows"
    if np.array_equal(nll[:n], nll[n:]) and np.array_equal(tok[:n], tok[n:]):
        return Difference(1.0, 1.0, 1.0, 1.0, n, f"{desc}: identical windows", unit="ratio")

    # Samples are window *indices* into the concatenated [model a ; model b] arrays, so one resample or one
    # within-window swap moves a window's (nll, tokens) together — scipy resamples/permutes 1-D samples only.
    def log_ratio_idx(ia, ib, axis=-1):
        ia, ib = np.asarray(ia, dtype=np.intp), np.asarray(ib, dtype=np.intp)
        return nll[ib].sum(axis=-1) / tok[ib].sum(axis=-1) - nll[ia].sum(axis=-1) / tok[ia].sum(axis=-1)

    def boot_stat(idx, axis=-1):
        idx = np.asarray(idx, dtype=np.intp)
        return log_ratio_idx(idx, idx + n)

    if n < 2:
        lo = hi = math.nan
        used = "too few windows for a CI"
    else:
        lo_log, hi_log, used = _bootstrap_ci((np.arange(n),), boot_stat, paired=False, confidence=confidence,
                                             n_resamples=n_resamples, seed=seed)
        lo, hi = math.exp(lo_log), math.exp(hi_log)
    p = _permutation_p((np.arange(n), np.arange(n) + n), log_ratio_idx, permutation_type="samples",
                       n_resamples=n_resamples, seed=seed)
    return Difference(est, lo, hi, p, n, f"{desc} ({used}, {n_resamples}); paired permutation test ({n_resamples})",
                      unit="ratio")


# --------------------------------------------------------------------------------------------------------------
# power: minimum detectable differences and sample sizes
# --------------------------------------------------------------------------------------------------------------
#
# Paired design (McNemar), normal approximation of Connor (1987, "Sample size for testing differences in
# proportions for the paired-sample design", Biometrics 43(1):207–211, formula on p. 209; also Lachin 1992,
# Stat Med 11:1239–1251). Per item the difference d_i ∈ {−1, 0, 1} has mean δ (the accuracy difference) and
# E[d²] = ψ, the discordance rate (share of items exactly one model gets right). A two-sided level-α test
# has power 1−β when
#
#     n = [ z_{1−α/2} · √ψ  +  z_{1−β} · √(ψ − δ²) ]²  /  δ²                       (Connor 1987, p. 209)
#
# Solved for δ at a given n this is the minimum detectable difference (MDE). Without an observed ψ we use the
# binomial bound ψ = 2·acc·(1 − acc): the discordance of two models of accuracy ≈ acc whose errors are
# *independent*. Models that share a base (pruned vs recovered) make correlated errors, so their real ψ is
# usually lower and the real MDE smaller: the bound is conservative unless errors are negatively correlated.
# A composite (mean of T tasks) has Var = (1/T²) Σ_t Var_t / n_t, so the same equation holds with
# √(ψ/n) replaced by (1/T)·√(Σ_t ψ_t / n_t) (null) and √((ψ − δ²)/n) by (1/T)·√(Σ_t (ψ_t − δ²) / n_t)
# (alternative, every task shifted by δ). scipy has no power routines for these designs, hence the closed
# forms (solved for δ with scipy.optimize.brentq).


def _check_power_args(alpha: float, power: float) -> tuple[float, float]:
    if not (0.0 < float(alpha) < 1.0):
        raise PrunelabError(f"alpha must be between 0 and 1 (exclusive), got {alpha}")
    if not (0.0 < float(power) < 1.0):
        raise PrunelabError(f"power must be between 0 and 1 (exclusive), got {power}")
    return float(stats.norm.ppf(1.0 - alpha / 2.0)), float(stats.norm.ppf(power))


def _check_acc(acc: float) -> float:
    try:
        acc = float(acc)
    except (TypeError, ValueError):
        raise PrunelabError(f"accuracy must be a number in (0, 1), got {acc!r}") from None
    if not (0.0 < acc < 1.0):
        hint = " (give a fraction, e.g. 0.3 for 30 %)" if 1.0 <= acc <= 100.0 else ""
        raise PrunelabError(f"accuracy must be strictly between 0 and 1, got {acc:g}{hint}")
    return acc


def _psi(acc: float, discordance: float | None) -> float:
    acc = _check_acc(acc)
    if discordance is None:
        return 2.0 * acc * (1.0 - acc)
    try:
        psi = float(discordance)
    except (TypeError, ValueError):
        raise PrunelabError(f"discordance must be a number in (0, 1], got {discordance!r}") from None
    if not (0.0 < psi <= 1.0):
        raise PrunelabError(f"discordance (share of items exactly one model gets right) must be in (0, 1], got {psi:g}")
    return psi


def _check_n(n, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise PrunelabError(f"{what} must be a positive whole number of items, got {n!r}")
    return int(n)


def _strata(parts) -> list[tuple[int, float]]:
    out = []
    for part in parts:
        if not isinstance(part, (tuple, list)) or len(part) not in (2, 3):
            raise PrunelabError("each composite part must be (n, acc) or (n, acc, discordance)")
        disc = part[2] if len(part) == 3 else None
        out.append((_check_n(part[0]), _psi(part[1], disc)))
    if not out:
        raise PrunelabError("a composite needs at least one (n, acc[, discordance]) part")
    return out


def _mde(strata: list[tuple[int, float]], z_a: float, z_b: float) -> float:
    """Solve δ = z_a·SE0 + z_b·SE1(δ) for δ ∈ (0, min ψ] (Connor 1987, p. 209, generalised to strata); ∞ if
    no such δ exists."""
    k = len(strata)
    se0 = math.sqrt(sum(psi / n for n, psi in strata)) / k
    top = min(psi for _, psi in strata)  # |δ| ≤ ψ: a difference needs at least that many discordant items

    def f(delta: float) -> float:
        se1 = math.sqrt(sum(max(psi - delta * delta, 0.0) / n for n, psi in strata)) / k
        return delta - z_a * se0 - z_b * se1

    if f(top) < 0:  # f increases with δ; even the largest possible difference is not detectable
        return math.inf
    return float(optimize.brentq(f, 1e-12, top, xtol=1e-12))


def mde_paired(n: int, acc: float, discordance: float | None = None, alpha: float = 0.05,
               power: float = 0.8) -> float:
    """Minimum detectable paired accuracy difference (pp) on ``n`` items at the given α (two-sided) and power.

    Connor (1987, p. 209) solved for δ (see the block comment above); ``discordance`` ψ is the observed share of
    items exactly one model gets right, or ``None`` for the binomial bound ``ψ = 2·acc·(1 − acc)`` (independent
    errors at accuracy ``acc``, a fraction in (0, 1)). ``acc`` is only used for that bound. Returns ``inf`` when
    no difference up to ψ is detectable with ``n`` items.
    """
    z_a, z_b = _check_power_args(alpha, power)
    return 100.0 * _mde([(_check_n(n), _psi(acc, discordance))], z_a, z_b)


def n_needed(effect_pp: float, acc: float, discordance: float | None = None, alpha: float = 0.05,
             power: float = 0.8) -> int:
    """Items needed to detect a paired difference of ``effect_pp`` percentage points (Connor 1987, p. 209).

    ``n = ⌈[z_{1−α/2}·√ψ + z_{1−β}·√(ψ − δ²)]² / δ²⌉`` with δ = effect/100 and ψ as in :func:`mde_paired`.
    """
    z_a, z_b = _check_power_args(alpha, power)
    psi = _psi(acc, discordance)
    delta = _effect(effect_pp)
    if delta > psi:
        raise PrunelabError(f"an effect of {effect_pp:g} pp needs at least {100 * delta:g} % discordant items, "
                            f"but the discordance is {100 * psi:.3g} %")
    n = (z_a * math.sqrt(psi) + z_b * math.sqrt(psi - delta * delta)) ** 2 / (delta * delta)
    return int(math.ceil(n - 1e-9))  # the tolerance keeps n_needed(mde_paired(n)) == n despite float round-off


def _effect(effect_pp: float) -> float:
    try:
        e = abs(float(effect_pp))
    except (TypeError, ValueError):
        raise PrunelabError(f"effect must be a number of percentage points, got {effect_pp!r}") from None
    if not (0.0 < e <= 100.0):
        raise PrunelabError(f"effect must be between 0 and 100 percentage points (exclusive of 0), got {effect_pp:g}")
    return e / 100.0


def mde_composite(parts: Sequence[tuple], alpha: float = 0.05, power: float = 0.8) -> float:
    """MDE (pp) of a paired composite = mean of tasks' accuracies; ``parts`` = ``[(n, acc[, discordance]), ...]``.

    Connor's equation with the composite's variance ``(1/T²)·Σ_t ψ_t/n_t`` (see the block comment); one part
    gives exactly :func:`mde_paired`.
    """
    z_a, z_b = _check_power_args(alpha, power)
    return 100.0 * _mde(_strata(parts), z_a, z_b)


def critical_difference(parts: Sequence[tuple], alpha: float = 0.05) -> float:
    """Smallest observed paired difference (pp) that reaches ``p < alpha`` under the normal approximation.

    ``z_{1−α/2} · SE0`` with ``SE0 = (1/T)·√(Σ_t ψ_t/n_t)``; ``parts`` as for :func:`mde_composite`. It is
    smaller than the MDE: an effect of exactly this size would be detected only half the time.
    """
    z_a, _ = _check_power_args(alpha, 0.5)
    strata = _strata(parts)
    return 100.0 * z_a * math.sqrt(sum(psi / n for n, psi in strata)) / len(strata)


# Two independent arms (different items), normal approximation without continuity correction (Fleiss, Levin &
# Paik 2003, "Statistical Methods for Rates and Proportions", 3rd ed., ch. 4), arms at acc ∓ δ/2 so that the
# pooled accuracy is acc:  n per arm = [z_{1−α/2}·√(2·p̄q̄) + z_{1−β}·√(p1q1 + p2q2)]² / δ².


def _n_unpaired(delta: float, acc: float, z_a: float, z_b: float) -> float:
    p1, p2 = acc - delta / 2.0, acc + delta / 2.0
    return (z_a * math.sqrt(2 * acc * (1 - acc)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / delta ** 2


def mde_unpaired(n: int, acc: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """MDE (pp) between two independent arms of ``n`` items each around accuracy ``acc`` (Fleiss et al., ch. 4)."""
    z_a, z_b = _check_power_args(alpha, power)
    n = _check_n(n)
    acc = _check_acc(acc)
    top = 2.0 * min(acc, 1.0 - acc)  # both arms' accuracies must stay within [0, 1]
    if _n_unpaired(top, acc, z_a, z_b) > n:
        return math.inf
    return 100.0 * float(optimize.brentq(lambda d: _n_unpaired(d, acc, z_a, z_b) - n, 1e-9, top, xtol=1e-12))


def n_needed_unpaired(effect_pp: float, acc: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Items needed *per arm* for two independent arms to detect ``effect_pp`` (Fleiss et al. 2003, ch. 4)."""
    z_a, z_b = _check_power_args(alpha, power)
    acc = _check_acc(acc)
    delta = _effect(effect_pp)
    if delta > 2.0 * min(acc, 1.0 - acc):
        raise PrunelabError(f"an effect of {effect_pp:g} pp around {100 * acc:g} % accuracy would leave [0, 100] %")
    return int(math.ceil(_n_unpaired(delta, acc, z_a, z_b) - 1e-9))
