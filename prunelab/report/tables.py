"""The recovery study's Tables 1–6 from a results store, as Markdown + CSV + JSON, every difference with its CI.

Every derived number comes from :mod:`prunelab.scores`, per seed, then summarised:

- recovery      = composite_treated − composite_untreated (same model, pruning and seed)
- relapse_drop  = composite_treated − composite_after_relapse
- net_retained  = recovery − relapse_drop (= composite_after_relapse − composite_untreated)
- efficiency    = recovery / (FLOPs / 1e15), FLOPs = 6·P·L·N·E (the study's isodose formula)
- sweep score   = 0.4·recovery + 0.1·efficiency − 0.4·relapse_drop + 4, from the per-arm means (Table 5)

Every printed difference (those above, each mechanism vs the best, each rank vs rank 1, the transfer deltas,
the chronic decline) carries its 95 % CI and a ``*`` for p < 0.05, computed by :mod:`prunelab.stats` from the
stored per-item outcomes (:mod:`prunelab.report.comparisons`: paired by item id, seeds averaged per item with
the item as the resampling unit). A store without per-item outcomes prints mean ± SD over seeds and
"no per-item data, no CI". Under each table: the minimum detectable difference at the evaluated sizes.

A table with no data is left out with a note saying why; nothing is ever filled in.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prunelab import scores as M
from prunelab.errors import PrunelabError
from prunelab.evaluate.registry import task_spec
from prunelab.table import NOISE_COLUMN, Table as PlainTable
from prunelab.runs.result import ChronicCycle, PruningInfo, RunRecord, chronic_phase
from prunelab.report.comparisons import (
    COMPOSITE_TASKS, NO_DATA, DiffCell, MdeCollector, Outcomes, accuracy_cell, did_cell, legend,
    observe, scaled,
)

PRETTY_MECH = {"ketamine": "Ketamine-like", "ssri": "SSRI-like", "neurosteroid": "Neurosteroid-like"}


class Table(PlainTable):
    """A report table (:class:`prunelab.table.Table`) whose notes explain its differences' CIs and markers.

    Rows hold display strings and :class:`DiffCell` differences; ``number=None`` renders without the
    "Table N:" prefix (the depth-study and dichotomy tables)."""

    def legend(self, cells: Sequence[DiffCell]) -> list[str]:
        return legend(cells)


# --------------------------------------------------------------------------------------------- helpers
@dataclass
class Omitted:
    number: int
    title: str
    reason: str


def pretty(mech: str) -> str:
    return PRETTY_MECH.get(mech, mech)


def task_label(task: str) -> str:
    """The header of ``task``'s column: its :class:`~prunelab.evaluate.registry.TaskSpec` label (e.g.
    ``ARC-Easy (%)``); a task no longer registered (an old store) reads ``<task> (%)``."""
    try:
        return task_spec(task).label
    except PrunelabError:
        return f"{task} (%)"


def summarize(values: list[float]) -> dict[str, Any] | None:
    """``{"mean", "sd", "n"}`` (sd None for one value) via :func:`prunelab.scores.mean_sd`."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    ms = M.mean_sd(vals)
    return {"mean": ms.mean, "sd": None if math.isnan(ms.sd) else ms.sd, "n": ms.n}


def fmt(s: dict[str, Any] | None, digits: int = 1, signed: bool = False) -> str:
    """``mean ± sd`` (just the mean for a single seed, whose sample SD does not exist); ``–`` for no data."""
    if s is None:
        return "–"
    sign = "+" if signed else ""
    text = f"{s['mean']:{sign}.{digits}f}"
    if s.get("sd") is not None:
        text += f" ± {s['sd']:.{digits}f}"
    return text


def fmt_flops(x: float | None) -> str:
    if x is None:
        return "–"
    mant, exp = f"{x:.2e}".split("e")
    return f"{mant}e{int(exp)}"


Side = dict[int, tuple[str, str]]  # seed -> (run hash, outcomes phase)


@dataclass
class Arm:
    """One (model, pruning, mechanism) arm: per-seed derived values and the runs behind them."""

    model: str
    pruning: str
    mechanism: str
    r: int | None
    sweep: bool
    position: int
    scores: dict[int, dict[str, float]] = field(default_factory=dict)
    relapse: dict[int, dict[str, float]] = field(default_factory=dict)
    flops: dict[int, float] = field(default_factory=dict)
    epochs: dict[int, float] = field(default_factory=dict)
    honest: dict[int, float] = field(default_factory=dict)
    chronic: dict[int, tuple[ChronicCycle, ...]] = field(default_factory=dict)
    chronic_task: str | None = None
    hashes: dict[int, str] = field(default_factory=dict)
    formulas: dict[int, str] = field(default_factory=dict)

    def side(self, phase: str = "eval") -> Side:
        return {s: (h, phase) for s, h in self.hashes.items()
                if phase != "relapse" or s in self.relapse}


@dataclass
class Data:
    """Runs regrouped for the tables, with their per-item outcomes."""

    baselines: dict[tuple[str, str], dict[int, dict[str, float]]]   # (model, pruning) -> seed -> scores
    arms: list[Arm]
    groups: list[tuple[str, str]]                                    # (model, pruning) in experiment order
    descriptions: dict[str, str]
    tasks: list[str]
    structures: dict[tuple[str, str], PruningInfo]                  # pruned-model structure per group
    notes: list[str]
    baseline_hashes: dict[tuple[str, str], dict[int, str]] = field(default_factory=dict)
    n_items: dict[str, int] = field(default_factory=dict)           # task -> items evaluated (stored scores)
    outcomes: Outcomes = field(default_factory=Outcomes)
    composite: tuple[str, ...] = COMPOSITE_TASKS                     # the runs' eval.composite parts
    _cells: dict[Any, DiffCell] = field(default_factory=dict, repr=False)

    def base_side(self, g: tuple[str, str]) -> Side:
        return {s: (h, "eval") for s, h in self.baseline_hashes.get(g, {}).items()}

    def composite_tasks(self) -> tuple[str, ...]:
        return self.composite

    def cell(self, x: Side, y: Side, summary: dict[str, Any] | None, tasks: tuple[str, ...] | None = None,
             mde: MdeCollector | None = None) -> DiffCell:
        """``x − y`` (pp) on the composite (or ``tasks``), memoised: Tables 2, 3 and 6 share comparisons.
        ``mde`` collects the sizes and discordance of the comparison for the table's MDE line."""
        tasks = tasks or self.composite_tasks()
        key = (tuple(sorted(x.items())), tuple(sorted(y.items())), tasks)
        if key not in self._cells:
            self._cells[key] = accuracy_cell(self.outcomes, x, y, tasks, None)
        got = self._cells[key]
        if mde is not None and got.has_ci:
            observe(self.outcomes, x, y, tasks, mde)
        return DiffCell(summary, got.diff, got.reason, got.digits)


def collect(runs: Sequence[RunRecord], outcomes: Outcomes | None = None) -> Data:
    """Regroup stored runs for the tables: baselines and arms per (model, pruning), per seed."""
    baselines: dict[tuple[str, str], dict[int, dict[str, float]]] = defaultdict(dict)
    base_hashes: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    arms: dict[tuple[str, str, str, bool], Arm] = {}
    group_pos: dict[tuple[str, str], int] = {}
    descriptions: dict[str, str] = {}
    tasks: list[str] = []
    n_items: dict[str, int] = {}
    structures: dict[tuple[str, str], PruningInfo] = {}
    notes: set[str] = set()
    parts: set[tuple[str, ...]] = set()
    for rec in runs:
        parts.add(rec.config.composite_parts)
        g = (rec.model, rec.pruning)
        group_pos[g] = min(group_pos.get(g, rec.position), rec.position)
        if rec.meta.description:
            descriptions[rec.model] = rec.meta.description
        if rec.meta.note:
            notes.add(rec.meta.note)
        metrics = rec.metrics
        scores = dict(metrics.eval.scores)
        for t, n in metrics.eval.n.items():
            n_items[t] = min(n_items.get(t, int(n)), int(n))
        for t in scores:
            if t not in tasks:
                tasks.append(t)
        if rec.kind == "baseline":
            baselines[g][rec.seed] = scores
            base_hashes[g][rec.seed] = rec.hash
            structures.setdefault(g, metrics.model)
            continue
        treatment = rec.config.treatment
        # a rank-sweep arm and a treatment may share a name (ketamine-r32 in rank-sweep.yaml and transfer.yaml)
        key = (rec.model, rec.pruning, rec.mechanism, treatment.sweep)
        arm = arms.get(key)
        if arm is None:
            arm = arms[key] = Arm(rec.model, rec.pruning, treatment.mechanism.name, treatment.mechanism.r,
                                  treatment.sweep, rec.position)
        arm.position = min(arm.position, rec.position)
        arm.scores[rec.seed] = scores
        arm.hashes[rec.seed] = rec.hash
        if metrics.relapse is not None:
            arm.relapse[rec.seed] = dict(metrics.relapse.eval.scores)
        training = metrics.training
        if rec.flops is not None:
            arm.flops[rec.seed] = rec.flops
        if training is not None:
            arm.epochs[rec.seed] = training.epochs
            if training.recovery.honest_flops is not None:
                arm.honest[rec.seed] = training.recovery.honest_flops
        # which cost the isodose calibration held equal; stores from before the choice existed used the study's
        arm.formulas[rec.seed] = str((training.isodose_formula if training is not None else None) or "study")
        if metrics.chronic is not None:
            arm.chronic[rec.seed] = metrics.chronic.cycles
            chronic_spec = treatment.stress.chronic
            arm.chronic_task = chronic_spec.tasks[0] if chronic_spec is not None else None
    if "composite" in tasks:  # composite last, as in the study
        tasks = [t for t in tasks if t != "composite"] + ["composite"]
    groups = sorted(group_pos, key=lambda g: group_pos[g])
    arm_list = sorted(arms.values(), key=lambda a: a.position)
    if len(parts) > 1:  # one report, one meaning of "composite"
        raise PrunelabError("these runs define the composite differently (" + "; ".join(
            " + ".join(p) for p in sorted(parts)) + "): report them from separate stores or experiments")
    return Data(dict(baselines), arm_list, groups, descriptions, tasks, structures, sorted(notes),
                dict(base_hashes), n_items, outcomes or Outcomes(), next(iter(parts), COMPOSITE_TASKS))


def _per_seed(arm: Arm, data: Data) -> dict[int, dict[str, float]]:
    """Per-seed recovery / relapse_drop / net_retained / efficiency, paired on the seed."""
    base = data.baselines.get((arm.model, arm.pruning), {})
    out: dict[int, dict[str, float]] = {}
    for seed, sc in arm.scores.items():
        d: dict[str, float] = {}
        if "composite" in sc and seed in base and "composite" in base[seed]:
            d["recovery"] = M.recovery(sc["composite"], base[seed]["composite"])
            if arm.flops.get(seed):
                d["efficiency"] = M.efficiency(d["recovery"], arm.flops[seed])
        if "composite" in sc and seed in arm.relapse and "composite" in arm.relapse[seed]:
            d["relapse_drop"] = M.relapse_drop(sc["composite"], arm.relapse[seed]["composite"])
        if "recovery" in d and "relapse_drop" in d:
            d["net_retained"] = M.net_retained(d["recovery"], d["relapse_drop"])
        out[seed] = d
    return out


def _stat(per: dict[int, dict[str, float]], key: str) -> dict[str, Any] | None:
    return summarize([d[key] for d in per.values() if key in d])


def _group_cols(data: Data) -> bool:
    return len(data.groups) > 1


def _group_label(g: tuple[str, str]) -> list[str]:
    return [g[0], g[1]]


@dataclass
class Effects:
    """One arm's composite differences (Tables 2, 3, 5, 6), each a :class:`DiffCell`."""

    per: dict[int, dict[str, float]]
    recovery: DiffCell
    relapse_drop: DiffCell
    net_retained: DiffCell
    efficiency: DiffCell


def effects(arm: Arm, data: Data, mde: MdeCollector | None = None) -> Effects:
    """recovery = treated − untreated; relapse drop = treated − relapsed; net retained = relapsed − untreated
    (= recovery − relapse drop, item by item); efficiency = recovery per petaFLOP (the CI scales with it)."""
    per = _per_seed(arm, data)
    base = data.base_side((arm.model, arm.pruning))
    rec = data.cell(arm.side(), base, _stat(per, "recovery"), mde=mde)
    if arm.relapse:
        rel = data.cell(arm.side(), arm.side("relapse"), _stat(per, "relapse_drop"))
        net = data.cell(arm.side("relapse"), base, _stat(per, "net_retained"))
    else:
        rel = net = DiffCell(None)
    eff_sum = _stat(per, "efficiency")
    flops = set(arm.flops.values())
    if len(flops) == 1 and rec.summary is not None and next(iter(flops)) > 0:
        eff = scaled(rec, 1e15 / next(iter(flops)), digits=2)
        eff.summary = eff_sum
    else:  # a dose that differs between seeds has no single scale factor for the CI
        eff = DiffCell(eff_sum, None, NO_DATA if not rec.has_ci else "FLOPs differ between seeds, no CI", 2)
    return Effects(per, rec, rel, net, eff)


def _mde(data: Data, collector: MdeCollector, tasks: tuple[str, ...] | None = None,
         groups: list[tuple[str, str]] | None = None) -> list[str]:
    """The MDE line; tasks without per-item comparisons fall back to the binomial bound at the baseline's
    stored accuracy and item count."""
    tasks = tasks or data.composite_tasks()
    for t in tasks:
        if collector.seen.get(t):
            continue
        accs = [sc[t] for g in (groups or data.groups) for sc in data.baselines.get(g, {}).values() if t in sc]
        if accs:
            collector.add_summary(t, data.n_items.get(t), sum(accs) / len(accs))
    return collector.lines()


# ---------------------------------------------------------------------------------------------- tables
def table1(data: Data) -> Table | Omitted:
    title = "Post-Treatment Accuracy (Mean ± SD Across Seeds)"
    tasks = data.tasks
    if not tasks or not (data.baselines or data.arms):
        return Omitted(1, title, "no evaluated runs in the store")
    multi = _group_cols(data)
    cols = (["Model", "Pruning"] if multi else []) + ["Treatment"] + [task_label(t) for t in tasks] + ["Seeds"]
    rows, recs = [], []
    for g in data.groups:
        entries = [("Untreated (pruned)" if g[1] != "none" else "Untreated", None, data.baselines.get(g, {}))]
        entries += [(pretty(a.mechanism), a.mechanism, a.scores) for a in data.arms
                    if (a.model, a.pruning) == g and not a.sweep]
        for label, mech, by_seed in entries:
            if not by_seed:
                continue
            stats = {t: summarize([s[t] for s in by_seed.values() if t in s]) for t in tasks}
            rows.append((_group_label(g) if multi else []) + [label] + [fmt(stats[t]) for t in tasks] + [str(len(by_seed))])
            recs.append({"model": g[0], "pruning": g[1], "treatment": mech or "untreated", **stats, "seeds": len(by_seed)})
    if not rows:
        return Omitted(1, title, "no evaluated runs in the store")
    # the MDE between two rows of this table: each treatment vs its untreated model, per evaluated task
    mde = MdeCollector(composite=True, parts=data.composite_tasks())
    evaluated = tuple(t for t in tasks if t != "composite")
    for a in data.arms:
        if not a.sweep:
            observe(data.outcomes, a.side(), data.base_side((a.model, a.pruning)), evaluated, mde)
    notes = ["Composite = mean of " + ", ".join(task_label(t).replace(" (%)", "") for t in data.composite_tasks())
             + " (the runs' eval.composite)."] if "composite" in tasks else []
    return Table(1, "post_treatment_accuracy", title, cols, rows, recs, notes=notes, mde=_mde(data, mde, evaluated))


def table2(data: Data) -> Table | Omitted:
    title = "Treatment Effects (95 % CI; * p < 0.05)"
    multi = _group_cols(data)
    cols = (["Model", "Pruning"] if multi else []) + ["Treatment", "Recovery (pp)", "Relapse Drop (pp)",
                                                      "Net Retained (pp)", "Recovery vs Best (pp)", "Seeds"]
    mde = MdeCollector(composite=True, parts=data.composite_tasks())
    arms = [a for a in data.arms if not a.sweep]
    eff = {id(a): effects(a, data, mde) for a in arms}
    # the best treatment per (model, pruning): highest mean recovery; the others are compared with it item by item
    best: dict[tuple[str, str], Arm] = {}
    for a in arms:
        r = eff[id(a)].recovery.estimate
        g = (a.model, a.pruning)
        if r is not None and (g not in best or r > eff[id(best[g])].recovery.estimate):
            best[g] = a
    rows, recs = [], []
    for a in arms:
        e = eff[id(a)]
        if e.recovery.summary is None and e.relapse_drop.summary is None:
            continue
        g = (a.model, a.pruning)
        b = best.get(g)
        n_in_group = sum(1 for x in arms if (x.model, x.pruning) == g and eff[id(x)].recovery.estimate is not None)
        if b is None or n_in_group < 2 or e.recovery.estimate is None:
            vs: Any = "–"
        elif b is a:
            vs = "best"
        else:
            pb = _per_seed(b, data)
            diffs = [e.per[s]["recovery"] - pb[s]["recovery"] for s in e.per
                     if s in pb and "recovery" in e.per[s] and "recovery" in pb[s]]
            vs = data.cell(a.side(), b.side(), summarize(diffs))
        rows.append((_group_label(g) if multi else []) +
                    [pretty(a.mechanism), e.recovery, e.relapse_drop if a.relapse else "–",
                     e.net_retained if a.relapse else "–", vs, str(len(e.per))])
        recs.append({"model": a.model, "pruning": a.pruning, "treatment": a.mechanism,
                     "recovery": e.recovery.summary, "relapse_drop": e.relapse_drop.summary,
                     "net_retained": e.net_retained.summary, "seeds": len(e.per),
                     "recovery_ci": e.recovery.as_dict(),
                     "relapse_drop_ci": e.relapse_drop.as_dict() if a.relapse else None,
                     "net_retained_ci": e.net_retained.as_dict() if a.relapse else None,
                     "vs_best": vs.as_dict() if isinstance(vs, DiffCell) else vs})
    if not rows:
        return Omitted(2, title, "needs treated runs with a stored untreated baseline of the same model, pruning and seed")
    notes = ["Recovery = treated − untreated composite; Relapse Drop = treated − after relapse; Net Retained = "
             "recovery − relapse drop (= after relapse − untreated); vs Best = recovery − the best treatment's "
             "recovery on the same model and pruning."]
    if any(r["relapse_drop"] is None for r in recs):
        notes.append("Relapse Drop / Net Retained are '–' where the experiment had no relapse stress.")
    return Table(2, "treatment_effects", title, cols, rows, recs, notes, _mde(data, mde),
                 short={"Recovery vs Best (pp)": "vs best"})


def _formula(a: Arm) -> str:
    f = sorted(set(a.formulas.values()))
    return "/".join(f) if f else "study"


def table3(data: Data) -> Table | Omitted:
    title = "Isodose Efficiency Comparison"
    multi = _group_cols(data)
    cols = (["Model", "Pruning"] if multi else []) + ["Treatment", "Equalised", "Epochs", "Recovery (pp)",
                                                      "FLOPs 6·P·L·N·E", "Honest FLOPs T·(2F+6P)",
                                                      "Efficiency (Recovery/PetaFLOP)"]
    rows, recs = [], []
    mde = MdeCollector(composite=True, parts=data.composite_tasks())
    for a in data.arms:
        if a.sweep or not a.flops:
            continue
        e = effects(a, data, mde)
        if e.recovery.summary is None:
            continue
        flops = summarize(list(a.flops.values()))
        honest = summarize(list(a.honest.values()))
        epochs = summarize(list(a.epochs.values()))
        rows.append((_group_label((a.model, a.pruning)) if multi else []) +
                    [pretty(a.mechanism), _formula(a), f"{epochs['mean']:g}" if epochs else "–", e.recovery,
                     fmt_flops(flops["mean"] if flops else None), fmt_flops(honest["mean"] if honest else None),
                     e.efficiency])
        recs.append({"model": a.model, "pruning": a.pruning, "treatment": a.mechanism, "equalised": _formula(a),
                     "epochs": epochs, "recovery": e.recovery.summary, "flops": flops, "honest_flops": honest,
                     "efficiency": e.efficiency.summary, "recovery_ci": e.recovery.as_dict(),
                     "efficiency_ci": e.efficiency.as_dict()})
    if not rows:
        return Omitted(3, title, "needs treated runs with FLOPs and a stored untreated baseline")
    return Table(3, "isodose_efficiency", title, cols, rows, recs,
                 ["FLOPs = 6·P·L·N·E (the study's isodose formula: trainable parameters × sequence length × "
                  "samples × epochs); Honest FLOPs = T·(2F + 6P), which also counts the frozen base's forward and "
                  "backward passes. Equalised = the cost the isodose calibration held equal to the reference run "
                  "('study' = 6·P·L·N·E, 'honest' = T·(2F + 6P)). Efficiency = recovery / (FLOPs / 1e15); its CI "
                  "is the recovery CI at the same fixed dose."],
                 _mde(data, mde), short={"Efficiency (Recovery/PetaFLOP)": "efficiency"})


def _cycle_side(a: Arm, c: int | None) -> Side:
    """Seed -> (hash, phase of chronic cycle ``c``); ``None`` = each seed's last cycle."""
    out = {}
    for s, cyc in a.chronic.items():
        if not cyc or s not in a.hashes:
            continue
        if c is None:
            out[s] = (a.hashes[s], chronic_phase(cyc[-1].cycle))
        elif len(cyc) > c:
            out[s] = (a.hashes[s], chronic_phase(cyc[c].cycle))
    return out


def cycle_interval(data: Data, a: Arm, c: int) -> Any | None:
    """The arm's accuracy at chronic cycle ``c`` with its 95 % CI (seeds averaged per item), or None without
    per-item data."""
    from prunelab.errors import PrunelabError
    from prunelab.report.comparisons import correct_map

    task = a.chronic_task or "arc_easy_gen"
    maps = [correct_map(data.outcomes.get(h, ph, task)) for h, ph in _cycle_side(a, c).values()]
    if not maps or not all(maps):
        return None
    from prunelab import stats

    try:
        return stats.mean_ci(maps[0] if len(maps) == 1 else maps)
    except PrunelabError:
        return None


def table4(data: Data) -> Table | Omitted:
    title = "Longitudinal Accuracy Under Chronic Stress"
    arms = [a for a in data.arms if a.chronic and not a.sweep]
    if not arms:
        return Omitted(4, title, "no chronic-stress runs in the store (stress.chronic not set)")
    multi = len({(a.model, a.pruning) for a in arms}) > 1
    task = arms[0].chronic_task or "arc_easy_gen"
    label = task_label(task).replace(" (%)", "")
    heads = [(f"{a.model}/{a.pruning}/" if multi else "") + f"{pretty(a.mechanism)} (%)" for a in arms]
    n_cycles = max(len(c) for a in arms for c in a.chronic.values())
    rows, recs = [], []
    with_ci = False
    for c in range(n_cycles):
        row, rec = [str(c)], {"cycle": c}
        for a in arms:
            vals = [cyc[c].scores.get(a.chronic_task or task) for cyc in a.chronic.values() if len(cyc) > c]
            s = summarize([v for v in vals if v is not None])
            iv = cycle_interval(data, a, c)
            with_ci = with_ci or iv is not None
            row.append(iv.markdown() if iv is not None else fmt(s))
            rec[a.mechanism if not multi else f"{a.model}/{a.pruning}/{a.mechanism}"] = (
                {**s, "ci": iv.as_dict()} if s is not None and iv is not None else s)
        rows.append(row)
        recs.append(rec)
    decline_row: list[Any] = ["Decline (pp)"]
    decline_rec: dict[str, Any] = {"cycle": "decline"}
    mde = MdeCollector()
    for a in arms:
        t = a.chronic_task or task
        d = summarize([M.longitudinal_decline([cy.scores[t] for cy in cyc])
                       for cyc in a.chronic.values() if cyc])
        cell = data.cell(_cycle_side(a, 0), _cycle_side(a, None), d, (t,), mde)
        decline_row.append(cell)
        decline_rec[a.mechanism if not multi else f"{a.model}/{a.pruning}/{a.mechanism}"] = {
            **(d or {}), "ci": cell.as_dict()}
    rows.append(decline_row)
    recs.append(decline_rec)
    notes = ["Decline = acc(cycle 0) − acc(last cycle), paired by item; cycle 0 is the treated model before stress."]
    notes.append("Per-cycle accuracy: " + ("estimate [95 % CI] over items (Wilson for one seed; several seeds "
                                           "averaged per item and bootstrapped)." if with_ci else
                                           "mean ± SD over seeds (no per-item data, no CI)."))
    for a in arms:
        if not mde.seen.get(a.chronic_task or task):
            accs = [cyc[0].scores.get(a.chronic_task or task) for cyc in a.chronic.values() if cyc]
            accs = [v for v in accs if v is not None]
            if accs:
                mde.add_summary(a.chronic_task or task, data.n_items.get(a.chronic_task or task),
                                sum(accs) / len(accs))
    return Table(4, "longitudinal", f"Longitudinal {label} Accuracy Under Chronic Stress", ["Cycle", *heads], rows,
                 recs, notes, mde.lines(),
                 short={h: pretty(a.mechanism) for h, a in zip(heads, arms)})


def table5(data: Data) -> Table | Omitted:
    title = "Isodose Sweep Rankings (by Sweep Score)"
    arms = [a for a in data.arms if a.sweep]
    if not arms:
        return Omitted(5, title, "no rank-sweep runs in the store (rank_sweep not set)")
    multi = len({(a.model, a.pruning) for a in arms}) > 1
    scored, missing = [], []
    mde = MdeCollector(composite=True, parts=data.composite_tasks())
    for a in arms:
        e = effects(a, data, mde)
        rec, eff, rel = e.recovery.summary, e.efficiency.summary, e.relapse_drop.summary
        if rec is None or eff is None or rel is None:
            missing.append(a.mechanism)
            continue
        score = M.sweep_score(rec["mean"], eff["mean"], rel["mean"])
        epochs = summarize(list(a.epochs.values()))
        scored.append((score, a, e, epochs, len(e.per)))
    if not scored:
        return Omitted(5, title, "rank-sweep runs need a baseline and relapse stress to be scored")
    scored.sort(key=lambda t: -t[0])
    cols = (["Model", "Pruning"] if multi else []) + ["Rank", "LoRA r", "Epochs", "Recovery (pp)", "Efficiency",
                                                      "Relapse Drop (pp)", "Sweep Score", "Recovery vs Rank 1 (pp)",
                                                      "Seeds"]
    rows, recs = [], []
    top: dict[tuple[str, str], tuple[Arm, Effects]] = {}
    for i, (score, a, e, epochs, n) in enumerate(scored, 1):
        g = (a.model, a.pruning)
        if g not in top:
            top[g] = (a, e)
            vs: Any = "rank 1"
        else:
            b, eb = top[g]
            vs = data.cell(a.side(), b.side(), summarize([e.per[s]["recovery"] - eb.per[s]["recovery"] for s in e.per
                                                         if s in eb.per and "recovery" in e.per[s]
                                                         and "recovery" in eb.per[s]]))
        rows.append((_group_label(g) if multi else []) +
                    [str(i), str(a.r), f"{epochs['mean']:g}" if epochs else "–", e.recovery, e.efficiency,
                     e.relapse_drop, f"{score:.2f}", vs, str(n)])
        recs.append({"model": a.model, "pruning": a.pruning, "rank": i, "mechanism": a.mechanism, "r": a.r,
                     "epochs": epochs, "recovery": e.recovery.summary, "efficiency": e.efficiency.summary,
                     "relapse_drop": e.relapse_drop.summary, "sweep_score": score, "seeds": n,
                     "recovery_ci": e.recovery.as_dict(), "efficiency_ci": e.efficiency.as_dict(),
                     "relapse_drop_ci": e.relapse_drop.as_dict(),
                     "vs_rank1": vs.as_dict() if isinstance(vs, DiffCell) else vs})
    notes = ["Sweep score = 0.4·recovery + 0.1·efficiency − 0.4·relapse_drop + 4, from the means over seeds (a "
             "point score, no CI); 'Recovery vs Rank 1' = recovery − the top-ranked arm's recovery, item by item."]
    terms = [M.sweep_score_terms(e.recovery.summary["mean"], e.efficiency.summary["mean"],
                                 e.relapse_drop.summary["mean"]) for _, _, e, _, _ in scored]
    if all(abs(eff) > abs(rec) + abs(rel) for rec, eff, rel in terms):
        # efficiency is recovery per PetaFLOP: at a budget far below the study's it is large and ranks the arms by
        # 1 / FLOPs, whatever they recover; say so, and give the ranking by recovery beside it
        by_recovery = sorted(scored, key=lambda t: -t[2].recovery.summary["mean"])
        notes.append("Here the efficiency term outweighs recovery and relapse in every arm's score (the budget is "
                     "far below the study's, so recovery per PetaFLOP is large): the score ranks by 1 / FLOPs. "
                     "By recovery: " + " > ".join(f"r {t[1].r}" for t in by_recovery) + ".")
    if missing:
        notes.append(f"Not scored (no baseline or relapse data): {', '.join(missing)}.")
    return Table(5, "rank_sweep", title, cols, rows, recs, notes, _mde(data, mde),
                 short={"Recovery vs Rank 1 (pp)": "vs rank 1"})


def table6(data: Data) -> Table | Omitted:
    title = "Generalization Across Models"
    by_mech: dict[str, list[Arm]] = defaultdict(list)
    for a in data.arms:
        if not a.sweep:
            by_mech[a.mechanism].append(a)
    shared = {m: arms for m, arms in by_mech.items() if len({(a.model, a.pruning) for a in arms}) > 1}
    if not shared:
        return Omitted(6, title, "needs the same mechanism on more than one model / pruning")
    multi_mech = len(shared) > 1
    cols = (["Mechanism"] if multi_mech else []) + ["Model", "Pruning", "Baseline Composite (%)", "Recovery (pp)",
                                                    "Efficiency (Mean)", "Relapse Drop (pp)", "Delta vs. Primary (pp)"]
    rows, recs = [], []
    mde = MdeCollector(composite=True, parts=data.composite_tasks())
    groups = []
    for mech, arms in shared.items():
        arms = sorted(arms, key=lambda a: data.groups.index((a.model, a.pruning)))
        primary: tuple[Arm, Effects] | None = None
        for a in arms:
            g = (a.model, a.pruning)
            groups.append(g)
            e = effects(a, data, mde)
            base = summarize([s.get("composite") for s in data.baselines.get(g, {}).values()])
            if primary is None:
                primary = (a, e)
                delta: Any = "–"
            else:
                p, ep = primary
                dsum = (None if e.recovery.summary is None or ep.recovery.summary is None else
                        {"mean": e.recovery.summary["mean"] - ep.recovery.summary["mean"], "sd": None, "n": None})
                delta = did_cell(data.outcomes, a.side(), data.base_side(g), p.side(),
                                 data.base_side((p.model, p.pruning)), data.composite_tasks(), dsum)
            name = a.model + (f" ({data.descriptions[a.model]})" if data.descriptions.get(a.model) else "")
            rows.append(([pretty(mech)] if multi_mech else []) +
                        [("Primary: " if a is arms[0] else "") + name, a.pruning,
                         f"{base['mean']:.1f}" if base else "–", e.recovery,
                         f"{e.efficiency.summary['mean']:.2f}" if e.efficiency.summary else "–",
                         e.relapse_drop if a.relapse else "–", delta])
            recs.append({"mechanism": mech, "model": a.model, "pruning": a.pruning, "primary": a is arms[0],
                         "baseline_composite": base, "recovery": e.recovery.summary,
                         "efficiency": e.efficiency.summary, "relapse_drop": e.relapse_drop.summary,
                         "delta_vs_primary": None if not isinstance(delta, DiffCell) else delta.estimate,
                         "recovery_ci": e.recovery.as_dict(),
                         "relapse_drop_ci": e.relapse_drop.as_dict() if a.relapse else None,
                         "delta_vs_primary_ci": delta.as_dict() if isinstance(delta, DiffCell) else None})
    return Table(6, "transfer", title, cols, rows, recs,
                 ["Primary = the first model / pruning of the experiment; delta = recovery − primary recovery, "
                  "a difference in differences paired by item across the four arms (both models evaluated on the "
                  "same items)."],
                 _mde(data, mde, groups=groups), short={"Delta vs. Primary (pp)": "delta"})


TABLES = (table1, table2, table3, table4, table5, table6)


def build_tables(runs: Sequence[RunRecord], outcomes: Outcomes | None = None) -> tuple[list[Table], list[Omitted], Data]:
    """All six tables (or an :class:`Omitted` note each) from stored runs and their per-item outcomes
    (:meth:`Outcomes.from_store`; ``None`` = none: every difference then says "no per-item data, no CI")."""
    data = collect(runs, outcomes)
    tables, omitted = [], []
    for fn in TABLES:
        res = fn(data)
        (tables if isinstance(res, Table) else omitted).append(res)
    return tables, omitted, data


def render_markdown(tables: list[Table], omitted: list[Omitted], data: Data, header: str = "") -> str:
    parts = [header] if header else []
    for n in data.notes:
        parts.append(f"> {n}\n")
    items = sorted([(t.number, t.markdown()) for t in tables] +
                   [(o.number, f"**Table {o.number}: {o.title}** — omitted: {o.reason}.\n") for o in omitted])
    parts += [md for _, md in items]
    return "\n".join(parts)


def runs_appendix(runs: Sequence[RunRecord]) -> str:
    """A list of the runs behind the tables: what, dose, wall time, config hash."""
    lines = ["## Runs", "", "| Model | Pruning | Treatment | Seed | Epochs | FLOPs | Wall (s) | Hash |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in runs:
        ep = r.metrics.training.epochs if r.metrics.training is not None else None
        lines.append(f"| {r.model} | {r.pruning} | {r.mechanism or 'untreated'} | {r.seed} | "
                     f"{'' if ep is None else ep} | {fmt_flops(r.flops) if r.flops else ''} | "
                     f"{r.finished_at - r.started_at:.0f} | `{r.hash}` |")
    return "\n".join(lines) + "\n"
