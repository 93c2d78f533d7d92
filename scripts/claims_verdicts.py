"""Verdicts on the recovery study's claims that a stored recovery experiment can test, with the CI behind each.

    .venv/bin/python scripts/claims_verdicts.py out/quickstart.sqlite      # main job (+ isodose-formulas.yaml)
    .venv/bin/python scripts/claims_verdicts.py out/cpu-study.sqlite       # + rank sweep and transfer

Every comparison is a difference over the same items (seeds pooled: the item is the resampling unit, its seeds
move with it; :mod:`prunelab.report.comparisons`), in percentage points on the runs' composite:

* best acute recovery: ``(A − untreated) − (B − untreated)``, for A = ketamine-like;
* smallest relapse drop: ``(A − A after relapse) − (B − B after relapse)``; negative = A drops less;
* least chronic decline: ``(A cycle 0 − A last cycle) − (B cycle 0 − B last cycle)`` on the chronic tasks,
  for A = SSRI-like; negative = A declines less;
* r = 32 best under isodose: recovery of the rank-sweep arm r = 32 minus each other rank's;
* the recipe transfers: on every other pruning of the same model, the recipe's recovery (treated − that
  pruning's untreated model) is positive;
* honest isodose changes the ranking: the pairwise recovery differences of the three mechanisms under the honest
  formula beside those of the same mechanisms trained under the study's formula (arms named ``<mechanism>-study``).

The main claims read the primary group: the first (model, pruning) that has the three built-in mechanisms.
A claim *holds* when every comparison goes its way with a 95 % CI that excludes zero and p < 0.05,
is *contradicted* when any goes the other way so, and is *within noise* otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from prunelab.report.comparisons import Outcomes, accuracy_cell, did_cell
from prunelab.runs.result import EVAL_PHASE, RELAPSE_PHASE, chronic_phase
from prunelab.runs.store import Store

MAIN = ("ketamine", "ssri", "neurosteroid")
STUDY_SUFFIX = "-study"


def sign(cell) -> int:
    """+1 / −1 for a difference beyond noise, 0 within noise (or without a CI)."""
    if cell.diff is None or cell.within_noise:
        return 0
    return -1 if cell.diff.estimate < 0 else 1


def verdict(cells: Sequence, want_negative: bool) -> str:
    signs = [sign(c) for c in cells]
    good = -1 if want_negative else 1
    if all(s == good for s in signs):
        return "holds"
    if any(s == -good for s in signs):
        return "contradicted"
    return "within noise"


def print_row(claim: str, cells: list, labels: list[str], v: str) -> None:
    for i, (cell, label) in enumerate(zip(cells, labels, strict=True)):
        print(f"| {claim if i == 0 else ''} | {label} | {cell.text()} | {v if i == 0 else ''} |")


class Group:
    """The runs of one (model, pruning): baselines by seed and treated runs by (mechanism, sweep)."""

    def __init__(self, runs: list) -> None:
        self.base = {r.seed: (r.hash, EVAL_PHASE) for r in runs if r.kind == "baseline"}
        self.treated: dict[tuple[str, bool], list] = {}
        for r in runs:
            if r.kind == "treated":
                self.treated.setdefault((r.mechanism, r.config.treatment.sweep), []).append(r)

    def side(self, mechanism: str, phase: str = EVAL_PHASE, sweep: bool = False) -> dict[int, tuple[str, str]]:
        return {r.seed: (r.hash, phase) for r in self.treated.get((mechanism, sweep), [])}

    def mechanisms(self, sweep: bool = False) -> list[str]:
        return sorted(m for m, s in self.treated if s == sweep)

    def last_cycle(self, mechanism: str) -> str:
        cycles = [c.cycle for r in self.treated[(mechanism, False)] if r.metrics.chronic
                  for c in r.metrics.chronic.cycles]
        return chronic_phase(max(cycles)) if cycles else ""


def main(db: str) -> None:
    with Store(db, readonly=True) as store:
        runs = store.runs()
        outcomes = Outcomes.from_store(store, runs)
    parts = list(runs[0].config.composite_parts)
    order: list[tuple[str, str]] = []
    by_group: dict[tuple[str, str], list] = {}
    for r in runs:
        g = (r.model, r.pruning)
        if g not in by_group:
            order.append(g)
        by_group.setdefault(g, []).append(r)
    groups = {g: Group(rs) for g, rs in by_group.items()}
    primary_key = next((g for g in order if all((m, False) in groups[g].treated for m in MAIN)), order[0])
    primary = groups[primary_key]

    def recovery(group: Group, a: str, b: str, sweep: bool = False):
        return did_cell(outcomes, group.side(a, sweep=sweep), group.base, group.side(b, sweep=sweep), group.base,
                        parts, None)

    seeds = sorted({r.seed for r in runs})
    print(f"{db}: {len(runs)} runs, seeds {seeds}; primary {primary_key[0]} · {primary_key[1]}; "
          f"composite = mean({', '.join(parts)}); estimate [95 % CI] in pp, * p < 0.05")
    print()
    print("| claim | comparison | difference (pp) | verdict |")
    print("|---|---|---|---|")
    main_mechs = [m for m in MAIN if (m, False) in primary.treated]

    def others(mechanism: str) -> list[str]:
        return [m for m in main_mechs if m != mechanism]

    if "ketamine" in main_mechs:
        cells = [recovery(primary, "ketamine", m) for m in others("ketamine")]
        print_row("ketamine-like gives the best acute recovery", cells,
                  [f"recovery: ketamine − {m}" for m in others("ketamine")], verdict(cells, want_negative=False))
        if all(r.metrics.relapse for m in main_mechs for r in primary.treated[(m, False)]):
            cells = [did_cell(outcomes, primary.side("ketamine"), primary.side("ketamine", RELAPSE_PHASE),
                              primary.side(m), primary.side(m, RELAPSE_PHASE), parts, None)
                     for m in others("ketamine")]
            print_row("ketamine-like has the smallest relapse drop", cells,
                      [f"relapse drop: ketamine − {m}" for m in others("ketamine")],
                      verdict(cells, want_negative=True))
    if "ssri" in main_mechs and primary.last_cycle("ssri"):
        tasks = list(primary.treated[("ssri", False)][0].config.treatment.stress.chronic.tasks)
        last = primary.last_cycle("ssri")
        cells = [did_cell(outcomes, primary.side("ssri", chronic_phase(0)), primary.side("ssri", last),
                          primary.side(m, chronic_phase(0)), primary.side(m, primary.last_cycle(m)), tasks, None)
                 for m in others("ssri")]
        print_row(f"SSRI-like declines least over chronic cycles ({', '.join(tasks)}, {last.split(':')[-1]} cycles)",
                  cells, [f"decline: ssri − {m}" for m in others("ssri")], verdict(cells, want_negative=True))

    sweep = {r.config.treatment.mechanism.r: m for m in primary.mechanisms(sweep=True)
             for r in primary.treated[(m, True)][:1]}
    if 32 in sweep and len(sweep) > 1:
        rest = [r for r in sorted(sweep) if r != 32]
        cells = [recovery(primary, sweep[32], sweep[r], sweep=True) for r in rest]
        print_row("r = 32 is the best rank under isodose", cells,
                  [f"recovery: r 32 − r {r}" for r in rest], verdict(cells, want_negative=False))

    shared = [m for m in primary.mechanisms() if m not in MAIN and not m.endswith(STUDY_SUFFIX)
              and any((m, False) in groups[g].treated for g in order if g != primary_key)]
    for m in shared:
        targets = [g for g in order if g != primary_key and (m, False) in groups[g].treated]
        cells = [accuracy_cell(outcomes, groups[g].side(m), groups[g].base, parts, None) for g in targets]
        deltas = [did_cell(outcomes, groups[g].side(m), groups[g].base, primary.side(m), primary.base, parts, None)
                  for g in targets]
        print_row(f"the recipe ({m}) transfers across pruning regimes", cells + deltas,
                  [f"recovery on {g[1]}" for g in targets] + [f"recovery on {g[1]} − on {primary_key[1]}"
                                                               for g in targets],
                  verdict(cells, want_negative=False))

    study = [m for m in main_mechs if (m + STUDY_SUFFIX, False) in primary.treated]
    if len(study) > 1:
        pairs = [(a, b) for i, a in enumerate(study) for b in study[i + 1:]]
        honest = [recovery(primary, a, b) for a, b in pairs]
        studied = [recovery(primary, a + STUDY_SUFFIX, b + STUDY_SUFFIX) for a, b in pairs]
        flips = [sign(h) * sign(s) < 0 for h, s in zip(honest, studied, strict=True)]
        same = [sign(h) == sign(s) != 0 for h, s in zip(honest, studied, strict=True)]
        v = ("holds (the ranking changes)" if any(flips) else
             "contradicted (same ranking)" if all(same) else "within noise")
        print_row("honest isodose changes the mechanisms' ranking", honest + studied,
                  [f"recovery, honest formula: {a} − {b}" for a, b in pairs] +
                  [f"recovery, study formula: {a} − {b}" for a, b in pairs], v)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: claims_verdicts.py STORE.sqlite")
    main(sys.argv[1])
