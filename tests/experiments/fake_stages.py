"""Fast fake stages for runner tests (``PRUNELAB_STAGES=tests.experiments.fake_stages:stages``).

A "model" is a dict; scores are a deterministic function of what was done to it, so resumed and fresh
runs give identical metrics. ``PRUNELAB_FAKE_SLEEP`` (seconds) makes every recovery slow enough to kill.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time

from prunelab.experiments.spec import builtin_mechanisms
from prunelab.experiments.stages import Prepared, Stages, add_composite


def _noise(*parts) -> float:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return (h[0] / 255.0 - 0.5) * 4.0  # ±2 points


def _prepare(model_cfg, pruning, seed, cache_dir):
    ratio = pruning.get("ratio") or 0.0
    return Prepared({"quality": 40.0 - 30.0 * ratio, "seed": seed, "name": model_cfg["name"]}, None,
                    {"params": 1000, "layer_widths": [int(48 * (1 - ratio))] * 4, "original": {"layer_widths": [48] * 4},
                     "removed_layers": [1] if pruning["kind"] == "depth" else []},
                    {"load": 0.0})


def _evaluate(model, tok, ev, tasks):
    scores = {t: model["quality"] + _noise(t, model["quality"]) for t in tasks}
    return {"scores": add_composite(scores), "n": {t: ev.get("limit") or 10 for t in tasks}}


def _recover(model, tok, mech, training, epochs, seed):
    time.sleep(float(os.environ.get("PRUNELAB_FAKE_SLEEP", "0")))
    model["quality"] += mech["r"] / 32.0 + _noise(mech["name"], seed)
    return model, {"train_loss": 1.0}


def _relapse(model, fraction):
    model["quality"] -= 10 * fraction
    return {"fraction": fraction}


def _chronic(model, tok, mech, ch, training, ev, seed):
    cycles = []
    for c in range(ch["cycles"] + 1):
        cycles.append({"cycle": c, "scores": {t: model["quality"] - 2 * c for t in ch["tasks"]}})
    return cycles


def stages() -> Stages:
    return Stages(prepare=_prepare, clone=copy.deepcopy,
                  trainable_params=lambda m, mech: mech["r"] * 100 * len(mech["targets"]),
                  recover=_recover, evaluate=_evaluate, relapse=_relapse, chronic=_chronic,
                  mechanisms=builtin_mechanisms)
