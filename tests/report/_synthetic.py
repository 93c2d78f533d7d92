"""A synthetic results store with hand-checkable numbers (shared by the table, figure and CLI tests).

With ``outcomes=True`` every run also stores per-item outcomes consistent with its scores: each task has
100 items (``arc0`` … ``arc99``, ``lam0`` … ``lam99``, chronic cycles on the ARC items) and a score of k % means
exactly the first k items are correct. Accuracies nest, so a difference of d pp between two runs is d items
that only the better run gets right (every discordant pair points the same way): hand-checkable estimates,
McNemar p = binomtest(d, d, 0.5) for one seed.
"""

from __future__ import annotations

from prunelab.evaluate.registry import ItemOutcome
from prunelab.recover.mechanisms import Mechanism
from prunelab.runs.config import ChronicSpec, Dose, EvalSpec, ModelSpec, NoPruning, RunConfig, StressSpec, \
    TrainingSpec, Treatment
from prunelab.runs.result import (ChronicCycle, ChronicResult, EvalScores, PruningInfo, RecoveryInfo, RelapseResult,
                                  RunMeta, RunMetrics, RunRecord, RunResult, TrainingInfo)
from prunelab.runs.store import Store

KET = Mechanism("ketamine", r=64, alpha=128.0, targets=("q",), dropout=0.05, lr=5e-5)
N_ITEMS = 100
PREFIX = {"arc_easy_gen": "arc", "lambada_gen": "lam"}


def item_outcomes(task: str, score: float, n: int = N_ITEMS) -> list[ItemOutcome]:
    """``n`` items of which the first ``round(score·n/100)`` are correct."""
    k = round(score * n / 100)
    assert abs(k * 100 / n - score) < 1e-9, "synthetic scores must be whole items"
    return [ItemOutcome(f"{PREFIX.get(task, task)}{i}", correct=1.0 if i < k else 0.0) for i in range(n)]


def _phase(scores: dict) -> dict:
    return {t: item_outcomes(t, v) for t, v in scores.items() if t != "composite"}


def _rec(h, kind, model, pruning, seed, scores, mech=None, relapse=None, flops=None, chronic=None, epochs=None,
         structure=None, outcomes=False, formula=None, sweep=False):
    """One stored run with hand-picked scores: a baseline, or (``mech`` given) a treated run."""
    n = {t: N_ITEMS for t in scores if t != "composite"} if outcomes else {}
    training = relapse_result = chronic_result = treatment = None
    if mech is not None:
        stress = StressSpec(chronic=ChronicSpec(cycles=2, tasks=["arc_easy_gen"])) if chronic else StressSpec()
        treatment = Treatment(mechanism=mech, dose=Dose(epochs=epochs or 1), training=TrainingSpec(), stress=stress,
                              sweep=sweep)
        training = TrainingInfo(epochs=epochs or 1, isodose_formula=formula, flops=flops,
                                recovery=RecoveryInfo(honest_flops=flops * 10 if flops else None))
    if relapse is not None:
        relapse_result = RelapseResult(eval=EvalScores(scores=relapse))
    if chronic is not None:
        chronic_result = ChronicResult(cycles=tuple(ChronicCycle(cycle=i, scores={"arc_easy_gen": v})
                                                    for i, v in enumerate(chronic)))
    metrics = RunMetrics(model=structure or PruningInfo(), eval=EvalScores(scores=scores, n=n), training=training,
                         relapse=relapse_result, chronic=chronic_result)
    config = RunConfig(model=ModelSpec(source=model), pruning=NoPruning(name=pruning), seed=seed, eval=EvalSpec(),
                       treatment=treatment)
    per_item = {}
    if outcomes:
        per_item["eval"] = _phase(scores)
        if relapse is not None:
            per_item["relapse"] = _phase(relapse)
        for i, v in enumerate(chronic or []):
            per_item[f"chronic:{i}"] = _phase({"arc_easy_gen": v})
    assert kind == config.kind
    return RunRecord(h, config, RunResult(metrics=metrics, flops=flops, timings={}, versions={}, started_at=0.0,
                                          finished_at=float(len(h)), outcomes=per_item))


def comp(arc, lam):
    return {"arc_easy_gen": arc, "lambada_gen": lam, "composite": (arc + lam) / 2}


def records(outcomes: bool = False) -> list[tuple[RunRecord, int]]:
    """The synthetic runs with their experiment positions."""
    recs = []
    o = outcomes
    widths = PruningInfo(layer_widths=(6, 5, 6), original={"layer_widths": (10, 10, 10)})
    # primary group: baselines composite 20, 21, 22 over seeds 0..2
    for s, c in enumerate([20.0, 21.0, 22.0]):
        recs.append(_rec(f"b{s}", "baseline", "llama", "w60", s, comp(c, c), structure=widths, outcomes=o))
    # ketamine: composite 23, 25, 24 -> recovery 3, 4, 2 (mean 3, sd 1); relapse 21, 24, 23 -> drop 2, 1, 1
    for s, (c, rl) in enumerate([(23.0, 21.0), (25.0, 24.0), (24.0, 23.0)]):
        recs.append(_rec(f"k{s}", "treated", "llama", "w60", s, comp(c + 1, c - 1), KET, comp(rl, rl), 1e14,
                         chronic=[30.0 + s, 25.0, 20.0 - s], epochs=3, outcomes=o))
    # rank sweep, seed 0 only: r16 composite 19 (rec -1), r32 composite 24 (rec +4)
    for r, c, rl in [(16, 19.0, 18.0), (32, 24.0, 23.0)]:
        m = KET.with_(name=f"ketamine-r{r}", r=r, alpha=2.0 * r)
        recs.append(_rec(f"s{r}", "treated", "llama", "w60", 0, comp(c, c), m, comp(rl, rl), 2e14, epochs=192 // r,
                         outcomes=o, sweep=True))
    # transfer: a second model with ketamine, seeds 0, 1 (recovery 5, 7)
    for s, (bc, c) in enumerate([(30.0, 35.0), (30.0, 37.0)]):
        recs.append(_rec(f"gb{s}", "baseline", "gemma", "none", s, comp(bc, bc), outcomes=o))
        recs.append(_rec(f"gk{s}", "treated", "gemma", "none", s, comp(c, c), KET, comp(c - 1, c - 1), 1e14,
                         outcomes=o))
    return [(r, i if r.model == "llama" else 100 + i) for i, r in enumerate(recs)]


def build(db, outcomes: bool = False) -> list[RunRecord]:
    """Write the synthetic store (``outcomes=False``: as written before per-item outcomes existed)."""
    recs = records(outcomes)
    with Store(db) as st:
        for r, pos in recs:
            st.add_run(r, "synthetic", pos, RunMeta(note="synthetic numbers"))
    return [r for r, _ in recs]
