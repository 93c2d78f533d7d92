"""The stage functions an experiment run calls, behind one small interface so they can be swapped.

:func:`real_stages` wires the library (``prunelab.prune``, ``prunelab.recover``, ``prunelab.stress``,
``prunelab.evaluate``); every import is lazy so ``prunelab run --help`` and the store/report code need none
of them. The evaluate stage returns a :class:`StageEval`: its :meth:`StageEval.summary`
``{"scores": {task: percent}, "n": {task: items}}`` goes into the run's metrics, its per-item ``outcomes``
into the store's ``outcomes`` table (kept apart so metrics_json stays small); ``composite`` is added as
mean(ARC-Easy gen %, LAMBADA gen %) when both are evaluated and it was not requested itself. The chronic
stage returns a :class:`StageChronic` (cycle rows + each cycle's outcomes). Custom stages may still return
the plain dict / list of before (no outcomes stored): :func:`split_eval` / :func:`split_chronic` accept both.
"""

from __future__ import annotations

import copy
import json
from prunelab.scores import STUDY_COMPOSITE, composite_parts, with_composite
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # annotations only: stage imports stay lazy
    from prunelab.evaluate.registry import ItemOutcome


@dataclass
class Prepared:
    """A loaded (and pruned) model ready to be copied into runs, with a summary of its structure."""

    model: Any
    tokenizer: Any
    info: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class StageEval:
    """The evaluate stage's result: scores for the run's metrics, per-item outcomes for the store."""

    scores: dict[str, float]
    n: dict[str, int]
    #: ``{task: [ItemOutcome]}`` (``composite`` has none; its parts' are here even when only it was asked for)
    outcomes: dict[str, list[ItemOutcome]] = field(default_factory=dict)
    #: ``{task: "raw" | "chat"}``: the prompt protocol each generation task actually used
    protocol: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What goes into ``metrics["eval"]`` (unchanged from before outcomes were kept, plus ``protocol``)."""
        out: dict[str, Any] = {"scores": dict(self.scores), "n": dict(self.n)}
        if self.protocol:
            out["protocol"] = dict(self.protocol)
        return out


@dataclass
class StageChronic:
    """The chronic stage's result: one row per cycle (for the metrics) and each cycle's eval outcomes."""

    cycles: list[dict[str, Any]]
    #: ``{cycle: {task: [ItemOutcome]}}``
    outcomes: dict[int, dict[str, list[ItemOutcome]]] = field(default_factory=dict)


def split_eval(result: StageEval | dict) -> tuple[dict[str, Any], dict[str, list[ItemOutcome]]]:
    """``(metrics summary, outcomes)`` of an evaluate stage's result (a legacy dict has no outcomes)."""
    if isinstance(result, StageEval):
        return result.summary(), result.outcomes
    return result, {}


def split_chronic(result: StageChronic | list) -> tuple[list[dict[str, Any]], dict[int, dict[str, list[ItemOutcome]]]]:
    """``(cycle rows, {cycle: outcomes})`` of a chronic stage's result (a legacy list has no outcomes)."""
    if isinstance(result, StageChronic):
        return result.cycles, result.outcomes
    return result, {}


@dataclass
class Stages:
    """Pluggable stage functions (see module doc for the shapes of their results)."""

    prepare: Callable[[dict, dict, int, Path], Prepared]
    clone: Callable[[Any], Any]
    trainable_params: Callable[[Any, dict], int]
    recover: Callable[[Any, Any, dict, dict, int, int], tuple[Any, dict]]
    evaluate: Callable[[Any, Any, dict, list[str]], StageEval | dict]
    relapse: Callable[[Any, float], dict]
    chronic: Callable[[Any, Any, dict, dict, dict, dict, int], StageChronic | list[dict]]
    mechanisms: Callable[[], dict[str, dict]]
    # checks names (criteria, searches, tasks) before any work; errors name the spec field
    validate: Callable[[Any], None] = lambda spec: None
    # honest isodose only: the base's forward FLOPs per token F at (model, seq_len), and the tokens one epoch
    # processes without padding at (tokenizer, training, seed); defaults are the real ones
    base_flops_per_token: Callable[[Any, int], float] = lambda model, seq_len: real_base_flops_per_token(model, seq_len)
    epoch_tokens: Callable[[Any, dict, int], int] = lambda tok, training, seed: real_epoch_tokens(tok, training, seed)


def add_composite(scores: dict[str, float], parts: tuple[str, ...] = STUDY_COMPOSITE) -> dict[str, float]:
    """``scores`` with ``composite`` = mean of ``parts`` (:mod:`prunelab.scores`), when every part was scored."""
    return with_composite(scores, parts)


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
                              steps=pruning["steps"], calibration=_calibration(lm.tokenizer, cal, seed),
                              repair=pruning.get("repair", "none"), ridge=pruning.get("ridge"))
        else:
            from prunelab.prune.width import prune_width

            rep = prune_width(lm.model, lm.tokenizer, criterion=pruning["criterion"], ratio=pruning["ratio"],
                              expansion_ratio=pruning["expansion_ratio"], heads_ratio=pruning["heads_ratio"],
                              round_to=pruning["round_to"], seed=seed, calibration_samples=cal["samples"],
                              calibration_seq_len=cal["seq_len"], calibration_source=cal["source"],
                              repair=pruning.get("repair", "none"), ridge=pruning.get("ridge"))
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


def real_base_flops_per_token(model: Any, seq_len: int) -> float:
    """``F`` of the honest isodose cost (:func:`prunelab.recover.isodose.base_forward_flops_per_token`)."""
    from prunelab.recover.isodose import base_forward_flops_per_token

    return float(base_forward_flops_per_token(model, seq_len))


def real_epoch_tokens(tokenizer: Any, training: dict, seed: int) -> int:
    """Tokens one padding-free epoch processes: the real token count of the seed's Dolly training records
    (what the recovery stage's Trainer counts)."""
    from prunelab.data import dolly_split
    from prunelab.recover import tokenize_records

    split = dolly_split(n_train=training["samples"], n_held_out=training["held_out"], seed=seed)
    return sum(len(r["input_ids"]) for r in tokenize_records(tokenizer, split.train, seq_len=training["seq_len"],
                                                               pad_to_max=False))


def real_evaluate(model: Any, tokenizer: Any, ev: dict, tasks: list[str]) -> StageEval:
    from prunelab.evaluate import evaluate

    limits = ev.get("limits") or {}
    by_limit: dict[Any, list[str]] = {}
    for t in tasks:
        by_limit.setdefault(limits.get(t, ev.get("limit")), []).append(t)
    scores: dict[str, float] = {}
    n: dict[str, int] = {}
    protocol: dict[str, str] = {}
    outcomes: dict[str, list[ItemOutcome]] = {}
    deps: dict[str, list[ItemOutcome]] = {}
    for limit, group in by_limit.items():
        rep = evaluate(model, tokenizer, group, limit=limit, seed=ev.get("seed", 0), batch_size=ev.get("batch_size", 8),
                       protocol=ev.get("protocol", "raw"))  # configs stored before protocols existed ran raw
        for t, res in rep.results.items():
            scores[t] = float(rep.score(t))
            n[t] = int(res.n)
            if "protocol" in res.details:
                protocol[t] = str(res.details["protocol"])
            if res.outcomes:
                outcomes[t] = list(res.outcomes)
        for t, res in rep.dependencies.items():  # composite's parts, when only composite was asked for
            if res.outcomes:
                deps.setdefault(t, list(res.outcomes))
    for t, items in deps.items():  # a part requested itself (possibly at its own limit) keeps its own items
        outcomes.setdefault(t, items)
    return StageEval(add_composite(scores, composite_parts(ev)), n, outcomes, protocol)


def real_relapse(model: Any, fraction: float) -> dict:
    from prunelab.atomic import to_jsonable
    from prunelab.stress import relapse

    rep = relapse(model, fraction=fraction)
    return {"report": _small(to_jsonable(rep))}


def real_chronic(model: Any, tokenizer: Any, mech: dict, ch: dict, training: dict, ev: dict,
                 seed: int) -> StageChronic:
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
    per_cycle: list[dict[str, list[ItemOutcome]]] = []  # chronic() evaluates cycle 0, 1, ... in order

    def eval_fn(m: Any, tok: Any) -> dict[str, float]:
        res = real_evaluate(m, tok, ev, tasks)
        per_cycle.append(res.outcomes)
        return res.scores

    rep = chronic(model, tokenizer, _mechanism(mech), cycles=ch["cycles"], step=ch["step"],
                  maintenance_epochs=ch["maintenance_epochs"], records=split.held_out, seq_len=training["seq_len"],
                  tasks=tasks, seed=seed, eval_fn=eval_fn,
                  tune_fn=default_tune_fn(training["seq_len"], seed, pad_to_max=training["pad"]))
    rows = [{"cycle": r.cycle, "scores": dict(r.scores), "sparsity": r.sparsity, "loss": r.loss} for r in rep.rows]
    if len(per_cycle) != len(rep.rows):  # chronic() calls eval_fn exactly once per cycle row
        raise RuntimeError(f"chronic evaluated {len(per_cycle)} times for {len(rep.rows)} cycles")
    return StageChronic(rows, {r.cycle: o for r, o in zip(rep.rows, per_cycle)})


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
    _check_chat_templates(spec)


def _check_chat_templates(spec: Any) -> None:
    """``eval.protocol: chat`` needs every model's tokenizer to have a chat template: checked on the tokenizer
    alone (cheap) before any model is loaded or pruned. ``auto`` never fails, so it is not checked."""
    from prunelab.errors import PrunelabError
    from prunelab.evaluate.generative_tasks import PROTOCOL_TASKS, resolve_protocol

    tasks = set(spec.eval.tasks) | set(spec.stress.chronic.tasks if spec.stress.chronic is not None else ())
    if spec.eval.protocol != "chat" or not tasks & PROTOCOL_TASKS:
        return
    from transformers import AutoTokenizer

    from prunelab.models.io import resolve_source

    for i, m in enumerate(spec.models):
        path, name = resolve_source(m.source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path) if path is not None else name)
        except OSError as exc:
            raise PrunelabError(f"models.{i}: cannot load the tokenizer of '{name}': "
                                f"{str(exc).splitlines()[0]}") from None
        try:
            resolve_protocol(tokenizer, "chat")
        except PrunelabError as exc:
            raise PrunelabError(f"eval.protocol: model '{m.name}': {exc}") from None


def real_stages() -> Stages:
    return Stages(prepare=real_prepare, clone=copy.deepcopy,
                  trainable_params=real_trainable_params, recover=real_recover, evaluate=real_evaluate,
                  relapse=real_relapse, chronic=real_chronic, mechanisms=real_mechanisms,
                  validate=real_validate)
