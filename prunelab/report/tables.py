"""The recovery study's Tables 1–6 from a results store, as Markdown + CSV + JSON (mean ± sample SD over seeds).

Every derived number comes from :mod:`prunelab.report.metrics` (DESIGN §8), per seed, then summarised:

- recovery      = composite_treated − composite_untreated (same model, pruning and seed)
- relapse_drop  = composite_treated − composite_after_relapse
- net_retained  = recovery − relapse_drop
- efficiency    = recovery / (FLOPs / 1e15), FLOPs = 6·P·L·N·E (the study's isodose formula)
- sweep score   = 0.4·recovery + 0.1·efficiency − 0.4·relapse_drop + 4, from the per-arm means (Table 5)

A table with no data is left out with a note saying why; nothing is ever filled in.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prunelab.experiments.store import RunRecord
from prunelab.report import metrics as M

TASK_LABELS = {"arc_easy_gen": "ARC-Easy (%)", "lambada_gen": "LAMBADA (%)", "composite": "Composite (%)",
               "arc_easy": "ARC-Easy LL (%)", "lambada": "LAMBADA LL (%)"}
PRETTY_MECH = {"ketamine": "Ketamine-like", "ssri": "SSRI-like", "neurosteroid": "Neurosteroid-like"}


@dataclass
class Table:
    """One rendered table: display ``rows`` (strings) and machine ``records`` (numbers, mean/sd/n dicts)."""

    number: int
    slug: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    records: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        head = f"**Table {self.number}: {self.title}**\n\n"
        lines = ["| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        notes = "".join(f"\n_{n}_\n" for n in self.notes)
        return head + "\n".join(lines) + "\n" + notes

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        w.writerows(self.rows)
        return buf.getvalue()


@dataclass
class Omitted:
    number: int
    title: str
    reason: str


# --------------------------------------------------------------------------------------------- helpers
def pretty(mech: str) -> str:
    return PRETTY_MECH.get(mech, mech)


def summarize(values: list[float]) -> dict[str, Any] | None:
    """``{"mean", "sd", "n"}`` (sd None for one value) via :func:`prunelab.report.metrics.mean_sd`."""
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


@dataclass
class Arm:
    """One (model, pruning, mechanism) arm: per-seed derived values."""

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
    chronic: dict[int, list[dict]] = field(default_factory=dict)
    chronic_task: str | None = None


@dataclass
class Data:
    """Runs regrouped for the tables."""

    baselines: dict[tuple[str, str], dict[int, dict[str, float]]]   # (model, pruning) -> seed -> scores
    arms: list[Arm]
    groups: list[tuple[str, str]]                                    # (model, pruning) in experiment order
    descriptions: dict[str, str]
    tasks: list[str]
    structures: dict[tuple[str, str], dict[str, Any]]               # pruned-model structure per group
    notes: list[str]


def collect(runs: list[RunRecord]) -> Data:
    baselines: dict[tuple[str, str], dict[int, dict[str, float]]] = defaultdict(dict)
    arms: dict[tuple[str, str, str, bool], Arm] = {}
    group_pos: dict[tuple[str, str], int] = {}
    descriptions: dict[str, str] = {}
    tasks: list[str] = []
    structures: dict[tuple[str, str], dict[str, Any]] = {}
    notes: set[str] = set()
    for rec in runs:
        g = (rec.model, rec.pruning)
        group_pos[g] = min(group_pos.get(g, rec.position), rec.position)
        if rec.meta and rec.meta.get("description"):
            descriptions[rec.model] = rec.meta["description"]
        if rec.meta and rec.meta.get("note"):
            notes.add(rec.meta["note"])
        scores = rec.metrics.get("eval", {}).get("scores", {})
        for t in scores:
            if t not in tasks:
                tasks.append(t)
        if rec.kind == "baseline":
            baselines[g][rec.seed] = scores
            structures.setdefault(g, rec.metrics.get("model", {}))
            continue
        mech = rec.config["mechanism"]
        # a rank-sweep arm and a treatment may share a name (ketamine-r32 in rank-sweep.yaml and transfer.yaml)
        key = (rec.model, rec.pruning, rec.mechanism, bool(mech.get("sweep")))
        arm = arms.get(key)
        if arm is None:
            arm = arms[key] = Arm(rec.model, rec.pruning, rec.mechanism, mech.get("r"), bool(mech.get("sweep")),
                                  rec.position)
        arm.position = min(arm.position, rec.position)
        arm.scores[rec.seed] = scores
        if "relapse" in rec.metrics:
            arm.relapse[rec.seed] = rec.metrics["relapse"]["eval"]["scores"]
        tr = rec.metrics.get("training", {})
        if rec.flops is not None:
            arm.flops[rec.seed] = rec.flops
        if "epochs" in tr:
            arm.epochs[rec.seed] = tr["epochs"]
        if tr.get("honest_flops") is not None:
            arm.honest[rec.seed] = tr["honest_flops"]
        if "chronic" in rec.metrics:
            arm.chronic[rec.seed] = rec.metrics["chronic"]["cycles"]
            arm.chronic_task = (rec.config.get("stress", {}).get("chronic") or {}).get("tasks", [None])[0]
    if "composite" in tasks:  # composite last, as in the study
        tasks = [t for t in tasks if t != "composite"] + ["composite"]
    groups = sorted(group_pos, key=lambda g: group_pos[g])
    arm_list = sorted(arms.values(), key=lambda a: a.position)
    return Data(dict(baselines), arm_list, groups, descriptions, tasks, structures, sorted(notes))


def _per_seed(arm: Arm, data: Data) -> dict[int, dict[str, float]]:
    """Per-seed recovery / relapse_drop / net_retained / efficiency (DESIGN §8), paired on the seed."""
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


# ---------------------------------------------------------------------------------------------- tables
def table1(data: Data) -> Table | Omitted:
    title = "Post-Treatment Accuracy (Mean ± SD Across Seeds)"
    tasks = data.tasks
    if not tasks or not (data.baselines or data.arms):
        return Omitted(1, title, "no evaluated runs in the store")
    multi = _group_cols(data)
    cols = (["Model", "Pruning"] if multi else []) + ["Treatment"] + [TASK_LABELS.get(t, f"{t} (%)") for t in tasks] + ["Seeds"]
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
    return Table(1, "post_treatment_accuracy", title, cols, rows, recs)


def table2(data: Data) -> Table | Omitted:
    title = "Treatment Effects (Mean ± SD Across Seeds)"
    multi = _group_cols(data)
    cols = (["Model", "Pruning"] if multi else []) + ["Treatment", "Recovery (%)", "Relapse Drop (%)", "Net Retained (%)", "Seeds"]
    rows, recs = [], []
    for a in data.arms:
        if a.sweep:
            continue
        per = _per_seed(a, data)
        rec, rel, net = _stat(per, "recovery"), _stat(per, "relapse_drop"), _stat(per, "net_retained")
        if rec is None and rel is None:
            continue
        rows.append((_group_label((a.model, a.pruning)) if multi else []) +
                    [pretty(a.mechanism), fmt(rec, signed=True), fmt(rel), fmt(net, signed=True), str(len(per))])
        recs.append({"model": a.model, "pruning": a.pruning, "treatment": a.mechanism, "recovery": rec,
                     "relapse_drop": rel, "net_retained": net, "seeds": len(per)})
    if not rows:
        return Omitted(2, title, "needs treated runs with a stored untreated baseline of the same model, pruning and seed")
    notes = []
    if any(r["relapse_drop"] is None for r in recs):
        notes.append("Relapse Drop / Net Retained are '–' where the experiment had no relapse stress.")
    return Table(2, "treatment_effects", title, cols, rows, recs, notes)


def table3(data: Data) -> Table | Omitted:
    title = "Isodose Efficiency Comparison"
    multi = _group_cols(data)
    cols = (["Model", "Pruning"] if multi else []) + ["Treatment", "Epochs", "Recovery (%)", "FLOPs", "Honest FLOPs",
                                                      "Efficiency (Recovery/PetaFLOP)"]
    rows, recs = [], []
    for a in data.arms:
        if a.sweep or not a.flops:
            continue
        per = _per_seed(a, data)
        rec, eff = _stat(per, "recovery"), _stat(per, "efficiency")
        if rec is None:
            continue
        flops = summarize(list(a.flops.values()))
        honest = summarize(list(a.honest.values()))
        epochs = summarize(list(a.epochs.values()))
        rows.append((_group_label((a.model, a.pruning)) if multi else []) +
                    [pretty(a.mechanism), f"{epochs['mean']:g}" if epochs else "–",
                     f"{rec['mean']:+.1f}", fmt_flops(flops["mean"] if flops else None),
                     fmt_flops(honest["mean"] if honest else None), fmt(eff, digits=2)])
        recs.append({"model": a.model, "pruning": a.pruning, "treatment": a.mechanism, "epochs": epochs,
                     "recovery": rec, "flops": flops, "honest_flops": honest, "efficiency": eff})
    if not rows:
        return Omitted(3, title, "needs treated runs with FLOPs and a stored untreated baseline")
    return Table(3, "isodose_efficiency", title, cols, rows, recs,
                 ["FLOPs = 6·P·L·N·E (the study's isodose formula); Honest FLOPs include the frozen base, T·(2F + 6P)."])


def table4(data: Data) -> Table | Omitted:
    title = "Longitudinal Accuracy Under Chronic Stress (Mean ± SD Across Seeds)"
    arms = [a for a in data.arms if a.chronic and not a.sweep]
    if not arms:
        return Omitted(4, title, "no chronic-stress runs in the store (stress.chronic not set)")
    multi = len({(a.model, a.pruning) for a in arms}) > 1
    task = arms[0].chronic_task or "arc_easy_gen"
    label = TASK_LABELS.get(task, task).replace(" (%)", "")
    heads = [(f"{a.model}/{a.pruning}/" if multi else "") + f"{pretty(a.mechanism)} (%)" for a in arms]
    n_cycles = max(len(c) for a in arms for c in a.chronic.values())
    rows, recs = [], []
    for c in range(n_cycles):
        row, rec = [str(c)], {"cycle": c}
        for a, h in zip(arms, heads):
            vals = [cyc[c]["scores"].get(a.chronic_task or task) for cyc in a.chronic.values() if len(cyc) > c]
            s = summarize([v for v in vals if v is not None])
            row.append(fmt(s))
            rec[a.mechanism if not multi else f"{a.model}/{a.pruning}/{a.mechanism}"] = s
        rows.append(row)
        recs.append(rec)
    decline_row = ["Decline"]
    decline_rec: dict[str, Any] = {"cycle": "decline"}
    for a in arms:
        d = summarize([M.longitudinal_decline([cy["scores"][a.chronic_task or task] for cy in cyc])
                       for cyc in a.chronic.values() if cyc])
        decline_row.append(fmt(d))
        decline_rec[a.mechanism if not multi else f"{a.model}/{a.pruning}/{a.mechanism}"] = d
    rows.append(decline_row)
    recs.append(decline_rec)
    return Table(4, "longitudinal", f"Longitudinal {label} Accuracy (Mean ± SD Across Seeds)", ["Cycle", *heads], rows, recs,
                 ["Decline = acc(cycle 0) − acc(last cycle); cycle 0 is the treated model before stress."])


def table5(data: Data) -> Table | Omitted:
    title = "Isodose Sweep Rankings (by Sweep Score)"
    arms = [a for a in data.arms if a.sweep]
    if not arms:
        return Omitted(5, title, "no rank-sweep runs in the store (rank_sweep not set)")
    multi = len({(a.model, a.pruning) for a in arms}) > 1
    scored, missing = [], []
    for a in arms:
        per = _per_seed(a, data)
        rec, eff, rel = _stat(per, "recovery"), _stat(per, "efficiency"), _stat(per, "relapse_drop")
        if rec is None or eff is None or rel is None:
            missing.append(a.mechanism)
            continue
        score = M.sweep_score(rec["mean"], eff["mean"], rel["mean"])
        epochs = summarize(list(a.epochs.values()))
        scored.append((score, a, rec, eff, rel, epochs, len(per)))
    if not scored:
        return Omitted(5, title, "rank-sweep runs need a baseline and relapse stress to be scored")
    scored.sort(key=lambda t: -t[0])
    cols = (["Model", "Pruning"] if multi else []) + ["Rank", "LoRA r", "Epochs", "Recovery (%)", "Efficiency",
                                                      "Relapse Drop (%)", "Sweep Score", "Seeds"]
    rows, recs = [], []
    for i, (score, a, rec, eff, rel, epochs, n) in enumerate(scored, 1):
        rows.append((_group_label((a.model, a.pruning)) if multi else []) +
                    [str(i), str(a.r), f"{epochs['mean']:g}" if epochs else "–", fmt(rec, signed=True),
                     fmt(eff, digits=2), fmt(rel), f"{score:.2f}", str(n)])
        recs.append({"model": a.model, "pruning": a.pruning, "rank": i, "mechanism": a.mechanism, "r": a.r,
                     "epochs": epochs, "recovery": rec, "efficiency": eff, "relapse_drop": rel, "sweep_score": score,
                     "seeds": n})
    notes = ["Sweep score = 0.4·recovery + 0.1·efficiency − 0.4·relapse_drop + 4, from the means over seeds."]
    if missing:
        notes.append(f"Not scored (no baseline or relapse data): {', '.join(missing)}.")
    return Table(5, "rank_sweep", title, cols, rows, recs, notes)


def table6(data: Data) -> Table | Omitted:
    title = "Generalization Across Models (Mean ± SD Across Seeds Where Applicable)"
    by_mech: dict[str, list[Arm]] = defaultdict(list)
    for a in data.arms:
        if not a.sweep:
            by_mech[a.mechanism].append(a)
    shared = {m: arms for m, arms in by_mech.items() if len({(a.model, a.pruning) for a in arms}) > 1}
    if not shared:
        return Omitted(6, title, "needs the same mechanism on more than one model / pruning")
    multi_mech = len(shared) > 1
    cols = (["Mechanism"] if multi_mech else []) + ["Model", "Pruning", "Baseline Composite (%)", "Recovery (%)",
                                                    "Efficiency (Mean)", "Relapse Drop (Mean %)", "Delta vs. Primary (%)"]
    rows, recs = [], []
    for mech, arms in shared.items():
        arms = sorted(arms, key=lambda a: data.groups.index((a.model, a.pruning)))
        primary = None
        for a in arms:
            per = _per_seed(a, data)
            rec, eff, rel = _stat(per, "recovery"), _stat(per, "efficiency"), _stat(per, "relapse_drop")
            base = summarize([s.get("composite") for s in data.baselines.get((a.model, a.pruning), {}).values()])
            if primary is None:
                primary = rec
                delta, label = None, "–"
            else:
                delta = rec["mean"] - primary["mean"] if rec and primary else None
                label = f"{delta:+.1f}" if delta is not None else "–"
            name = a.model + (f" ({data.descriptions[a.model]})" if data.descriptions.get(a.model) else "")
            rows.append(([pretty(mech)] if multi_mech else []) +
                        [("Primary: " if a is arms[0] else "") + name, a.pruning,
                         f"{base['mean']:.1f}" if base else "–", fmt(rec, signed=True),
                         f"{eff['mean']:.2f}" if eff else "–", f"{rel['mean']:.1f}" if rel else "–", label])
            recs.append({"mechanism": mech, "model": a.model, "pruning": a.pruning, "primary": a is arms[0],
                         "baseline_composite": base, "recovery": rec, "efficiency": eff, "relapse_drop": rel,
                         "delta_vs_primary": delta})
    return Table(6, "transfer", title, cols, rows, recs,
                 ["Primary = the first model / pruning of the experiment; delta = recovery − primary recovery."])


TABLES = (table1, table2, table3, table4, table5, table6)


def build_tables(runs: list[RunRecord]) -> tuple[list[Table], list[Omitted], Data]:
    """All six tables (or an :class:`Omitted` note each) from stored runs."""
    data = collect(runs)
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


def runs_appendix(runs: list[RunRecord]) -> str:
    """A list of the runs behind the tables: what, dose, wall time, config hash."""
    lines = ["## Runs", "", "| Model | Pruning | Treatment | Seed | Epochs | FLOPs | Wall (s) | Hash |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in runs:
        ep = r.metrics.get("training", {}).get("epochs")
        lines.append(f"| {r.model} | {r.pruning} | {r.mechanism or 'untreated'} | {r.seed} | "
                     f"{'' if ep is None else ep} | {fmt_flops(r.flops) if r.flops else ''} | "
                     f"{r.finished_at - r.started_at:.0f} | `{r.hash}` |")
    return "\n".join(lines) + "\n"


def write_report(db, out_dir, experiment: str | None = None, figures: bool = True):
    """See :func:`prunelab.report.build_report`."""
    import json
    from pathlib import Path

    from prunelab.atomic import atomic_dir, to_jsonable
    from prunelab.errors import PrunelabError
    from prunelab.experiments.store import Store
    from prunelab.report import ReportResult

    with Store(db, readonly=True) as store:
        runs = store.runs(experiment)
    if not runs:
        raise PrunelabError(f"{db} holds no finished runs{f' of {experiment}' if experiment else ''}; run an experiment first")
    tables, omitted, data = build_tables(runs)
    out_dir = Path(out_dir)
    title = f"# prunelab report{f': {experiment}' if experiment else ''}\n\n" \
            f"{len(runs)} finished runs from `{Path(db).name}`. Accuracies in percent; ± is the sample SD over seeds " \
            f"(a single seed shows the mean only).\n"
    files, figs = [], []
    with atomic_dir(out_dir) as tmp:
        (tmp / "tables.md").write_text(render_markdown(tables, omitted, data, title) + "\n" + runs_appendix(runs),
                                       encoding="utf-8")
        files.append("tables.md")
        for t in tables:
            name = f"table{t.number}_{t.slug}.csv"
            (tmp / name).write_text(t.csv(), encoding="utf-8")
            files.append(name)
        payload = {"tables": [{"number": t.number, "title": t.title, "columns": t.columns, "rows": t.rows,
                               "records": t.records, "notes": t.notes} for t in tables],
                   "omitted": [{"number": o.number, "title": o.title, "reason": o.reason} for o in omitted],
                   "notes": data.notes, "runs": len(runs)}
        (tmp / "tables.json").write_text(json.dumps(to_jsonable(payload), indent=2) + "\n", encoding="utf-8")
        files.append("tables.json")
        if figures:
            from prunelab.report.figures import write_figures

            figs = [f"figures/{p.name}" for p in write_figures(data, tables, tmp / "figures")]
            files += figs
    return ReportResult(out_dir=str(out_dir), runs=len(runs), tables=[f"Table {t.number}: {t.title}" for t in tables],
                        omitted=[f"Table {o.number}: {o.reason}" for o in omitted], figures=figs, files=files)
