"""The stage functions an experiment run calls, behind one small interface so they can be swapped.

:func:`real_stages` wires the library (``prunelab.prune``, ``prunelab.recover``, ``prunelab.stress``,
``prunelab.evaluate``); every import is lazy so ``prunelab run --help`` and the store/report code need none
of them. Evaluation results are ``{"scores": {task: percent}, "n": {task: items}}``; ``composite`` is added as
mean(ARC-Easy gen %, LAMBADA gen %) (DESIGN §7) when both are evaluated and it was not requested itself.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class Prepared:
    """A loaded (and pruned) model ready to be copied into runs, with a summary of its structure."""

    model: Any
    tokenizer: Any
    info: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Stages:
    """Pluggable stage functions (see module doc for the shapes of their results)."""

    prepare: Callable[[dict, dict, int, Path], Prepared]
    clone: Callable[[Any], Any]
    trainable_params: Callable[[Any, dict], int]
    recover: Callable[[Any, Any, dict, dict, int, int], tuple[Any, dict]]
    evaluate: Callable[[Any, Any, dict, list[str]], dict]
    relapse: Callable[[Any, float], dict]
    chronic: Callable[[Any, Any, dict, dict, dict, dict, int], list[dict]]
    mechanisms: Callable[[], dict[str, dict]]
    # checks names (criteria, searches, tasks) before any work; errors name the spec field
    validate: Callable[[Any], None] = lambda spec: None


def add_composite(scores: dict[str, float]) -> dict[str, float]:
    """Composite = mean(ARC-Easy gen %, LAMBADA gen %) (DESIGN §7), when both are present."""
    if "composite" not in scores and "arc_easy_gen" in scores and "lambada_gen" in scores:
        scores["composite"] = (scores["arc_easy_gen"] + scores["lambada_gen"]) / 2.0
    return scores


# ------------------------------------------------------------------------------------------ real stages
def _structure(model: Any) -> dict[str, Any]:
    from prunelab.models import count_parameters, flops_per_token, layer_shapes

    shapes = layer_shapes(model)
    counts = count_parameters(model)
    return {
        "params": counts.total, "params_non_embedding": counts.non_embedding,
        "flops_per_token": flops_per_token(model), "num_layers": len(shapes),
        "layer_widths": [s["intermediate_size"] for s in shapes],
        "layer_heads": [s["num_attention_heads"] for s in shapes],
    }


def _calibration(tokenizer: Any, cal: dict, seed: int):
    from prunelab.data import calibration_batch

    return calibration_batch(tokenizer, n_samples=cal["samples"], seq_len=cal["seq_len"], source=cal["source"], seed=seed)


def _prune(lm: Any, pruning: dict, seed: int) -> dict[str, Any]:
    """Prune ``lm.model`` in place as ``pruning`` says; returns a JSON-able summary."""
    from prunelab.atomic import to_jsonable

    kind = pruning["kind"]
    if kind == "width":
        cal = pruning["calibration"]
        if pruning["adaptive"]:
            from prunelab.prune.adaptive import adapt_prune

            rep = adapt_prune(lm.model, lm.tokenizer, ratio=pruning["ratio"], amplitude=pruning["amplitude"],
                              steps=pruning["steps"], calibration=_calibration(lm.tokenizer, cal, seed))
        else:
            from prunelab.prune.width import prune_width

            rep = prune_width(lm.model, lm.tokenizer, criterion=pruning["criterion"], ratio=pruning["ratio"],
                              expansion_ratio=pruning["expansion_ratio"], heads_ratio=pruning["heads_ratio"],
                              round_to=pruning["round_to"], seed=seed, calibration_samples=cal["samples"],
                              calibration_seq_len=cal["seq_len"], calibration_source=cal["source"])
        return {"report": _small(to_jsonable(rep))}
    if kind == "depth":
        from prunelab.models import remove_layers
        from prunelab.prune.depth import search_blocks

        cal = pruning["calibration"]
        res = search_blocks(lm.model, k=pruning["k"], objective=pruning["objective"], search=pruning["search"],
                            seed=seed, tokenizer=lm.tokenizer,
                            calibration_options={"n_samples": cal["samples"], "seq_len": cal["seq_len"],
                                                 "source": cal["source"]})
        removed = sorted(int(i) for i in res.removed)
        remove_layers(lm.model, removed)
        return {"removed_layers": removed, "objective_value": float(res.objective_value),
                "search_seconds": float(res.seconds)}
    return {}


def _small(obj: Any, limit: int = 2000) -> Any:
    """Drop bulky lists (per-neuron scores) from a report before it goes into the results JSON."""
    if isinstance(obj, dict):
        return {k: _small(v, limit) for k, v in obj.items()
                if not (isinstance(v, list) and len(json.dumps(v)) > limit)}
    return obj


def real_prepare(model_cfg: dict, pruning: dict, seed: int, cache_dir: Path) -> Prepared:
    """Load the model, prune it, and cache the pruned checkpoint in ``cache_dir`` (keyed by hash by the caller)."""
    import time

    from prunelab.atomic import write_json
    from prunelab.models import load, save

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    info_path, model_dir = cache_dir / "info.json", cache_dir / "model"
    if pruning["kind"] != "none" and info_path.is_file() and model_dir.is_dir():
        lm = load(str(model_dir), dtype=model_cfg.get("dtype", "auto"))
        info = json.loads(info_path.read_text())
        timings["load"] = time.perf_counter() - t0
        return Prepared(lm.model, lm.tokenizer, info, timings)
    lm = load(model_cfg["source"], dtype=model_cfg.get("dtype", "auto"))
    timings["load"] = time.perf_counter() - t0
    original = _structure(lm.model)
    t1 = time.perf_counter()
    summary = _prune(lm, pruning, seed)
    timings["prune"] = time.perf_counter() - t1
    info = {**_structure(lm.model), "original": original, "pruning": pruning["kind"], **summary}
    if pruning["kind"] != "none":
        save(lm.model, lm.tokenizer, model_dir, metadata={"pruning": pruning, "seed": seed})
        write_json(info_path, info)  # written after the model, so its presence means the cache is complete
    return Prepared(lm.model, lm.tokenizer, info, timings)


def _mechanism(mech: dict) -> Any:
    from prunelab.recover import Mechanism

    return Mechanism(name=mech["name"], r=mech["r"], alpha=mech["alpha"], targets=tuple(mech["targets"]),
                     dropout=mech["dropout"], lr=mech["lr"])


def real_trainable_params(model: Any, mech: dict) -> int:
    """LoRA trainable parameters ``Σ r·(in + out)`` over the targeted linears (the recovery stage's count)."""
    from prunelab.recover import count_trainable_lora_params

    return int(count_trainable_lora_params(model, _mechanism(mech)))


def real_recover(model: Any, tokenizer: Any, mech: dict, training: dict, epochs: int, seed: int) -> tuple[Any, dict]:
    from prunelab.atomic import to_jsonable
    from prunelab.data import dolly_split
    from prunelab.recover import recover

    split = dolly_split(n_train=training["samples"], n_held_out=training["held_out"], seed=seed)
    res = recover(model, tokenizer, _mechanism(mech), split.train, epochs=epochs, seq_len=training["seq_len"],
                  pad_to_max=training["pad"], batch_size=training["batch_size"], grad_accum=training["grad_accum"],
                  seed=seed, merge=True)
    keep = ("steps", "tokens", "flops", "honest_flops", "base_flops_per_token", "initial_loss", "final_loss",
            "seconds", "tokens_per_second")
    data = to_jsonable(res)
    return res.model, {k: data[k] for k in keep if k in data}


def real_evaluate(model: Any, tokenizer: Any, ev: dict, tasks: list[str]) -> dict:
    from prunelab.evaluate import evaluate

    limits = ev.get("limits") or {}
    by_limit: dict[Any, list[str]] = {}
    for t in tasks:
        by_limit.setdefault(limits.get(t, ev.get("limit")), []).append(t)
    scores: dict[str, float] = {}
    n: dict[str, int] = {}
    for limit, group in by_limit.items():
        rep = evaluate(model, tokenizer, group, limit=limit, seed=ev.get("seed", 0), batch_size=ev.get("batch_size", 8))
        for t, res in rep.results.items():
            scores[t] = float(rep.score(t))
            n[t] = int(res.n)
    return {"scores": add_composite(scores), "n": n}


def real_relapse(model: Any, fraction: float) -> dict:
    from prunelab.atomic import to_jsonable
    from prunelab.stress import relapse

    rep = relapse(model, fraction=fraction)
    return {"report": _small(to_jsonable(rep))}


def real_chronic(model: Any, tokenizer: Any, mech: dict, ch: dict, training: dict, ev: dict, seed: int) -> list[dict]:
    """Chronic stress (``prunelab.stress.chronic``); cycle 0 is the treated model. Maintenance tunes use the
    ``held_out`` Dolly items (disjoint from the recovery set of the same seed)."""
    from prunelab.data import dolly_split
    from prunelab.stress import chronic
    from prunelab.stress.chronic import default_tune_fn

    split = dolly_split(n_train=training["samples"], n_held_out=training["held_out"], seed=seed)
    if not split.held_out:
        from prunelab.errors import PrunelabError

        raise PrunelabError("training.held_out must be ≥ 1 for chronic stress (maintenance tunes need data)")
    tasks = list(ch["tasks"])

    def eval_fn(m: Any, tok: Any) -> dict[str, float]:
        return real_evaluate(m, tok, ev, tasks)["scores"]

    rep = chronic(model, tokenizer, _mechanism(mech), cycles=ch["cycles"], step=ch["step"],
                  maintenance_epochs=ch["maintenance_epochs"], records=split.held_out, seq_len=training["seq_len"],
                  tasks=tasks, seed=seed, eval_fn=eval_fn,
                  tune_fn=default_tune_fn(training["seq_len"], seed, pad_to_max=training["pad"]))
    return [{"cycle": r.cycle, "scores": dict(r.scores), "sparsity": r.sparsity, "loss": r.loss} for r in rep.rows]


def real_mechanisms() -> dict[str, dict]:
    from prunelab.experiments.spec import builtin_mechanisms

    return builtin_mechanisms()


def _check(registry: Any, name: str, where: str) -> None:
    from prunelab.errors import PrunelabError

    try:
        registry.get(name)
    except PrunelabError as exc:
        raise PrunelabError(f"{where}: {exc}") from None


def real_validate(spec: Any) -> None:
    """Every registry name in the spec exists (before any model is loaded)."""
    from prunelab.evaluate import TASKS, load_tasks

    load_tasks()
    for i, p in enumerate(spec.pruning):
        if p.kind == "width":
            from prunelab.prune.criteria import CRITERIA

            _check(CRITERIA, p.criterion, f"pruning.{i}.criterion")
        elif p.kind == "depth":
            from prunelab.prune.depth import OBJECTIVES, SEARCHES

            _check(SEARCHES, p.search, f"pruning.{i}.search")
            _check(OBJECTIVES, p.objective, f"pruning.{i}.objective")
    for i, t in enumerate(spec.eval.tasks):
        _check(TASKS, t, f"eval.tasks.{i}")
    for t in spec.eval.limits:
        _check(TASKS, t, f"eval.limits.{t}")
    if spec.stress.chronic is not None:
        for i, t in enumerate(spec.stress.chronic.tasks):
            _check(TASKS, t, f"stress.chronic.tasks.{i}")


def real_stages() -> Stages:
    return Stages(prepare=real_prepare, clone=copy.deepcopy,
                  trainable_params=real_trainable_params, recover=real_recover, evaluate=real_evaluate,
                  relapse=real_relapse, chronic=real_chronic, mechanisms=real_mechanisms,
                  validate=real_validate)
