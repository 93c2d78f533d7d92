"""Differences with their uncertainty, for every table that prints one (recovery study, depth study, dichotomy).

A *difference* between two evaluated models is computed from the stored per-item outcomes
(:class:`prunelab.evaluate.registry.ItemOutcome`) by :mod:`prunelab.stats`: paired by item id (Efron &
Tibshirani 1993, the paired bootstrap), several seeds resampled jointly with the item as the unit, McNemar's
exact test (McNemar 1947) for the p-value of paired accuracies, and for a composite of two tasks each task's
items resampled separately. Differences whose per-item data are missing keep the seed summary
(mean ± SD) and say "no per-item data, no CI"; differences between different item sets are never paired.

:class:`DiffCell` is one such printed difference; :class:`Outcomes` holds the per-item outcomes of a store's
runs; :class:`MdeCollector` gathers the sizes and discordance rates a table's comparisons actually had, for the
minimum-detectable-difference line printed under the table.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.table import WITHIN_NOISE  # the noise column's CSV header, named once with the tables (legend text)

#: the composite score's tasks: composite = mean(ARC-Easy gen %, LAMBADA gen %)
from prunelab.scores import STUDY_COMPOSITE as COMPOSITE_TASKS  # the default; a report reads its runs' parts
NO_DATA = "no per-item data, no CI"
NOT_PAIRED = "different items, not paired: no CI"
MARK_NO_DATA = "‡"
MARK_NOT_PAIRED = "§"


def _stats():
    # imported lazily: report modules load without scipy until a CI is actually computed
    from prunelab import stats

    return stats


# ------------------------------------------------------------------------------------------- outcomes
@dataclass
class Outcomes:
    """Per-item outcomes keyed by ``(run hash, phase, task)``; phase is ``eval``, ``relapse`` or ``chronic:<k>``."""

    data: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    def get(self, h: str, phase: str, task: str) -> dict[str, Any]:
        return self.data.get((h, phase, task), {})

    def __bool__(self) -> bool:
        return any(self.data.values())

    @classmethod
    def from_records(cls, runs: Sequence[Any]) -> "Outcomes":
        """From runs that carry their outcomes in memory (``RunRecord.outcomes``: ``{phase: {task: [...]}}``),
        e.g. before they are stored."""
        out = cls()
        for rec in runs:
            for phase, tasks in (getattr(rec, "outcomes", None) or {}).items():
                for t, items in tasks.items():
                    if items:
                        out.data[(rec.hash, phase, t)] = {o.item_id: o for o in items}
        return out

    @classmethod
    def from_store(cls, store: Any, runs: Sequence[Any]) -> "Outcomes":
        """Every stored outcome of ``runs`` (a store written before outcomes existed gives an empty set)."""
        out = cls()
        bulk = getattr(store, "all_outcomes", None)
        if bulk is not None:
            for h, phases in bulk([r.hash for r in runs]).items():
                for phase, tasks in phases.items():
                    for t, items in tasks.items():
                        if items:
                            out.data[(h, phase, t)] = dict(items)
            return out
        reader = getattr(store, "outcomes", None)
        if reader is None:  # a store class from before per-item outcomes
            return out
        for rec in runs:
            for phase, tasks in run_phases(rec).items():
                for t in tasks:
                    got = reader(rec.hash, phase, t)
                    if got:
                        out.data[(rec.hash, phase, t)] = dict(got)
        return out


def run_phases(rec: Any) -> dict[str, list[str]]:
    """The evaluation phases a stored run holds and the tasks evaluated in each (``composite`` is derived,
    never stored per item): :meth:`prunelab.runs.result.RunMetrics.phases`."""
    return rec.metrics.phases()


def correct_map(outcomes: Mapping[str, Any]) -> dict[str, float]:
    """``{item_id: correct}`` of an accuracy task's outcomes (empty when the task has no per-item verdicts)."""
    out = {}
    for k, o in outcomes.items():
        c = o.correct if hasattr(o, "correct") else o.get("correct")
        if c is None:
            return {}
        out[k] = float(c)
    return out


def nll_map(outcomes: Mapping[str, Any]) -> dict[str, tuple[float, int]]:
    """``{window_id: (nll_sum, n_tokens)}`` of a perplexity task's outcomes (empty when absent)."""
    out = {}
    for k, o in outcomes.items():
        nll = o.nll if hasattr(o, "nll") else o.get("nll")
        tok = o.tokens if hasattr(o, "tokens") else o.get("tokens")
        if nll is None or not tok:
            return {}
        out[k] = (float(nll), int(tok))
    return out


# ------------------------------------------------------------------------------------------- one cell
@dataclass
class DiffCell:
    """One printed difference: its :class:`prunelab.stats.Difference` (CI, p) when per-item data exist,
    else the seed summary ``{"mean", "sd", "n"}`` and the reason it has no CI."""

    summary: dict[str, Any] | None = None
    diff: Any | None = None
    reason: str = ""
    digits: int = 1

    @property
    def estimate(self) -> float | None:
        if self.diff is not None:
            return float(self.diff.estimate)
        return None if self.summary is None else float(self.summary["mean"])

    @property
    def has_ci(self) -> bool:
        return self.diff is not None

    @property
    def within_noise(self) -> bool:
        """True when the 95 % CI includes zero (for a ratio: one) or p ≥ 0.05 — not a finding."""
        if self.diff is None:
            return False
        null = 1.0 if getattr(self.diff, "unit", "pp") == "ratio" else 0.0
        lo, hi = float(self.diff.low), float(self.diff.high)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= null <= hi:
            return True
        # the BCa interval and the exact / permutation test are computed differently and can disagree at the
        # edge; a difference either of them cannot tell from noise is labelled so
        return not self.diff.significant

    @property
    def unpaired(self) -> bool:
        return self.diff is not None and not getattr(self.diff, "paired", True)

    def text(self, signed: bool = True) -> str:
        if self.diff is not None:
            return self.diff.markdown(digits=self.digits)  # carries "*" (p < 0.05) and "(unpaired)"
        if self.summary is None:
            return "–"
        sign = "+" if signed else ""
        s = f"{self.summary['mean']:{sign}.{self.digits}f}"
        if self.summary.get("sd") is not None:
            s += f" ± {self.summary['sd']:.{self.digits}f}"
        # the typographic minus, as prunelab.stats prints it, so a column reads the same with or without CIs
        return s.replace("-", "\u2212") + " " + (MARK_NOT_PAIRED if self.reason == NOT_PAIRED else MARK_NO_DATA)

    def fields(self) -> tuple[float | None, float | None, float | None, float | None]:
        """``(estimate, low, high, p)`` for CSV (None where there is no CI)."""
        if self.diff is None:
            return self.estimate, None, None, None
        d = self.diff
        return _f(d.estimate), _f(d.low), _f(d.high), _f(d.p)

    def as_dict(self) -> dict[str, Any]:
        if self.diff is not None:
            return {**self.diff.as_dict(), "within_noise": self.within_noise}
        return {"estimate": self.estimate, "low": None, "high": None, "p": None, "summary": self.summary,
                "reason": self.reason or NO_DATA}

    def __str__(self) -> str:
        return self.text()


def _f(v: Any) -> float | None:
    """A finite float or None (an undefined bound or p: too few items, or not computed)."""
    return None if v is None or not math.isfinite(float(v)) else float(v)


# ------------------------------------------------------------------------------------------- MDE
@dataclass
class MdeCollector:
    """Sizes, accuracies and discordance rates of the paired comparisons behind one table."""

    seen: dict[str, list[tuple[int, float, float | None]]] = field(default_factory=lambda: defaultdict(list))
    composite: bool = False
    #: the composite's parts (the runs' ``eval.composite``)
    parts: tuple[str, ...] = COMPOSITE_TASKS

    def add(self, task: str, n: int, acc: float, discordance: float | None) -> None:
        """``acc`` a fraction; ``discordance`` ψ observed between the compared arms (None: binomial bound)."""
        if n > 0 and math.isfinite(acc):
            self.seen[task].append((int(n), float(acc), discordance))

    def add_summary(self, task: str, n: int | None, acc_pct: float | None) -> None:
        """A size known only from stored scores (no per-item data): the binomial bound applies."""
        if n and acc_pct is not None and math.isfinite(acc_pct):
            self.add(task, int(n), acc_pct / 100.0, None)

    def _parts(self) -> dict[str, tuple[int, float, float | None]]:
        out = {}
        for task, entries in self.seen.items():
            n = min(e[0] for e in entries)  # the smallest evaluated size bounds what the table can show
            acc = min(max(sum(e[1] for e in entries) / len(entries), 0.01), 0.99)  # the bound needs acc ∈ (0, 1)
            disc = sorted(e[2] for e in entries if e[2])
            # the median observed discordance: one number per task, robust to a single odd comparison
            out[task] = (n, acc, disc[len(disc) // 2] if disc else None)
        return out

    def lines(self) -> list[str]:
        """The minimum detectable paired difference at 80 % power, α = 0.05, per task (and for the composite)."""
        parts = self._parts()
        if not parts:
            return []
        S = _stats()
        text = []
        bound = f"binomial bound at {{:.0f}} % accuracy"
        for task, (n, acc, d) in list(parts.items()):
            try:
                mde = S.mde_paired(n, acc, discordance=d)
                how = f"observed discordance {d:.2f}" if d else bound.format(100 * acc)
                if d and not math.isfinite(mde):
                    # a difference larger than the observed discordance would itself change it: the observed
                    # rate bounds nothing there, so the binomial bound is the honest figure
                    mde = S.mde_paired(n, acc)
                    how = f"observed discordance {d:.2f} too low to bound it; " + bound.format(100 * acc)
                    parts[task] = (n, acc, None)
            except PrunelabError:
                continue
            text.append(f"{task} n = {n}: {_pp(mde)} ({how})")
        if self.composite and all(t in parts for t in self.parts):
            try:
                mde = S.mde_composite([parts[t] for t in self.parts])
                text.append(f"composite: {_pp(mde)}")
            except PrunelabError:
                pass
        if not text:
            return []
        return ["Minimum detectable difference (paired, 80 % power, α = 0.05) at the evaluated sizes: "
                + "; ".join(text) + "."]


def _pp(x: float) -> str:
    return "none detectable" if not math.isfinite(x) else f"{x:.1f} pp"


# ------------------------------------------------------------------------------------------- comparisons
Side = Mapping[int, tuple[str, str]]  # seed -> (run hash, phase)


def _maps(outcomes: Outcomes, side: Side, seeds: Sequence[int], task: str) -> list[dict[str, float]] | None:
    maps = [correct_map(outcomes.get(*side[s], task)) for s in seeds]
    return maps if all(maps) else None


def _arg(maps: list[dict[str, float]]) -> Any:
    return maps[0] if len(maps) == 1 else maps


def accuracy_cell(outcomes: Outcomes | None, x: Side, y: Side, tasks: Sequence[str],
                  summary: dict[str, Any] | None, mde: MdeCollector | None = None, digits: int = 1) -> DiffCell:
    """``x − y`` in percentage points on one task, or on the composite (unweighted mean of ``tasks``).

    Seeds are paired by seed (a treated run and the untreated baseline of its seed), items by item id; with
    several seeds the per-seed mappings go to :mod:`prunelab.stats`, which averages them per item and resamples
    items (cluster bootstrap). Different item sets are never paired: one task, one seed → the unpaired
    difference, labelled so; otherwise no CI, with :data:`NOT_PAIRED` as the reason.
    """
    seeds = sorted(set(x) & set(y))
    if not outcomes or not seeds:
        return DiffCell(summary, None, NO_DATA, digits)
    per_task = []
    for t in tasks:
        xm, ym = _maps(outcomes, x, seeds, t), _maps(outcomes, y, seeds, t)
        if xm is None or ym is None:
            return DiffCell(summary, None, NO_DATA, digits)
        per_task.append((t, xm, ym))
    S = _stats()
    paired = all(set(xs) == set(ys) for _, xm, ym in per_task for xs, ys in zip(xm, ym))
    try:
        if not paired:
            if len(per_task) == 1 and len(seeds) == 1:
                _, xm, ym = per_task[0]
                return DiffCell(summary, S.unpaired_accuracy_difference(ym[0], xm[0]), "", digits)
            return DiffCell(summary, None, NOT_PAIRED, digits)
        # prunelab.stats reports b − a: the reference (y) goes first
        args = [(_arg(ym), _arg(xm)) for _, xm, ym in per_task]
        diff = S.composite_difference(args) if len(args) > 1 else S.accuracy_difference(*args[0])
    except PrunelabError as exc:
        return DiffCell(summary, None, f"no CI: {exc}", digits)
    if mde is not None:
        observe(outcomes, x, y, tasks, mde)
    return DiffCell(summary, diff, "", digits)


def observe(outcomes: Outcomes | None, x: Side, y: Side, tasks: Sequence[str], mde: MdeCollector) -> None:
    """Record, per task, the item count, the reference's accuracy and the observed discordance of ``x`` vs
    ``y`` (no resampling: cheap), for the minimum detectable difference under a table."""
    seeds = sorted(set(x) & set(y))
    if not outcomes or not seeds:
        return
    S = _stats()
    for t in tasks:
        xm, ym = _maps(outcomes, x, seeds, t), _maps(outcomes, y, seeds, t)
        if xm is None or ym is None:
            continue
        try:
            disc = S.observed_discordance(_arg(ym), _arg(xm))
        except PrunelabError:  # different items: nothing paired to observe
            continue
        acc = sum(sum(m.values()) / len(m) for m in ym) / len(ym)
        mde.add(t, len(ym[0]), acc, disc or None)


def did_cell(outcomes: Outcomes | None, x_treated: Side, x_base: Side, y_treated: Side, y_base: Side,
             tasks: Sequence[str], summary: dict[str, Any] | None, digits: int = 1) -> DiffCell:
    """Difference in differences ``(x_treated − x_base) − (y_treated − y_base)`` (pp), e.g. one model's recovery
    minus another's, paired by item id across all four arms.

    :mod:`prunelab.stats` compares outcomes in [0, 1], so each item enters as the two halves
    ``a_i = (ȳT_i + x̄B_i)/2`` and ``b_i = (x̄T_i + ȳB_i)/2`` (bars: seed means); ``b_i − a_i`` is half the item's
    difference in differences, so the composite bootstrap and the within-item permutation test of ``b − a``
    apply unchanged and the estimate and CI are doubled (the p-value is scale-free).
    """
    sides = (x_treated, x_base, y_treated, y_base)
    if not outcomes:
        return DiffCell(summary, None, NO_DATA, digits)
    x_seeds = sorted(set(x_treated) & set(x_base))
    y_seeds = sorted(set(y_treated) & set(y_base))
    if not x_seeds or not y_seeds:
        return DiffCell(summary, None, NO_DATA, digits)
    parts = []
    for t in tasks:
        maps = [_maps(outcomes, s, x_seeds if i < 2 else y_seeds, t) for i, s in enumerate(sides)]
        if any(m is None for m in maps):
            return DiffCell(summary, None, NO_DATA, digits)
        means = [{k: sum(m[k] for m in ms) / len(ms) for k in ms[0]} if all(set(m) == set(ms[0]) for m in ms)
                 else None for ms in maps]
        if any(m is None for m in means) or len({frozenset(m) for m in means}) != 1:
            return DiffCell(summary, None, NOT_PAIRED, digits)
        xt, xb, yt, yb = means
        parts.append(({k: (yt[k] + xb[k]) / 2 for k in xt}, {k: (xt[k] + yb[k]) / 2 for k in xt}))
    S = _stats()
    try:
        half = S.composite_difference(parts) if len(parts) > 1 else S.accuracy_difference(*parts[0])
    except PrunelabError as exc:
        return DiffCell(summary, None, f"no CI: {exc}", digits)
    d = S.Difference(2 * half.estimate, 2 * half.low, 2 * half.high, half.p, half.n,
                     f"difference in differences, items paired across the four arms: {half.method}")
    return DiffCell(summary, d, "", digits)


def perplexity_cell(x: Mapping[str, Any], y: Mapping[str, Any], summary: dict[str, Any] | None = None,
                    digits: int = 2) -> DiffCell:
    """``ppl(x) / ppl(y)`` with its CI (paired bootstrap over windows of the difference in mean NLL);
    ``x``/``y`` are ``{window_id: ItemOutcome}``."""
    bm, am = nll_map(x), nll_map(y)  # prunelab.stats reports ppl_b / ppl_a
    if not am or not bm:
        return DiffCell(summary, None, NO_DATA, digits)
    if set(am) != set(bm):
        return DiffCell(summary, None, NOT_PAIRED, digits)
    try:
        return DiffCell(summary, _stats().perplexity_ratio(am, bm), "", digits)
    except PrunelabError as exc:
        return DiffCell(summary, None, f"no CI: {exc}", digits)


def scaled(cell: DiffCell, factor: float, digits: int | None = None) -> DiffCell:
    """``factor ×`` a difference (e.g. recovery → recovery per petaFLOP at a fixed dose): CI scales with it,
    p is unchanged."""
    digits = cell.digits if digits is None else digits
    summ = None
    if cell.summary is not None:
        sd = cell.summary.get("sd")
        summ = {"mean": cell.summary["mean"] * factor, "sd": None if sd is None else sd * abs(factor),
                "n": cell.summary.get("n")}
    if cell.diff is None:
        return DiffCell(summ, None, cell.reason, digits)
    d = cell.diff
    lo, hi = sorted((d.low * factor, d.high * factor))
    S = _stats()
    new = S.Difference(d.estimate * factor, lo, hi, d.p, d.n, d.method, paired=getattr(d, "paired", True),
                       unit=getattr(d, "unit", "pp"))
    return DiffCell(summ, new, "", digits)


def legend(cells: Sequence[DiffCell]) -> list[str]:
    """The notes a table with these cells needs: what the brackets are, and the markers used."""
    notes = []
    with_ci = [c for c in cells if c.has_ci]
    if with_ci:
        ratio = any(getattr(c.diff, "unit", "pp") == "ratio" for c in with_ci)
        notes.append("Differences: estimate [95 % CI], * = p < 0.05. CI: bootstrap over items paired by item id "
                     "(BCa; several seeds are averaged per item and items resampled — the item is the unit; a "
                     "composite resamples each task's items); p: McNemar's exact test for one seed of 0/1 outcomes, "
                     "else a paired permutation test"
                     + ("; perplexity: ×ratio of perplexities, bootstrap over windows" if ratio else "")
                     + f". '{WITHIN_NOISE}' lists the differences whose CI includes "
                     + ("zero (ratio: one)" if ratio else "zero") + " or whose p ≥ 0.05: not distinguishable "
                     "from noise.")
    if any(c.reason == NO_DATA for c in cells):
        notes.append(f"{MARK_NO_DATA} {NO_DATA} (mean ± SD over seeds from stored scores; a store written before "
                     "per-item outcomes were kept).")
    if any(c.reason == NOT_PAIRED for c in cells):
        notes.append(f"{MARK_NOT_PAIRED} {NOT_PAIRED} — the two arms were evaluated on different items; "
                     "they are not compared item by item.")
    if any(c.unpaired for c in cells):
        notes.append("(unpaired) = different items: an unpaired bootstrap CI, wider than a paired one.")
    other = sorted({c.reason for c in cells if c.reason and c.reason not in (NO_DATA, NOT_PAIRED)})
    notes += [f"{MARK_NO_DATA} {r}" for r in other]
    return notes
