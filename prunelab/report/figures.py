"""Report figures (matplotlib, Agg backend, PNG): recovery bars and longitudinal curves with 95 % CIs, the rank
sweep, and the pruned structure (per-layer MLP width profile; depth keep/remove mask).

Uncertainty is the tables' own: the paired-bootstrap 95 % CI of each difference and the per-cycle accuracy
interval from the stored per-item outcomes (:mod:`prunelab.report.comparisons`), never the SD of two or three
seeds (which says nothing about the items and can run below 0 %). Without per-item data a figure draws the
estimates only and says "no per-item data, no CI".

Each function takes the regrouped data of :mod:`prunelab.report.tables` and a target path, draws only
what the data hold, and returns the path written (or ``None`` when there is nothing to draw). The figures read
the tables, never the other way round: :mod:`prunelab.report.build` writes both.
"""

from __future__ import annotations

from pathlib import Path

from prunelab.plotting import pyplot
from prunelab.report.tables import Data, Table, cycle_interval, pretty


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def _ci_err(recs: list[dict], key: str) -> tuple[list[list[float]], bool]:
    """Asymmetric error bars ``[[below...], [above...]]`` from the records' ``<key>_ci`` (0 where none), and
    whether any CI was drawn."""
    lo, hi, any_ci = [], [], False
    for r in recs:
        ci = r.get(f"{key}_ci") or {}
        est = ci.get("estimate")
        if ci.get("low") is not None and ci.get("high") is not None and est is not None:
            lo.append(max(est - ci["low"], 0.0))
            hi.append(max(ci["high"] - est, 0.0))
            any_ci = True
        else:
            lo.append(0.0)
            hi.append(0.0)
    return [lo, hi], any_ci


def _est(r: dict, key: str) -> float:
    ci = r.get(f"{key}_ci") or {}
    if ci.get("estimate") is not None:
        return float(ci["estimate"])
    return r[key]["mean"] if r.get(key) else float("nan")


def recovery_bars(table2: Table | None, path: Path) -> Path | None:
    """Bars of recovery (pp) per treatment with its paired 95 % CI (Table 2); net retained as diamonds."""
    fig = draw_recovery_bars(table2)
    return None if fig is None else _save(fig, path)


def draw_recovery_bars(table2: Table | None):
    """The figure of :func:`recovery_bars` (``None`` when there is nothing to draw)."""
    if table2 is None:
        return None
    recs = [r for r in table2.records if r["recovery"] is not None]
    if not recs:
        return None
    plt = pyplot()
    multi = len({(r["model"], r["pruning"]) for r in recs}) > 1
    labels = [(f"{r['model']}\n{r['pruning']}\n" if multi else "") + pretty(r["treatment"]) for r in recs]
    means = [_est(r, "recovery") for r in recs]
    errs, with_ci = _ci_err(recs, "recovery")
    xs = list(range(len(recs)))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(recs)), 3.6))
    ax.bar(xs, means, yerr=errs if with_ci else None, capsize=5,
           color=["tab:green" if m >= 0 else "tab:red" for m in means], alpha=0.8, label="recovery")
    if any(r["relapse_drop"] is not None for r in recs):
        net = [_est(r, "net_retained") if r.get("net_retained") else float("nan") for r in recs]
        nerr, net_ci = _ci_err(recs, "net_retained")
        # offset right of the bar's own error bar so the two intervals never overlap
        ax.errorbar([x + 0.22 for x in xs], net, yerr=nerr if net_ci else None, fmt="D", color="black",
                    capsize=3, zorder=3, label="net retained")
        ax.legend(loc="best", fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("recovery (composite pp)")
    ax.set_title("Recovery vs untreated (" + ("95 % paired CI" if with_ci else "no per-item data, no CI") + ")",
                 fontsize=10)
    return fig


MARKERS = "osD^v<>pP*X"
LINESTYLES = ("-", "--", "-.", ":")


def longitudinal(data: Data, path: Path) -> Path | None:
    """Per-cycle accuracy under chronic stress with a 95 % CI per mechanism (Table 4)."""
    fig = draw_longitudinal(data)
    return None if fig is None else _save(fig, path)


def draw_longitudinal(data: Data):
    """The figure of :func:`longitudinal` (``None`` without chronic runs).

    Cycles are whole numbers (integer ticks); every series gets its own marker and line style and a small
    horizontal offset, so equal values (ketamine's and neurosteroid's line) stay visible side by side.
    """
    import statistics

    from matplotlib.ticker import MaxNLocator

    arms = [a for a in data.arms if a.chronic and not a.sweep]
    if not arms:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    width = 0.08 * (len(arms) - 1)
    any_ci = False
    n_max = 0
    for j, a in enumerate(arms):
        task = a.chronic_task or "arc_easy_gen"
        n = max(len(c) for c in a.chronic.values())
        n_max = max(n_max, n)
        off = -width / 2 + 0.08 * j
        xs, mu, lo, hi = [], [], [], []
        for c in range(n):
            iv = cycle_interval(data, a, c)
            vals = [cyc[c].scores[task] for cyc in a.chronic.values() if len(cyc) > c and task in cyc[c].scores]
            if iv is not None:
                xs.append(c + off)
                mu.append(iv.estimate)
                lo.append(iv.estimate - iv.low)
                hi.append(iv.high - iv.estimate)
                any_ci = True
            elif vals:
                xs.append(c + off)
                mu.append(statistics.fmean(vals))
                lo.append(0.0)
                hi.append(0.0)
        label = pretty(a.mechanism) + (f" ({a.model}/{a.pruning})" if len(data.groups) > 1 else "")
        ax.errorbar(xs, mu, yerr=[lo, hi] if any(lo) or any(hi) else None, marker=MARKERS[j % len(MARKERS)],
                    linestyle=LINESTYLES[j % len(LINESTYLES)], capsize=3, label=label, alpha=0.9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xticks(range(n_max))
    ax.set_xlabel("chronic stress cycle")
    ax.set_ylabel(f"{arms[0].chronic_task or 'arc_easy_gen'} accuracy (%)")
    ax.set_title("Durability under progressive pruning (" + ("95 % CI" if any_ci else "no per-item data, no CI")
                 + ")", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def rank_sweep(table5: Table | None, path: Path) -> Path | None:
    """Recovery, relapse drop (95 % CIs) and sweep score against LoRA rank (Table 5)."""
    if table5 is None:
        return None
    recs = sorted(table5.records, key=lambda r: r["r"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    rs = [r["r"] for r in recs]
    rerr, rci = _ci_err(recs, "recovery")
    derr, dci = _ci_err(recs, "relapse_drop")
    ax.errorbar(rs, [_est(r, "recovery") for r in recs], yerr=rerr if rci else None, marker="o",
                capsize=4, label="recovery (pp)")
    ax.errorbar([x * 1.04 for x in rs], [_est(r, "relapse_drop") for r in recs], yerr=derr if dci else None,
                marker="s", linestyle="--", capsize=4, label="relapse drop (pp)")
    # the score is a point value on its own scale (its efficiency term grows as FLOPs shrink): a second axis, so it
    # does not flatten the pp series and their CIs
    score_ax = ax.twinx()
    score_ax.plot(rs, [r["sweep_score"] for r in recs], marker="^", linestyle=":", color="black",
                  label="sweep score (right axis)")
    score_ax.set_ylabel("sweep score")
    ax.set_xscale("log", base=2)
    ax.set_xticks(rs, [str(r) for r in rs])
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("LoRA rank r (α = 2r, isodose epochs)")
    ax.set_ylabel("percentage points")
    ax.set_title("Rank sweep (" + ("95 % CI" if rci or dci else "no per-item data, no CI") + ")", fontsize=10)
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = score_ax.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, fontsize=8)
    return _save(fig, path)


def width_profile(data: Data, path: Path) -> Path | None:
    """Per-layer MLP width after pruning vs. before, one line per pruned model (where widths changed)."""
    items = [(g, s) for g, s in data.structures.items()
             if s.layer_widths and s.original is not None and s.original.layer_widths
             and s.layer_widths != s.original.layer_widths and not s.removed_layers]
    if not items:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (model, pruning), s in items:
        orig = s.original.layer_widths
        ax.plot(range(len(orig)), orig, ls="--", color="grey", lw=0.8)
        ax.plot(range(len(s.layer_widths)), s.layer_widths, marker=".", label=f"{model} · {pruning}")
    ax.set_xlabel("layer")
    ax.set_ylabel("MLP intermediate width")
    top = max(max(s.original.layer_widths) for _, s in items)
    ax.set_ylim(0, top * 1.08)  # keep the "before" line off the frame
    ax.set_title("Width profile (dashed: before pruning)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def depth_mask(data: Data, path: Path) -> Path | None:
    """Kept (filled) vs removed (empty) blocks for each depth-pruned model."""
    items = [(g, s) for g, s in data.structures.items() if s.removed_layers]
    if not items:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(items)))
    for row, ((model, pruning), s) in enumerate(items):
        n = (s.original.num_layers if s.original is not None else None) or ((s.num_layers or 0) + len(s.removed_layers))
        removed = set(s.removed_layers)
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
