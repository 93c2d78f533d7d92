"""Verdicts on the width-pruning dichotomy study's claims from one ``prunelab dichotomy`` output folder.

    .venv/bin/python scripts/dichotomy_claims.py out/dichotomy

Claims (the seed study: MAW width pruning of the GLU MLPs over seven expansion ratios):

* knowledge (MMLU, ARC-Challenge) falls as the expansion ratio falls: every task's score correlates positively
  with the expansion ratio (Pearson r over the ratios, dense included, p < 0.05) and the smallest ratio scores
  below dense beyond noise (paired difference over the same items, 95 % CI from ``vs_dense.json``);
* instruction following (IFEval) holds or rises (the study: +46 to +75 %): some ratio scores above dense beyond
  noise and none below (no ratio beyond noise either way is *within noise*: no drop is not evidence of a hold);
* MMLU and TruthfulQA-MC2 correlate negatively over the ratios (the study: r = −0.864, p = 0.012, Llama-3B).

A claim *holds* when its test passes beyond noise, is *contradicted* when the opposite is seen beyond noise,
and is *within noise* otherwise. The numbers are the study's own (``result.json`` / ``vs_dense.json``); this
script only reads them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.scores import pearson

KNOWLEDGE = ("mmlu", "arc_challenge")
INSTRUCTION = "ifeval"
TRUTH = "truthfulqa_mc2"


def correlate(x, y):
    """Pearson (r, p, n), or (None, None, n) with the reason printed when it is undefined (a constant series)."""
    try:
        c = pearson(x, y)
        return c.statistic, c.pvalue, c.n
    except PrunelabError as exc:
        print(f"note: {exc}", file=sys.stderr)
        return None, None, sum(a is not None and b is not None for a, b in zip(x, y))


def r_text(r, p) -> str:
    return "undefined (constant series)" if r is None else f"{r:+.2f} (p = {p:.3f})"


def cell_text(c: dict | None) -> str:
    if not c or c.get("low") is None:
        return "–"
    star = "*" if not c.get("within_noise") else ""
    return f"{c['estimate']:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}]{star}".replace("-", "\u2212")


def direction(c: dict | None) -> int:
    """+1 / −1 beyond noise, 0 within noise or without a CI."""
    if not c or c.get("low") is None or c.get("within_noise"):
        return 0
    return 1 if c["estimate"] > 0 else -1


def main(folder: str) -> None:
    out = Path(folder)
    result = json.loads((out / "result.json").read_text())
    vs_dense = json.loads((out / "vs_dense.json").read_text())
    records = vs_dense["records"] if isinstance(vs_dense, dict) and "records" in vs_dense else vs_dense
    points = result["points"]
    ratios = [p["expansion_ratio"] for p in points]
    smallest = min(records, key=lambda r: r["expansion_ratio"])
    limits = result.get("limits", {})
    print(f"{folder}: {result['model']}, criterion {result['criterion']}, expansion ratios "
          f"{', '.join(f'{r:.3g}' for r in ratios)} (first = dense); items "
          + ", ".join(f"{t} {limits.get(t)}" for t in result["tasks"]))
    print()
    print("| claim | evidence | verdict |")
    print("|---|---|---|")

    def score(task: str) -> list[float | None]:
        return [p["scores"].get(task) for p in points]

    # knowledge falls with the ratio
    parts, signs = [], []
    for t in KNOWLEDGE:
        r, p, _ = correlate(ratios, score(t))
        c = smallest.get(t)
        parts.append(f"{t}: r(score, ratio) = {r_text(r, p)}; e = {smallest['expansion_ratio']:.3g}"
                     f" − dense {cell_text(c)}")
        falls = r is not None and r > 0 and p < 0.05 and direction(c) < 0
        rises = (r is not None and r < 0 and p < 0.05) or direction(c) > 0
        signs.append(1 if falls else -1 if rises else 0)
    v = "holds" if all(s == 1 for s in signs) else "contradicted" if any(s == -1 for s in signs) else "within noise"
    print(f"| knowledge (MMLU, ARC-C) falls with the expansion ratio | {'; '.join(parts)} | {v} |")

    # IFEval holds or rises
    cells = [(r["expansion_ratio"], r.get(INSTRUCTION)) for r in records]
    worst = min((c for c in cells if c[1] and c[1].get("estimate") is not None),
                key=lambda c: c[1]["estimate"], default=None)
    below = [e for e, c in cells if direction(c) < 0]
    above = [e for e, c in cells if direction(c) > 0]
    # absence of a drop is not evidence that IFEval holds: "holds" needs a rise beyond noise (the study: +46 to
    # +75 %) and no drop; nothing beyond noise either way is "within noise"
    v = "contradicted" if below else "holds" if above else "within noise"
    evidence = (f"lowest vs dense: e = {worst[0]:.3g} {cell_text(worst[1])}; below dense beyond noise at "
                f"{', '.join(f'{e:.3g}' for e in below) or 'no ratio'}; above at "
                f"{', '.join(f'{e:.3g}' for e in above) or 'no ratio'}") if worst else "no IFEval scores"
    print(f"| instruction following (IFEval prompt-level strict) holds or rises | {evidence} | {v} |")

    # MMLU vs TruthfulQA-MC2 correlation
    r, p, n = correlate(score("mmlu"), score(TRUTH))
    v = ("within noise" if r is None else "holds" if r < 0 and p < 0.05 else
         "contradicted" if r > 0 and p < 0.05 else "within noise")
    print(f"| MMLU and TruthfulQA-MC2 correlate negatively over the ratios | Pearson r = {r_text(r, p)}, "
          f"n = {n} ratios | {v} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: dichotomy_claims.py DICHOTOMY_OUTPUT_DIR")
    main(sys.argv[1])
