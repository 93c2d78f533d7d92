"""The dichotomy study's figures: capabilities normalised to dense vs expansion ratio, and correlation heatmaps.

Each function writes one PNG (matplotlib, via :func:`prunelab.plotting.pyplot`) to the path it is given
(the caller owns atomicity: :func:`prunelab.studies.dichotomy.outputs.write_outputs` writes into a temporary
directory).
"""

from __future__ import annotations

from pathlib import Path

from prunelab.studies.dichotomy.analysis import square_matrix
from prunelab.studies.dichotomy.plan import kind_of
from prunelab.studies.dichotomy.run import DichotomyResult
from prunelab.plotting import pyplot


def plot_capabilities(result: DichotomyResult, path: Path) -> None:
    """Left: every task normalised to dense; right: the mean per kind; dense on the left of the x axis."""
    plt = pyplot()
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


def plot_heatmaps(result: DichotomyResult, path: Path) -> None:
    """Pearson r heatmaps of the task series and of the kind series, ``*`` marking p < 0.05."""
    import numpy as np

    plt = pyplot()
    panels = [("tasks (raw metrics)", list(result.normalised), result.task_correlations),
              ("kinds (normalised means)", list(result.kind_series), result.kind_correlations)]
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1.6, 1]})
    for ax, (title, names, pairs) in zip(axes, panels):
        r_matrix = square_matrix(names, pairs, "r")
        m = np.array([[np.nan if v is None else v for v in row] for row in r_matrix], dtype=float)
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        pv = square_matrix(names, pairs, "p")
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
