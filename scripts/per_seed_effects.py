"""Per-seed effects of a stored recovery experiment: does each effect hold on every seed on its own?

    .venv/bin/python scripts/per_seed_effects.py out/quickstart.sqlite

For each seed and mechanism: recovery (treated − untreated), relapse drop (treated − after relapse) and net
retained (after relapse − untreated) on the composite of the runs' ``eval.composite`` parts, each a paired
95 % CI over items (prunelab.stats.composite_difference) with its p-value, from the stored per-item outcomes.
"""

from __future__ import annotations

import sys

from prunelab.runs.store import Store
from prunelab.stats import composite_difference


def correct(outcomes: dict, phase: str, task: str) -> dict[str, float]:
    return {i: o.correct for i, o in outcomes[phase][task].items()}


def main(db: str) -> None:
    with Store(db, readonly=True) as store:
        runs = store.runs()
        outs = store.all_outcomes()
    parts = runs[0].config.composite_parts
    base = {r.seed: r.hash for r in runs if r.kind == "baseline"}
    print(f"composite = mean({', '.join(parts)}); 95 % paired CIs over items; * p < 0.05")
    print("| seed | mechanism | recovery (pp) | relapse drop (pp) | net retained (pp) |")
    print("|---:|---|---|---|---|")
    for r in sorted((r for r in runs if r.kind == "treated"), key=lambda r: (r.seed, r.mechanism or "")):
        b, t = outs.get(base.get(r.seed, ""), {}), outs.get(r.hash, {})
        if "eval" not in b or "eval" not in t:
            print(f"| {r.seed} | {r.mechanism} | no per-item data | | |")
            continue
        rec = composite_difference([(correct(b, "eval", p), correct(t, "eval", p)) for p in parts])
        cells = [rec.markdown()]
        if "relapse" in t:
            drop = composite_difference([(correct(t, "relapse", p), correct(t, "eval", p)) for p in parts])
            net = composite_difference([(correct(b, "eval", p), correct(t, "relapse", p)) for p in parts])
            cells += [drop.markdown(), net.markdown()]
        print(f"| {r.seed} | {r.mechanism} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: per_seed_effects.py STORE.sqlite")
    main(sys.argv[1])
