"""The dichotomy study's analysis: capabilities normalised to dense, kind means, Pearson correlations.

- each capability **normalised to dense**: ``score(e) / score(dense)`` (for perplexity, where lower is
  better, ``ppl(dense) / ppl(e)``, so 1 = dense and < 1 = worse for every series);
- per kind, the mean of its tasks' normalised scores;
- **Pearson r with its two-sided p** (``scipy.stats.pearsonr`` via :func:`prunelab.scores.pearson`)
  between every pair of series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from prunelab.errors import PrunelabError
from prunelab.evaluate.registry import task_spec
from prunelab.studies.dichotomy.plan import kind_of

@dataclass
class PairCorrelation:
    """Pearson r and two-sided p between two capability series over ``n`` ratios (None + reason if undefined)."""

    a: str
    b: str
    r: float | None
    p: float | None
    n: int
    reason: str = ""


def correlation_matrix(series: dict[str, Sequence[float | None]]) -> list[PairCorrelation]:
    """Pearson r with p for every unordered pair of series (upper triangle, in the dict's order).

    Points where either series is missing are dropped pairwise; fewer than 3 pairs or a constant series give
    ``r = None`` with the reason (``scipy.stats.pearsonr`` is undefined there).
    """
    from prunelab.scores import pearson

    names = list(series)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pairs = [(x, y) for x, y in zip(series[a], series[b]) if x is not None and y is not None
                     and math.isfinite(x) and math.isfinite(y)]
            try:
                c = pearson([x for x, _ in pairs], [y for _, y in pairs])
                out.append(PairCorrelation(a, b, c.statistic, c.pvalue, c.n))
            except PrunelabError as exc:
                out.append(PairCorrelation(a, b, None, None, len(pairs), str(exc)))
    return out


def square_matrix(names: list[str], pairs: list[PairCorrelation], attr: str) -> list[list[float | None]]:
    """Symmetric matrix of ``attr`` (r or p); the diagonal is r = 1 / p = 0 for series that correlate with
    anything (a constant or too-short series stays undefined there too)."""
    idx = {n: i for i, n in enumerate(names)}
    m: list[list[float | None]] = [[None] * len(names) for _ in names]
    defined = {n for c in pairs if c.r is not None for n in (c.a, c.b)}
    for i, n in enumerate(names):
        if n in defined:
            m[i][i] = 1.0 if attr == "r" else 0.0
    for c in pairs:
        v = getattr(c, attr)
        m[idx[c.a]][idx[c.b]] = m[idx[c.b]][idx[c.a]] = v
    return m


def normalise_to_dense(task: str, values: list[float | None]) -> list[float | None]:
    """Score relative to dense (``values[0]``); perplexity inverted so higher is better everywhere."""
    dense = values[0]
    out: list[float | None] = []
    for v in values:
        if v is None or dense is None or not math.isfinite(v):
            out.append(None)
        elif not task_spec(task).higher_is_better:
            out.append(dense / v if v > 0 else None)
        else:
            out.append(v / dense if dense != 0 else None)  # a dense score of 0 has no relative scale
    return out


def mean_defined(values: list[float | None]) -> float | None:
    """Mean of the defined values (None when none is)."""
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def kind_means(normalised: dict[str, list[float | None]], n_points: int) -> dict[str, list[float | None]]:
    """Per kind (in order of first appearance), the mean of its tasks' normalised series at each point."""
    out: dict[str, list[float | None]] = {}
    for kind in dict.fromkeys(kind_of(t) for t in normalised):
        members = [series for t, series in normalised.items() if kind_of(t) == kind]
        out[kind] = [mean_defined([s[i] for s in members]) for i in range(n_points)]
    return out
