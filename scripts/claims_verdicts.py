"""Verdicts on the recovery study's claims that a stored recovery experiment can test, with the CI behind each.

    .venv/bin/python scripts/claims_verdicts.py out/quickstart.sqlite

Each claim compares mechanisms as a difference in differences over the same items (seeds pooled: the item is the
resampling unit, its seeds move with it; :func:`prunelab.report.comparisons.did_cell`):

* best acute recovery: ``(A − untreated) − (B − untreated)`` on the composite, for A = ketamine-like;
* smallest relapse drop: ``(A − A after relapse) − (B − B after relapse)``; negative = A drops less;
* least chronic decline: ``(A cycle 0 − A last cycle) − (B cycle 0 − B last cycle)`` on the chronic tasks,
  for A = SSRI-like; negative = A declines less.

A claim *holds* when every comparison goes its way with a 95 % CI that excludes zero and p < 0.05,
is *contradicted* when any goes the other way so, and is *within noise* otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from prunelab.report.comparisons import Outcomes, did_cell
from prunelab.runs.result import EVAL_PHASE, RELAPSE_PHASE, chronic_phase
from prunelab.runs.store import Store


def verdict(cells: Sequence, want_negative: bool) -> str:
    signs = []
    for cell in cells:
        if cell.diff is None or cell.within_noise:
            signs.append(0)
        else:
            signs.append(-1 if cell.diff.estimate < 0 else 1)
    good = -1 if want_negative else 1
    if all(s == good for s in signs):
        return "holds"
    if any(s == -good for s in signs):
        return "contradicted"
    return "within noise"


def main(db: str) -> None:
    with Store(db, readonly=True) as store:
        runs = store.runs()
        outcomes = Outcomes.from_store(store, runs)
    parts = list(runs[0].config.composite_parts)
    base = {r.seed: (r.hash, EVAL_PHASE) for r in runs if r.kind == "baseline"}
    treated: dict[str, list] = {}
    for r in runs:
        if r.kind == "treated":
            treated.setdefault(r.mechanism, []).append(r)

    def side(mechanism: str, phase: str) -> dict[int, tuple[str, str]]:
        return {r.seed: (r.hash, phase) for r in treated[mechanism]}

    def last_cycle(mechanism: str) -> str:
        cycles = [c.cycle for r in treated[mechanism] if r.metrics.chronic for c in r.metrics.chronic.cycles]
        return chronic_phase(max(cycles)) if cycles else ""

    seeds = sorted({r.seed for r in runs})
    print(f"{db}: {len(runs)} runs, seeds {seeds}; composite = mean({', '.join(parts)}); "
          "estimate [95 % CI] in pp, * p < 0.05")
    print()
    print("| claim | comparison | difference (pp) | verdict |")
    print("|---|---|---|---|")
    def others(mechanism: str) -> list[str]:
        return [m for m in sorted(treated) if m != mechanism]

    def row(claim: str, cells: list, labels: list[str], want_negative: bool) -> None:
        v = verdict(cells, want_negative)
        for i, (cell, label) in enumerate(zip(cells, labels, strict=True)):
            print(f"| {claim if i == 0 else ''} | {label} | {cell.text()} | {v if i == 0 else ''} |")

    if "ketamine" in treated:
        cells = [did_cell(outcomes, side("ketamine", EVAL_PHASE), base, side(m, EVAL_PHASE), base, parts, None)
                 for m in others("ketamine")]
        row("ketamine-like gives the best acute recovery", cells,
            [f"recovery: ketamine − {m}" for m in others("ketamine")], want_negative=False)
        if all(r.metrics.relapse for rs in treated.values() for r in rs):
            cells = [did_cell(outcomes, side("ketamine", EVAL_PHASE), side("ketamine", RELAPSE_PHASE),
                              side(m, EVAL_PHASE), side(m, RELAPSE_PHASE), parts, None) for m in others("ketamine")]
            row("ketamine-like has the smallest relapse drop", cells,
                [f"relapse drop: ketamine − {m}" for m in others("ketamine")], want_negative=True)
    if "ssri" in treated and last_cycle("ssri"):
        tasks = list(treated["ssri"][0].config.treatment.stress.chronic.tasks)
        cells = [did_cell(outcomes, side("ssri", chronic_phase(0)), side("ssri", last_cycle("ssri")),
                          side(m, chronic_phase(0)), side(m, last_cycle(m)), tasks, None) for m in others("ssri")]
        row(f"SSRI-like declines least over chronic cycles ({', '.join(tasks)})", cells,
            [f"decline: ssri − {m}" for m in others("ssri")], want_negative=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: claims_verdicts.py STORE.sqlite")
    main(sys.argv[1])
