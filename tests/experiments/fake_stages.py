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

from prunelab.evaluate.registry import ItemOutcome
from prunelab.experiments.spec import builtin_mechanisms
from prunelab.experiments.stages import LibraryStages, Prepared, StageChronic, StageEval
from prunelab.runs.result import ChronicCycle, PruningInfo, RecoveryInfo
from prunelab.scores import with_composite


def _noise(*parts) -> float:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return (h[0] / 255.0 - 0.5) * 4.0  # ±2 points


def _draw(*parts) -> float:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "big") / 2**32


def _outcomes(task: str, accuracy: float, n: int) -> list[ItemOutcome]:
    return [ItemOutcome(f"{task}-{i}", correct=float(_draw(task, i) < accuracy / 100.0)) for i in range(n)]


def scored(quality: float, tasks, n: int) -> StageEval:
    outcomes = {t: _outcomes(t, quality + _noise(t, quality), n) for t in tasks}
    scores = {t: 100.0 * sum(o.correct for o in items) / n for t, items in outcomes.items()}
    return StageEval(with_composite(scores), {t: n for t in tasks}, outcomes)


class FakeStages(LibraryStages):
    """Every stage replaced by arithmetic on a dict "model"; only the honest-isodose helpers stay the library's."""

    def prepare(self, model, pruning, seed, cache_dir):
        ratio = getattr(pruning, "ratio", None) or 0.0
        info = PruningInfo(params=1000, layer_widths=(int(48 * (1 - ratio)),) * 4,
                           original={"layer_widths": (48,) * 4},
                           removed_layers=(1,) if pruning.kind == "depth" else ())
        return Prepared({"quality": 40.0 - 30.0 * ratio, "seed": seed, "name": model.name}, None, info,
                        {"load": 0.0})

    def clone(self, model):
        return copy.deepcopy(model)

    def trainable_params(self, model, mechanism):
        return mechanism.r * 100 * len(mechanism.targets)

    def recover(self, model, tokenizer, mechanism, training, epochs, seed):
        time.sleep(float(os.environ.get("PRUNELAB_FAKE_SLEEP", "0")))
        model["quality"] += mechanism.r / 32.0 + _noise(mechanism.name, seed)
        return model, RecoveryInfo(final_loss=1.0)

    def evaluate(self, model, tokenizer, eval_spec, tasks):
        return scored(model["quality"], tasks, eval_spec.limit or 10)

    def relapse(self, model, fraction):
        model["quality"] -= 10 * fraction
        return {"fraction": fraction}

    def chronic(self, model, tokenizer, mechanism, chronic, training, eval_spec, seed, *, before=None):
        cycles, outcomes = [], {}
        for c in range(chronic.cycles + 1):
            result = scored(model["quality"] - 2 * c, chronic.tasks, eval_spec.limit or 10)
            cycles.append(ChronicCycle(cycle=c, scores=result.scores))
            outcomes[c] = result.outcomes
        return StageChronic(cycles, outcomes)

    def mechanisms(self):
        return builtin_mechanisms()

    def validate(self, spec):
        """Fake models have no registry names to check."""


def stages() -> FakeStages:
    return FakeStages()
