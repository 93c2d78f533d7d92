"""Which of the recovery-isodose study's Table 1–2 differences could be told from noise at its own sizes?

Pure arithmetic (no model, no data, milliseconds): for every claim of Tables 1–2 of the study (the numbers are
copied from the paper; its sizes are 200 ARC-Easy items, 100 LAMBADA items, composite = their mean, 3 LoRA
seeds evaluated on the *same* items), compute with :mod:`prunelab.stats`

* the minimum detectable difference (MDE) at 80 % power, α = 0.05 two-sided, for a paired comparison on those
  items (Connor 1987, p. 209; composite: both tasks' items, see ``prunelab.stats.mde_composite``), with the
  discordance ψ at its binomial bound 2·acc·(1−acc) — the two models' errors independent, acc the mean of the two
  arms' accuracies on that task — because the paper reports no per-item data;
* the critical difference: the smallest observed difference that would reach p < 0.05 at all;
* the same MDE at half that discordance, as a sensitivity check: a fine-tuned descendant of one base model
  shares many of its errors, so the real ψ is usually below the bound.

Seeds do not multiply n: the three seeds are re-trainings evaluated on the same 200 + 100 items, so the item
sample — the thing a reader wants to generalise from — is still 300 items. A difference of differences
(mechanism vs mechanism on relapse drop) involves four models on the same items; with independent errors its
per-item variance is about twice that of one difference, so ψ is doubled there.

    .venv/bin/python benchmarks/seed_claims_power.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prunelab.stats import critical_difference, mde_composite  # noqa: E402

N_ARC, N_LAMBADA = 200, 100  # the study's evaluation sizes ("Evaluation Tasks")

# Table 1 of the study: post-treatment accuracy, mean over three seeds (percent).
TABLE1 = {
    "untreated": {"arc": 22.5, "lambada": 20.0, "composite": 21.2},
    "ketamine": {"arc": 32.3, "lambada": 14.3, "composite": 23.3},
    "ssri": {"arc": 22.3, "lambada": 17.0, "composite": 19.7},
    "neurosteroid": {"arc": 28.5, "lambada": 11.3, "composite": 19.9},
}
# Table 2 of the study: recovery, relapse drop, net retained (composite percentage points).
TABLE2 = {
    "ketamine": {"recovery": 2.1, "relapse_drop": 1.5, "net": 0.6},
    "ssri": {"recovery": -1.6, "relapse_drop": -2.5, "net": 0.9},
    "neurosteroid": {"recovery": -1.3, "relapse_drop": -0.9, "net": -0.4},
}
NAMES = {"ketamine": "Ketamine-like", "ssri": "SSRI-like", "neurosteroid": "Neurosteroid-like"}


@dataclass
class Claim:
    table: str
    claim: str
    effect_pp: float
    mde_pp: float
    critical_pp: float
    mde_half_psi_pp: float
    verdict: str


def _parts(tasks: list[str], arm_x: str, arm_y: str, psi_factor: float = 1.0) -> list[tuple]:
    """(n, acc, ψ) per task; acc = mean of the two arms' accuracies, ψ = factor × 2·acc·(1−acc)."""
    sizes = {"arc": N_ARC, "lambada": N_LAMBADA}
    out = []
    for t in tasks:
        acc = (TABLE1[arm_x][t] + TABLE1[arm_y][t]) / 200.0
        out.append((sizes[t], acc, min(1.0, psi_factor * 2.0 * acc * (1.0 - acc))))
    return out


def _claim(table: str, text: str, effect: float, parts: list[tuple]) -> Claim:
    mde = mde_composite(parts)
    crit = critical_difference(parts)
    half = mde_composite([(n, acc, psi / 2.0) for n, acc, psi in parts])
    if abs(effect) >= mde:
        verdict = "yes"
    elif abs(effect) >= crit:
        verdict = "marginal"  # would reach p < 0.05 if observed, but the study had < 80 % power for it
    else:
        verdict = "no"
    return Claim(table, text, effect, mde, crit, half, verdict)


def claims() -> list[Claim]:
    out: list[Claim] = []
    both = ["arc", "lambada"]
    for m in ("ketamine", "ssri", "neurosteroid"):
        for t, label in (("arc", "ARC-Easy"), ("lambada", "LAMBADA")):
            eff = TABLE1[m][t] - TABLE1["untreated"][t]
            out.append(_claim("1", f"{NAMES[m]} vs untreated, {label}", eff, _parts([t], m, "untreated")))
    for m in ("ketamine", "ssri", "neurosteroid"):
        out.append(_claim("1–2", f"{NAMES[m]} recovery (composite vs untreated)", TABLE2[m]["recovery"],
                          _parts(both, m, "untreated")))
    for other in ("ssri", "neurosteroid"):
        eff = TABLE1["ketamine"]["composite"] - TABLE1[other]["composite"]
        out.append(_claim("1", f"Ketamine-like vs {NAMES[other]}, composite", eff, _parts(both, "ketamine", other)))
    for m in ("ketamine", "ssri", "neurosteroid"):
        # treated vs relapsed model on the same items; the relapsed model's per-task accuracies are not
        # reported, so ψ uses the treated model's (the drop is a few points, ψ barely moves)
        out.append(_claim("2", f"{NAMES[m]} relapse drop", TABLE2[m]["relapse_drop"], _parts(both, m, m)))
        out.append(_claim("2", f"{NAMES[m]} net retained (relapsed vs untreated)", TABLE2[m]["net"],
                          _parts(both, m, "untreated")))
    for other in ("ssri", "neurosteroid"):
        eff = TABLE2["ketamine"]["relapse_drop"] - TABLE2[other]["relapse_drop"]
        out.append(_claim("2", f"relapse drop, Ketamine-like − {NAMES[other]}", eff,
                          _parts(both, "ketamine", other, psi_factor=2.0)))
    return out


def items_per_task_needed(effect_pp: float, parts: list[tuple]) -> int:
    """Smallest equal per-task n whose composite MDE is ≤ ``effect_pp`` (MDE falls monotonically with n)."""
    lo, hi = 1, 1
    while mde_composite([(hi, acc, psi) for _, acc, psi in parts]) > abs(effect_pp):
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if mde_composite([(mid, acc, psi) for _, acc, psi in parts]) > abs(effect_pp):
            lo = mid + 1
        else:
            hi = mid
    return hi


def markdown(rows: list[Claim]) -> str:
    def pp(x: float) -> str:
        return f"{x:+.1f}".replace("-", "\u2212")

    lines = ["| Table | Claim | Reported effect (pp) | MDE at the study's sizes (pp) | p < 0.05 needs (pp) "
             "| MDE if ψ were half (pp) | Distinguishable? |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.table} | {r.claim} | {pp(r.effect_pp)} | {r.mde_pp:.1f} | {r.critical_pp:.1f} "
                     f"| {r.mde_half_psi_pp:.1f} | {r.verdict} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()
    rows = claims()
    print(markdown(rows))
    counts = {v: sum(r.verdict == v for r in rows) for v in ("yes", "marginal", "no")}
    print(f"\n{len(rows)} claims: {counts['yes']} distinguishable, {counts['marginal']} marginal, {counts['no']} not")
    headline = _parts(["arc", "lambada"], "ketamine", "untreated")
    need = items_per_task_needed(TABLE2["ketamine"]["recovery"], headline)
    print(f"items per task needed to detect the headline +{TABLE2['ketamine']['recovery']} pp composite recovery "
          f"at 80 % power (same ψ bound): {need:,} ARC-Easy + {need:,} LAMBADA")
    if args.json:
        from prunelab.atomic import write_json

        write_json(args.json, [asdict(r) for r in rows])


if __name__ == "__main__":
    main()
