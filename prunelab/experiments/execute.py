"""Execute one run: the single code path both the local runner and a Ray worker call.

Per treated run: prepared (pruned, cached per model × pruning × seed) model → copy → isodose epochs (the reference
run's cost under the spec's formula, study ``6·P·L·N·E`` or honest ``T·(2F + 6P)``, solved by
:func:`prunelab.recover.isodose.solve_isodose`) → LoRA recovery (merged) → evaluate → acute relapse on a copy →
evaluate → chronic cycles (cycle 0 = the treated model). A baseline is only evaluated. Nothing is stored here:
the caller (the driver process) writes the :class:`~prunelab.runs.result.RunResult`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prunelab.experiments.stages import Prepared, Stages
from prunelab.recover.isodose import solve_isodose, train_flops
from prunelab.runs.config import Dose, RunConfig, TrainingSpec
from prunelab.runs.result import (EVAL_PHASE, RELAPSE_PHASE, ChronicResult, RelapseResult, RunMetrics, RunOutcomes,
                                  RunResult, TrainingInfo, chronic_phase)
from prunelab.runs.store import package_versions

Status = Callable[[str], None]
_T = TypeVar("_T")


def _quiet(stage: str) -> None:
    """A status callback that says nothing (Ray workers have no progress bar)."""


def solve_dose(model: Any, tokenizer: Any, stages: Stages, dose: Dose, training: TrainingSpec, seed: int,
               trainable: int) -> TrainingInfo:
    """The epochs of one treated run and the budget behind them (recovery figures not yet filled in).

    Fixed epochs are taken as given; an isodose dose is solved by :func:`prunelab.recover.isodose.solve_isodose`
    under ``dose.formula`` (``study`` for configs stored before the formula existed). ``honest`` needs the
    base's forward FLOPs per token (``stages.base_flops_per_token``) and, without padding, the real tokens per
    epoch (``stages.epoch_tokens``).
    """
    if not dose.is_isodose:
        epochs = int(dose.epochs)
        return TrainingInfo(epochs=epochs, trainable_params=trainable, padded=training.pad,
                            flops=train_flops(trainable, training.seq_len, training.samples, epochs))
    formula = dose.formula or "study"
    base_flops = tokens = None
    if formula == "honest":
        base_flops = stages.base_flops_per_token(model, training.seq_len)
        tokens = None if training.pad else stages.epoch_tokens(tokenizer, training, seed)
    with warnings.catch_warnings():  # a clamp to 1 epoch is visible in the stored exact_epochs vs epochs
        warnings.simplefilter("ignore")
        solution = solve_isodose(formula, stages.trainable_params(model, dose.reference), dose.reference_epochs,
                                 trainable, training.seq_len, training.samples, base_flops_per_token=base_flops,
                                 tokens_per_epoch=tokens)
    return TrainingInfo(epochs=solution.epochs, budget_flops=solution.budget, exact_epochs=solution.exact_epochs,
                        isodose_formula=formula, trainable_params=trainable, padded=training.pad,
                        flops=solution.flops)


def execute_run(config: RunConfig, stages: Stages, prepared: Prepared, status: Status = _quiet,
                started_at: float | None = None) -> RunResult:
    """Execute one run on a prepared (pruned) model. ``started_at`` (default: now) is when its preparation began.

    The result's ``outcomes`` hold the per-item outcomes ``{phase: {task: [ItemOutcome]}}`` of every evaluation
    (phases ``eval``, ``relapse``, ``chronic:<k>``); they stay out of its metrics.
    """
    started = time.time() if started_at is None else started_at
    timings: dict[str, float] = dict(prepared.timings)
    outcomes: RunOutcomes = {}
    eval_spec, tokenizer = config.eval, prepared.tokenizer

    def timed(name: str, stage: Callable[[], _T]) -> _T:
        status(name)
        t0 = time.perf_counter()
        out = stage()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        return out

    def evaluated(phase: str, model: Any, name: str):
        """The stage's ``StageEval`` (its per-item outcomes recorded under ``phase``)."""
        result = timed(name, lambda: stages.evaluate(model, tokenizer, eval_spec, eval_spec.tasks))
        if result.outcomes:
            outcomes[phase] = result.outcomes
        return result

    model = timed("copy", lambda: stages.clone(prepared.model))
    treatment = config.treatment
    if treatment is None:
        metrics = RunMetrics(model=prepared.info, eval=evaluated(EVAL_PHASE, model, "evaluate").summary())
        return RunResult(metrics, None, timings, package_versions(), started, time.time(), outcomes)

    mechanism, training = treatment.mechanism, treatment.training
    trainable = stages.trainable_params(model, mechanism)
    dose = solve_dose(model, tokenizer, stages, treatment.dose, training, config.seed, trainable)
    model, recovery = timed("recover", lambda: stages.recover(model, tokenizer, mechanism, training, dose.epochs,
                                                              config.seed))
    # recovery carries the stage's own figures (incl. honest_flops = T·(2F + 6P), frozen base included)
    training_info = dose.model_copy(update={"recovery": recovery})
    treated = evaluated(EVAL_PHASE, model, "evaluate")
    relapse = chronic = None
    stress = treatment.stress
    if stress.relapse is not None:
        stressed = timed("copy", lambda: stages.clone(model))
        report = timed("relapse", lambda: stages.relapse(stressed, stress.relapse.fraction))
        relapse = RelapseResult(eval=evaluated(RELAPSE_PHASE, stressed, "relapse-evaluate").summary(), report=report)
        del stressed
    if stress.chronic is not None:
        spec = stress.chronic
        # `model` is the object the eval phase scored (relapse worked on a clone), so cycle 0 may reuse that
        result = timed("chronic", lambda: stages.chronic(model, tokenizer, mechanism, spec, training, eval_spec,
                                                         config.seed, before=treated))
        for cycle, per_task in result.outcomes.items():
            if per_task:
                outcomes[chronic_phase(cycle)] = per_task
        chronic = ChronicResult(cycles=tuple(result.cycles), step=spec.step,
                                maintenance_epochs=spec.maintenance_epochs)
    metrics = RunMetrics(model=prepared.info, eval=treated.summary(), training=training_info, relapse=relapse,
                         chronic=chronic)
    return RunResult(metrics, training_info.flops, timings, package_versions(), started, time.time(), outcomes)


def prepare_and_execute(config: RunConfig, stages: Stages, cache_dir: Path, status: Status = _quiet) -> RunResult:
    """Prepare the run's pruned model in ``cache_dir`` (no in-memory cache) and execute the run: a Ray task."""
    started = time.time()
    status("prepare")
    prepared = stages.prepare(config.model, config.pruning, config.seed, cache_dir)
    return execute_run(config, stages, prepared, status, started)
