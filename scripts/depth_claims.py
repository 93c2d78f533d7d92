"""Verdicts on the depth study's three claims from a `prunelab depth-study` output folder (its results.json).

    .venv/bin/python scripts/depth_claims.py out/depth-study

1. Under a fixed objective the searches converge: every search's accuracy vs the best search of the same
   (k, objective), as the study itself compared them (``comparisons.json``: paired over the same items, McNemar
   exact, bootstrap CI). Holds when none differs beyond noise; contradicted when one does.
2. Changing the objective changes the mask more than changing the search: for each search, the Jaccard distance
   between its perplexity and margin masks (removed-block sets) against the mean distance from its mask to the
   other searches' masks under the same objective; paired by search, Wilcoxon signed-rank
   (``scipy.stats.wilcoxon``). Holds when the objective distance is larger with p < 0.05.
3. Perplexity rank vs accuracy rank ρ ≤ 0 across the perplexity-pruned models (Spearman, the study's own ρ and p).
"""

from __future__ import annotations

import json
import statistics
import sys
from itertools import combinations
from pathlib import Path

from scipy.stats import wilcoxon



def jaccard_distance(a: set[int], b: set[int]) -> float:
    return 1.0 - len(a & b) / len(a | b) if a | b else 0.0


def main(folder: str) -> None:
    study = json.loads((Path(folder) / "results.json").read_text())
    comparisons = json.loads((Path(folder) / "comparisons.json").read_text())["records"]
    accuracy = "Δ avg accuracy (pp)"  # the study's comparison column (prunelab.studies.depth.outputs)
    task = study["acc_tasks"][0]
    rows = [r for r in study["rows"] if r["k"] > 0 and r.get("result")]
    print(f"{folder}: {study['model']}, k = {study['removes']}, {task} on "
          f"{len(rows[0]['outcomes'][task])} items; estimate [95 % CI], * p < 0.05\n")
    for k in study["removes"]:
        at_k = [r for r in rows if r["k"] == k]
        print(f"## k = {k}\n\n1. searches converge under a fixed objective ({task}, each search vs the best):\n")
        for objective in study["objectives"]:
            cell = [r for r in at_k if r["objective"] == objective]
            worse = []
            for c in comparisons:
                if (c["k"], c["comparison"], c["objective"]) != (str(k), "search vs best", objective):
                    continue
                d = c[accuracy]
                mark = "" if d["within_noise"] else "*"
                worse.append(mark)
                print(f"   - {objective}: {c['search']} − {c['vs']}: "
                      f"{d['estimate']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]{mark}")
            accs = [r["avg_accuracy"] for r in cell]
            print(f"   {objective}: {sum(bool(w) for w in worse)} of {len(worse)} searches differ beyond noise; "
                  f"σ² over searches = {study['variance'][f'k={k}/{objective}']:.2f} pp² (accuracy {min(accs):.1f}–{max(accs):.1f} %)")
        masks = {(r["objective"], r["search"]): set(r["result"]["removed"]) for r in at_k}
        searches = sorted({s for _, s in masks})
        objectives = study["objectives"]
        if len(objectives) >= 2:
            o1, o2 = objectives[:2]
            by_objective, by_search = [], []
            for s in searches:
                if (o1, s) not in masks or (o2, s) not in masks:
                    continue
                by_objective.append(jaccard_distance(masks[(o1, s)], masks[(o2, s)]))
                within = [jaccard_distance(masks[(o, s)], masks[(o, t)]) for o in (o1, o2) for t in searches
                          if t != s and (o, t) in masks]
                by_search.append(statistics.fmean(within))
            test = wilcoxon(by_objective, by_search, alternative="greater", zero_method="zsplit")
            print(f"\n2. objective vs search, Jaccard distance of the removed sets (paired by search, n = "
                  f"{len(by_objective)}): changing the objective {statistics.fmean(by_objective):.2f}, changing the "
                  f"search {statistics.fmean(by_search):.2f}; Wilcoxon one-sided p = {test.pvalue:.3f}")
            pairs = list(combinations(searches, 2))
            same = sum(masks.get((o1, a)) == masks.get((o1, b)) for a, b in pairs)
            print(f"   identical masks among the {len(pairs)} search pairs under {o1}: {same}")
        rho = study.get("spearman", {}).get(f"k={k}")
        if rho:
            print(f"\n3. Spearman ρ(perplexity rank, accuracy rank) over the {rho['n']} perplexity-pruned models: "
                  f"ρ = {rho['rho']:+.2f}, p = {rho['p']:.3f}")
        print()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: depth_claims.py DEPTH_STUDY_FOLDER")
    main(sys.argv[1])
