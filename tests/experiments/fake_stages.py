"""Fast fake stages for runner tests (``PRUNELAB_STAGES=tests.experiments.fake_stages:stages``).

A "model" is a dict; scores are a deterministic function of what was done to it, so resumed and fresh
runs give identical metrics. Each evaluation also returns per-item 0/1 outcomes whose mean is its score
(item ``i`` is correct iff a fixed per-item draw ``u_i`` is below the model's accuracy, so two models'
outcomes are paired and correlated, as real evaluations of the same items are).
``PRUNELAB_FAKE_SLEEP`` (seconds) makes every recovery slow enough to kill.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time

from prunelab.experiments.spec import builtin_mechanisms
from prunelab.evaluate.registry import ItemOutcome
from prunelab.experiments.stages import Prepared, Stages, StageChronic, StageEval, add_composite


def _noise(*parts) -> float:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return (h[0] / 255.0 - 0.5) * 4.0  # ±2 points


def _prepare(model_cfg, pruning, seed, cache_dir):
    ratio = pruning.get("ratio") or 0.0
    return Prepared({"quality": 40.0 - 30.0 * ratio, "seed": seed, "name": model_cfg["name"]}, None,
                    {"params": 1000, "layer_widths": [int(48 * (1 - ratio))] * 4, "original": {"layer_widths": [48] * 4},
                     "removed_layers": [1] if pruning["kind"] == "depth" else []},
                    {"load": 0.0})


def _draw(*parts) -> float:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "big") / 2**32


def _outcomes(task: str, accuracy: float, n: int) -> list[ItemOutcome]:
    return [ItemOutcome(f"{task}-{i}", correct=float(_draw(task, i) < accuracy / 100.0)) for i in range(n)]


def _scored(quality: float, tasks, n: int) -> StageEval:
    outcomes = {t: _outcomes(t, quality + _noise(t, quality), n) for t in tasks}
    scores = {t: 100.0 * sum(o.correct for o in items) / n for t, items in outcomes.items()}
    return StageEval(add_composite(scores), {t: n for t in tasks}, outcomes)


def _evaluate(model, tok, ev, tasks):
    return _scored(model["quality"], tasks, ev.get("limit") or 10)


def _recover(model, tok, mech, training, epochs, seed):
    time.sleep(float(os.environ.get("PRUNELAB_FAKE_SLEEP", "0")))
    model["quality"] += mech["r"] / 32.0 + _noise(mech["name"], seed)
    return model, {"train_loss": 1.0}


def _relapse(model, fraction):
    model["quality"] -= 10 * fraction
    return {"fraction": fraction}


def _chronic(model, tok, mech, ch, training, ev, seed):
    cycles, outcomes = [], {}
    for c in range(ch["cycles"] + 1):
        res = _scored(model["quality"] - 2 * c, ch["tasks"], ev.get("limit") or 10)
        cycles.append({"cycle": c, "scores": res.scores})
        outcomes[c] = res.outcomes
    return StageChronic(cycles, outcomes)


def stages() -> Stages:
    return Stages(prepare=_prepare, clone=copy.deepcopy,
                  trainable_params=lambda m, mech: mech["r"] * 100 * len(mech["targets"]),
                  recover=_recover, evaluate=_evaluate, relapse=_relapse, chronic=_chronic,
                  mechanisms=builtin_mechanisms)
