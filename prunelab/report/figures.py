"""Report figures (matplotlib, Agg backend, PNG): recovery bars with SD error bars, longitudinal curves,
the rank sweep, and the pruned structure (per-layer MLP width profile; depth keep/remove mask).

Each function takes the regrouped data of :mod:`prunelab.report.tables` and a target path, draws only
what the data hold, and returns the path written (or ``None`` when there is nothing to draw).
"""

from __future__ import annotations

from pathlib import Path

from prunelab.report.tables import Data, Table, pretty


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless; never opens a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def _sd(s) -> float:
    return 0.0 if s is None or s.get("sd") is None else s["sd"]


def recovery_bars(table2: Table | None, path: Path) -> Path | None:
    """Bars of mean recovery (pp) per treatment, SD over seeds as error bars (Table 2)."""
    if table2 is None:
        return None
    recs = [r for r in table2.records if r["recovery"] is not None]
    if not recs:
        return None
    plt = _plt()
    multi = len({(r["model"], r["pruning"]) for r in recs}) > 1
    labels = [(f"{r['model']}\n{r['pruning']}\n" if multi else "") + pretty(r["treatment"]) for r in recs]
    means = [r["recovery"]["mean"] for r in recs]
    errs = [_sd(r["recovery"]) for r in recs]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(recs)), 3.6))
    ax.bar(range(len(recs)), means, yerr=errs, capsize=5,
           color=["tab:green" if m >= 0 else "tab:red" for m in means], alpha=0.8)
    if any(r["relapse_drop"] is not None for r in recs):
        net = [r["net_retained"]["mean"] if r["net_retained"] else float("nan") for r in recs]
        ax.scatter(range(len(recs)), net, marker="D", color="black", zorder=3, label="net retained")
        ax.legend(loc="best", fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(recs)), labels, fontsize=8)
    ax.set_ylabel("recovery (composite pp)")
    ax.set_title("Recovery vs untreated (mean ± SD)", fontsize=10)
    return _save(fig, path)


def longitudinal(data: Data, path: Path) -> Path | None:
    """Per-cycle accuracy under chronic stress, mean line with a ±SD band per mechanism (Table 4)."""
    import statistics

    arms = [a for a in data.arms if a.chronic and not a.sweep]
    if not arms:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for a in arms:
        task = a.chronic_task or "arc_easy_gen"
        n = max(len(c) for c in a.chronic.values())
        xs, mu, sd = [], [], []
        for c in range(n):
            vals = [cyc[c]["scores"][task] for cyc in a.chronic.values() if len(cyc) > c and task in cyc[c]["scores"]]
            if vals:
                xs.append(c)
                mu.append(statistics.fmean(vals))
                sd.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        label = pretty(a.mechanism) + (f" ({a.model}/{a.pruning})" if len(data.groups) > 1 else "")
        line = ax.plot(xs, mu, marker="o", label=label)[0]
        ax.fill_between(xs, [m - s for m, s in zip(mu, sd)], [m + s for m, s in zip(mu, sd)],
                        color=line.get_color(), alpha=0.15)
    ax.set_xlabel("chronic stress cycle")
    ax.set_ylabel(f"{arms[0].chronic_task or 'arc_easy_gen'} accuracy (%)")
    ax.set_title("Durability under progressive pruning")
    ax.legend(fontsize=8)
    return _save(fig, path)


def rank_sweep(table5: Table | None, path: Path) -> Path | None:
    """Recovery, relapse drop and sweep score against LoRA rank (Table 5)."""
    if table5 is None:
        return None
    recs = sorted(table5.records, key=lambda r: r["r"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    rs = [r["r"] for r in recs]
    ax.errorbar(rs, [r["recovery"]["mean"] for r in recs], yerr=[_sd(r["recovery"]) for r in recs], marker="o",
                capsize=4, label="recovery (pp)")
    ax.errorbar(rs, [r["relapse_drop"]["mean"] for r in recs], yerr=[_sd(r["relapse_drop"]) for r in recs],
                marker="s", capsize=4, label="relapse drop (pp)")
    ax.plot(rs, [r["sweep_score"] for r in recs], marker="^", color="black", label="sweep score")
    ax.set_xscale("log", base=2)
    ax.set_xticks(rs, [str(r) for r in rs])
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("LoRA rank r (α = 2r, isodose epochs)")
    ax.set_title("Rank sweep")
    ax.legend(fontsize=8)
    return _save(fig, path)


def width_profile(data: Data, path: Path) -> Path | None:
    """Per-layer MLP width after pruning vs. before, one line per pruned model (where widths changed)."""
    items = [(g, s) for g, s in data.structures.items()
             if s.get("layer_widths") and s.get("original", {}).get("layer_widths")
             and s["layer_widths"] != s["original"]["layer_widths"] and not s.get("removed_layers")]
    if not items:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (model, pruning), s in items:
        orig = s["original"]["layer_widths"]
        ax.plot(range(len(orig)), orig, ls="--", color="grey", lw=0.8)
        ax.plot(range(len(s["layer_widths"])), s["layer_widths"], marker=".", label=f"{model} · {pruning}")
    ax.set_xlabel("layer")
    ax.set_ylabel("MLP intermediate width")
    top = max(max(s["original"]["layer_widths"]) for _, s in items)
    ax.set_ylim(0, top * 1.08)  # keep the "before" line off the frame
    ax.set_title("Width profile (dashed: before pruning)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def depth_mask(data: Data, path: Path) -> Path | None:
    """Kept (filled) vs removed (empty) blocks for each depth-pruned model."""
    items = [(g, s) for g, s in data.structures.items() if s.get("removed_layers")]
    if not items:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(items)))
    for row, ((model, pruning), s) in enumerate(items):
        n = s.get("original", {}).get("num_layers") or (s.get("num_layers", 0) + len(s["removed_layers"]))
        removed = set(s["removed_layers"])
        colors = ["white" if i in removed else "tab:blue" for i in range(n)]
        ax.scatter(range(n), [row] * n, c=colors, edgecolors="tab:blue", s=60, marker="s")
    ax.set_yticks(range(len(items)), [f"{m} · {p}" for (m, p), _ in items], fontsize=8)
    ax.set_xlabel("block index (empty = removed)")
    ax.set_ylim(-0.7, len(items) - 0.3)
    ax.set_title("Depth-pruning mask")
    return _save(fig, path)


def write_figures(data: Data, tables: list[Table], out_dir: Path) -> list[Path]:
    """Every figure the data support, as PNGs in ``out_dir``."""
    by_num = {t.number: t for t in tables}
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [
        recovery_bars(by_num.get(2), out_dir / "recovery_bars.png"),
        longitudinal(data, out_dir / "longitudinal.png"),
        rank_sweep(by_num.get(5), out_dir / "rank_sweep.png"),
        width_profile(data, out_dir / "width_profile.png"),
        depth_mask(data, out_dir / "depth_mask.png"),
    ]
    return [p for p in made if p is not None]
