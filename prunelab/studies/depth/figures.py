"""Depth-study figures: removed-block mask grids (search × layer) and perplexity-rank vs accuracy-rank.

Each function writes one PNG (matplotlib, via :func:`prunelab.plotting.pyplot`) to the path it is given
(the caller owns atomicity: :func:`prunelab.studies.depth.outputs.write_study` writes into a temporary directory).
"""

from __future__ import annotations

import math
from pathlib import Path

from prunelab.studies.depth.run import DepthStudy, spearman_ranks
from prunelab.plotting import pyplot


def mask_grid_figure(study: DepthStudy, objective: str, path: str | Path) -> Path:
    """One panel per budget k: rows = searches, columns = layers, filled cell = removed block."""
    import numpy as np

    plt = pyplot()
    ks = study.removes
    n_layers = next((r.result.n_blocks for r in study.rows if r.result), 1)
    height = 0.45 * len(study.searches) * len(ks) + 1.2 * len(ks)
    fig, axes = plt.subplots(len(ks), 1, figsize=(max(6.0, 0.28 * n_layers + 2.5), height), squeeze=False)
    for ax, k in zip(axes[:, 0], ks):
        rows = [r for r in study.rows if r.k == k and r.objective == objective and r.result]
        grid = np.zeros((len(rows), n_layers))
        for i, r in enumerate(rows):
            grid[i, r.result.removed] = 1
        ax.imshow(grid, cmap="Blues", vmin=0, vmax=1.3, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(rows)), [r.search for r in rows])
        ax.set_xticks(range(n_layers), [str(i) for i in range(n_layers)], fontsize=7)
        ax.set_xticks(np.arange(-0.5, n_layers, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, len(rows), 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=1)
        ax.tick_params(which="minor", length=0)
        ax.set_title(f"{study.model}: blocks removed under {objective}, k = {k}", fontsize=10)
        ax.set_xlabel("layer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def rank_scatter_figure(study: DepthStudy, path: str | Path) -> Path:
    """Perplexity rank (1 = lowest) vs accuracy rank (1 = highest) of perplexity-pruned models, Spearman ρ."""
    from scipy.stats import rankdata

    plt = pyplot()
    ks = study.removes
    fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 4.0), squeeze=False)
    for ax, k in zip(axes[0], ks):
        rows = [r for r in study.rows if r.k == k and r.objective == "perplexity"]
        ppl = [r.avg_perplexity for r in rows]
        acc = [r.avg_accuracy for r in rows]
        if rows and not any(math.isnan(v) for v in ppl + acc):
            pr, ar = rankdata(ppl), rankdata([-a for a in acc])
            ax.scatter(pr, ar, s=40)
            for x, y, r in zip(pr, ar, rows):
                ax.annotate(r.search, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            top = len(rows) + 0.5
            ax.plot([0.5, top], [0.5, top], color="grey", linestyle=":", linewidth=1)
            ax.set_xlim(0.5, top)
            ax.set_ylim(0.5, top)
        rho = spearman_ranks(rows)["rho"] if rows else math.nan
        ax.set_title(f"k = {k}: Spearman ρ = {'n/a' if math.isnan(rho) else f'{rho:.2f}'}", fontsize=10)
        ax.set_xlabel("perplexity rank (1 = lowest)")
        ax.set_ylabel("accuracy rank (1 = highest)")
    fig.suptitle(f"{study.model}: perplexity-pruned models", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
