"""The stage functions an experiment run calls, behind one :class:`Stages` protocol so they can be swapped.

:class:`LibraryStages` wires the library (``prunelab.prune``, ``prunelab.recover``, ``prunelab.stress``,
``prunelab.evaluate``); every import is lazy so ``prunelab run --help`` and the store/report code need none
of them. ``$PRUNELAB_STAGES=module:factory`` swaps in another set (:func:`get_stages`; the tests use fast fakes).

Every stage takes and returns typed objects: the run config's parts (:mod:`prunelab.runs.config`), one
:class:`~prunelab.recover.mechanisms.Mechanism`, and records of :mod:`prunelab.runs.result`. The evaluate stage
returns a :class:`StageEval`: its :meth:`StageEval.summary` (an :class:`~prunelab.runs.result.EvalScores`)
goes into the run's metrics, its per-item ``outcomes`` into the store's ``outcomes`` table (kept apart so the
metrics stay small); ``composite`` is added as the mean of the run's ``eval.composite`` parts
(:mod:`prunelab.scores`) when they are all evaluated. The chronic stage returns a :class:`StageChronic` (cycle
rows + each cycle's outcomes).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from prunelab.errors import PrunelabError
from prunelab.recover.mechanisms import Mechanism
from prunelab.runs.config import ChronicSpec, EvalSpec, ModelSpec, PruningSpec, TrainingSpec
from prunelab.runs.result import ChronicCycle, EvalScores, PruningInfo, RecoveryInfo
from prunelab.scores import composite_parts, with_composite

if TYPE_CHECKING:  # annotations only: stage imports stay lazy
    from prunelab.evaluate.registry import ItemOutcome
    from prunelab.experiments.spec import ExperimentSpec

#: ``package.module:factory`` of the stages to use instead of the library's
STAGES_ENV = "PRUNELAB_STAGES"


@dataclass
class Prepared:
    """A loaded (and pruned) model ready to be copied into runs, with a summary of its structure."""

    model: Any
    tokenizer: Any
    info: PruningInfo
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

    def summary(self) -> EvalScores:
        """What goes into the run's metrics (everything but the per-item outcomes)."""
        return EvalScores(scores=dict(self.scores), n=dict(self.n), protocol=dict(self.protocol))


@dataclass
class StageChronic:
    """The chronic stage's result: one row per cycle (for the metrics) and each cycle's eval outcomes."""

    cycles: list[ChronicCycle]
    #: ``{cycle: {task: [ItemOutcome]}}``
    outcomes: dict[int, dict[str, list[ItemOutcome]]] = field(default_factory=dict)


@runtime_checkable
class Stages(Protocol):
    """What an experiment run needs from the library, one method per stage (see the module doc).

    Implementations may subclass :class:`LibraryStages` to replace some stages and keep the others.
    """

    def prepare(self, model: ModelSpec, pruning: PruningSpec, seed: int, cache_dir: Path) -> Prepared:
        """Load ``model``, prune it as ``pruning`` says (seeded), caching the pruned checkpoint in ``cache_dir``."""
        ...

    def clone(self, model: Any) -> Any:
        """An independent copy of ``model`` (a run and its stress tests never touch the prepared model)."""
        ...

    def trainable_params(self, model: Any, mechanism: Mechanism) -> int:
        """LoRA trainable parameters ``mechanism`` adds to ``model`` (the ``P`` of the isodose formulas)."""
        ...

    def recover(self, model: Any, tokenizer: Any, mechanism: Mechanism, training: TrainingSpec, epochs: int,
                seed: int) -> tuple[Any, RecoveryInfo]:
        """Train ``mechanism`` for ``epochs`` on the ``training`` data and merge it; the model and its figures."""
        ...

    def evaluate(self, model: Any, tokenizer: Any, eval_spec: EvalSpec, tasks: Sequence[str]) -> StageEval:
        """Score ``tasks`` with ``eval_spec``'s limits, item seed, batch size and prompt protocol."""
        ...

    def relapse(self, model: Any, fraction: float) -> dict[str, Any]:
        """Acute relapse: prune ``fraction`` more of ``model`` in place; the stress stage's report as JSON."""
        ...

    def chronic(self, model: Any, tokenizer: Any, mechanism: Mechanism, chronic: ChronicSpec,
                training: TrainingSpec, eval_spec: EvalSpec, seed: int, *,
                before: StageEval | None = None) -> StageChronic:
        """Chronic stress: ``chronic.cycles`` rounds of pruning + maintenance tunes, evaluated every cycle.

        ``before`` is the evaluation already made of this very ``model`` under ``eval_spec``; cycle 0 (the
        treated model before any stress) reuses it for the chronic tasks instead of evaluating again."""
        ...

    def mechanisms(self) -> Mapping[str, Mechanism]:
        """The built-in mechanisms a spec may name."""
        ...

    def validate(self, spec: ExperimentSpec) -> None:
        """Check every registry name in ``spec`` before any work; errors name the spec field."""
        ...

    def base_flops_per_token(self, model: Any, seq_len: int) -> float:
        """Honest isodose only: the base's forward FLOPs per token ``F`` at context ``seq_len``."""
        ...

    def epoch_tokens(self, tokenizer: Any, training: TrainingSpec, seed: int) -> int:
        """Honest isodose without padding: the tokens one epoch of the seed's recovery data processes."""
        ...


def get_stages() -> Stages:
    """The library's stages, or ``$PRUNELAB_STAGES`` (``package.module:factory``) when set."""
    target = os.environ.get(STAGES_ENV)
    if not target:
        return LibraryStages()
    mod, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(mod), attr or "stages")
    except (ImportError, AttributeError) as exc:
        raise PrunelabError(f"${STAGES_ENV}={target!r} cannot be imported ({exc})") from None
    return factory()


# ------------------------------------------------------------------------------------------ library stages
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


def _calibration(tokenizer: Any, calibration: Any, seed: int):
    from prunelab.data import calibration_batch

    return calibration_batch(tokenizer, n_samples=calibration.samples, seq_len=calibration.seq_len,
                             source=calibration.source, seed=seed)


def _prune(lm: Any, pruning: PruningSpec, seed: int) -> dict[str, Any]:
    """Prune ``lm.model`` in place as ``pruning`` says; returns the :class:`PruningInfo` fields it determines."""
    from prunelab.atomic import to_jsonable

    if pruning.kind == "width":
        calibration = pruning.calibration
        if pruning.adaptive:
            from prunelab.prune.adaptive import adapt_prune

            report = adapt_prune(lm.model, lm.tokenizer, ratio=pruning.ratio, amplitude=pruning.amplitude,
                                 criterion=pruning.criterion,
                                 steps=pruning.steps, calibration=_calibration(lm.tokenizer, calibration, seed),
                                 repair=pruning.repair, ridge=pruning.ridge,
                                 repair_target=pruning.repair_target, token_weights=pruning.token_weights)
        else:
            from prunelab.prune.width import prune_width

            report = prune_width(lm.model, lm.tokenizer, criterion=pruning.criterion, ratio=pruning.ratio,
                                 expansion_ratio=pruning.expansion_ratio, heads_ratio=pruning.heads_ratio,
                                 round_to=pruning.round_to, seed=seed, calibration_samples=calibration.samples,
                                 calibration_seq_len=calibration.seq_len, calibration_source=calibration.source,
                                 repair=pruning.repair, ridge=pruning.ridge,
                                 repair_target=pruning.repair_target, token_weights=pruning.token_weights)
        return {"report": _small(to_jsonable(report))}
    if pruning.kind == "depth":
        from prunelab.models import remove_layers
        from prunelab.prune.depth import search_blocks

        calibration = pruning.calibration
        found = search_blocks(lm.model, k=pruning.k, objective=pruning.objective, search=pruning.search,
                              seed=seed, tokenizer=lm.tokenizer,
                              calibration_options={"n_samples": calibration.samples, "seq_len": calibration.seq_len,
                                                   "source": calibration.source})
        removed = sorted(int(i) for i in found.removed)
        remove_layers(lm.model, removed)
        return {"removed_layers": removed, "objective_value": float(found.objective_value),
                "search_seconds": float(found.seconds)}
    return {}


def _small(obj: Any, limit: int = 2000) -> Any:
    """Drop bulky lists (per-neuron scores) from a report before it goes into the results JSON."""
    if isinstance(obj, dict):
        return {k: _small(v, limit) for k, v in obj.items()
                if not (isinstance(v, list) and len(json.dumps(v)) > limit)}
    return obj


def real_prepare(model_spec: ModelSpec, pruning: PruningSpec, seed: int, cache_dir: Path) -> Prepared:
    """Load the model, prune it, and cache the pruned checkpoint in ``cache_dir`` (keyed by hash by the caller)."""
    import time

    from prunelab.atomic import write_json
    from prunelab.models import load, save

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    info_path, model_dir = cache_dir / "info.json", cache_dir / "model"
    if pruning.kind != "none" and info_path.is_file() and model_dir.is_dir():
        lm = load(str(model_dir), dtype=model_spec.dtype)
        info = PruningInfo.model_validate(json.loads(info_path.read_text()))
        timings["load"] = time.perf_counter() - t0
        return Prepared(lm.model, lm.tokenizer, info, timings)
    lm = load(model_spec.source, dtype=model_spec.dtype)
    timings["load"] = time.perf_counter() - t0
    original = _structure(lm.model)
    t1 = time.perf_counter()
    summary = _prune(lm, pruning, seed)
    timings["prune"] = time.perf_counter() - t1
    info = PruningInfo.model_validate({**_structure(lm.model), "original": original, "pruning": pruning.kind,
                                       **summary})
    if pruning.kind != "none":
        save(lm.model, lm.tokenizer, model_dir, metadata={"pruning": pruning.model_dump(), "seed": seed})
        # written after the model, so its presence means the cache is complete
        write_json(info_path, info.model_dump(mode="json"))
    return Prepared(lm.model, lm.tokenizer, info, timings)


def real_trainable_params(model: Any, mechanism: Mechanism) -> int:
    """LoRA trainable parameters ``Σ r·(in + out)`` over the targeted linears (the recovery stage's count)."""
    from prunelab.recover import count_trainable_lora_params

    return int(count_trainable_lora_params(model, mechanism))


def real_recover(model: Any, tokenizer: Any, mechanism: Mechanism, training: TrainingSpec, epochs: int,
                 seed: int) -> tuple[Any, RecoveryInfo]:
    from prunelab.atomic import to_jsonable
    from prunelab.data import dolly_split
    from prunelab.recover import recover

    split = dolly_split(n_train=training.samples, n_held_out=training.held_out, seed=seed)
    result = recover(model, tokenizer, mechanism, split.train, epochs=epochs, seq_len=training.seq_len,
                     pad_to_max=training.pad, batch_size=training.batch_size, grad_accum=training.grad_accum,
                     seed=seed, merge=True)
    return result.model, RecoveryInfo.model_validate(to_jsonable(result))


def real_base_flops_per_token(model: Any, seq_len: int) -> float:
    """``F`` of the honest isodose cost (:func:`prunelab.recover.isodose.base_forward_flops_per_token`)."""
    from prunelab.recover.isodose import base_forward_flops_per_token

    return float(base_forward_flops_per_token(model, seq_len))


def real_epoch_tokens(tokenizer: Any, training: TrainingSpec, seed: int) -> int:
    """Tokens one padding-free epoch processes: the real token count of the seed's Dolly training records
    (what the recovery stage's Trainer counts)."""
    from prunelab.data import dolly_split
    from prunelab.recover import tokenize_records

    split = dolly_split(n_train=training.samples, n_held_out=training.held_out, seed=seed)
    return sum(len(r["input_ids"]) for r in tokenize_records(tokenizer, split.train, seq_len=training.seq_len,
                                                               pad_to_max=False))


def real_evaluate(model: Any, tokenizer: Any, eval_spec: EvalSpec, tasks: Sequence[str]) -> StageEval:
    from prunelab.evaluate import evaluate

    by_limit: dict[int | None, list[str]] = {}
    for task in tasks:
        by_limit.setdefault(eval_spec.limit_for(task), []).append(task)
    scores: dict[str, float] = {}
    n: dict[str, int] = {}
    protocol: dict[str, str] = {}
    outcomes: dict[str, list[ItemOutcome]] = {}
    dependencies: dict[str, list[ItemOutcome]] = {}
    for limit, group in by_limit.items():
        report = evaluate(model, tokenizer, group, limit=limit, seed=eval_spec.seed, batch_size=eval_spec.batch_size,
                          protocol=eval_spec.protocol)
        for task, result in report.results.items():
            scores[task] = float(report.score(task))
            n[task] = int(result.n)
            if "protocol" in result.details:
                protocol[task] = str(result.details["protocol"])
            if result.outcomes:
                outcomes[task] = list(result.outcomes)
        for task, result in report.dependencies.items():  # composite's parts, when only composite was asked for
            if result.outcomes:
                dependencies.setdefault(task, list(result.outcomes))
    for task, items in dependencies.items():  # a part requested itself (possibly at its own limit) keeps its items
        outcomes.setdefault(task, items)
    return StageEval(with_composite(scores, composite_parts(eval_spec)), n, outcomes, protocol)


def real_relapse(model: Any, fraction: float) -> dict[str, Any]:
    from prunelab.atomic import to_jsonable
    from prunelab.stress import relapse

    return _small(to_jsonable(relapse(model, fraction=fraction)))


def real_chronic(model: Any, tokenizer: Any, mechanism: Mechanism, chronic_spec: ChronicSpec, training: TrainingSpec,
                 eval_spec: EvalSpec, seed: int, *, before: StageEval | None = None) -> StageChronic:
    """Chronic stress (``prunelab.stress.chronic``); cycle 0 is the treated model. Maintenance tunes use the
    ``held_out`` Dolly items (disjoint from the recovery set of the same seed).

    With ``before`` (this model's evaluation under the same ``eval_spec``, covering every chronic task), cycle 0
    takes its scores and per-item outcomes instead of running the same deterministic evaluation a second time
    (a third of the chronic stage's time in the main job)."""
    from prunelab.data import dolly_split
    from prunelab.stress import chronic
    from prunelab.stress.common import default_tune_fn

    split = dolly_split(n_train=training.samples, n_held_out=training.held_out, seed=seed)
    if not split.held_out:
        raise PrunelabError("training.held_out must be ≥ 1 for chronic stress (maintenance tunes need data)")
    tasks = list(chronic_spec.tasks)
    per_cycle: list[dict[str, list[ItemOutcome]]] = []  # chronic() evaluates cycle 0, 1, ... in order

    reusable = before is not None and all(t in before.scores and t in before.outcomes for t in tasks)

    def eval_fn(m: Any, tok: Any) -> dict[str, float]:
        if reusable and not per_cycle:  # cycle 0: the model evaluated just before, untouched since
            per_cycle.append({t: list(before.outcomes[t]) for t in tasks})
            return {t: before.scores[t] for t in tasks}
        result = real_evaluate(m, tok, eval_spec, tasks)
        per_cycle.append(result.outcomes)
        return result.scores

    report = chronic(model, tokenizer, mechanism, cycles=chronic_spec.cycles, step=chronic_spec.step,
                     maintenance_epochs=chronic_spec.maintenance_epochs, records=split.held_out,
                     seq_len=training.seq_len, tasks=tasks, seed=seed, eval_fn=eval_fn,
                     tune_fn=default_tune_fn(training.seq_len, seed, pad_to_max=training.pad))
    rows = [ChronicCycle(cycle=r.cycle, scores=dict(r.scores), sparsity=r.sparsity, loss=r.loss) for r in report.rows]
    if len(per_cycle) != len(report.rows):  # chronic() calls eval_fn exactly once per cycle row
        raise RuntimeError(f"chronic evaluated {len(per_cycle)} times for {len(report.rows)} cycles")
    return StageChronic(rows, {r.cycle: o for r, o in zip(report.rows, per_cycle, strict=True)})


def real_mechanisms() -> dict[str, Mechanism]:
    from prunelab.experiments.spec import builtin_mechanisms

    return builtin_mechanisms()


def _check(registry: Any, name: str, where: str) -> None:
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
            from prunelab.prune.criteria import check_criterion_use

            try:
                check_criterion_use(p.criterion, p.repair, p.repair_target, p.adaptive)
            except PrunelabError as exc:
                raise PrunelabError(f"pruning.{i}.criterion: {exc}") from None
            if p.adaptive:
                from prunelab.prune.adaptive import LOSS_SCALED_CRITERIA

                if p.criterion not in LOSS_SCALED_CRITERIA:  # Adapt-Pruner trades heads against neurons
                    raise PrunelabError(f"pruning.{i}.criterion: Adapt-Pruner adds head and neuron scores, so it needs "
                                        f"a loss-scaled criterion ({', '.join(sorted(LOSS_SCALED_CRITERIA))}), got "
                                        f"{p.criterion!r}")
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
    from prunelab.evaluate.generative_tasks import protocol_tasks, resolve_protocol

    tasks = set(spec.eval.tasks) | set(spec.stress.chronic.tasks if spec.stress.chronic is not None else ())
    if spec.eval.protocol != "chat" or not tasks & protocol_tasks():
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


class LibraryStages:
    """The library's stages (the ``real_*`` functions above); subclass to replace some of them."""

    def prepare(self, model: ModelSpec, pruning: PruningSpec, seed: int, cache_dir: Path) -> Prepared:
        return real_prepare(model, pruning, seed, cache_dir)

    def clone(self, model: Any) -> Any:
        return copy.deepcopy(model)

    def trainable_params(self, model: Any, mechanism: Mechanism) -> int:
        return real_trainable_params(model, mechanism)

    def recover(self, model: Any, tokenizer: Any, mechanism: Mechanism, training: TrainingSpec, epochs: int,
                seed: int) -> tuple[Any, RecoveryInfo]:
        return real_recover(model, tokenizer, mechanism, training, epochs, seed)

    def evaluate(self, model: Any, tokenizer: Any, eval_spec: EvalSpec, tasks: Sequence[str]) -> StageEval:
        return real_evaluate(model, tokenizer, eval_spec, tasks)

    def relapse(self, model: Any, fraction: float) -> dict[str, Any]:
        return real_relapse(model, fraction)

    def chronic(self, model: Any, tokenizer: Any, mechanism: Mechanism, chronic: ChronicSpec,
                training: TrainingSpec, eval_spec: EvalSpec, seed: int, *,
                before: StageEval | None = None) -> StageChronic:
        return real_chronic(model, tokenizer, mechanism, chronic, training, eval_spec, seed, before=before)

    def mechanisms(self) -> Mapping[str, Mechanism]:
        return real_mechanisms()

    def validate(self, spec: ExperimentSpec) -> None:
        real_validate(spec)

    def base_flops_per_token(self, model: Any, seq_len: int) -> float:
        return real_base_flops_per_token(model, seq_len)

    def epoch_tokens(self, tokenizer: Any, training: TrainingSpec, seed: int) -> int:
        return real_epoch_tokens(tokenizer, training, seed)


def real_stages() -> Stages:
    return LibraryStages()
