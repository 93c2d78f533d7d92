"""Run an experiment: expand the spec, skip stored runs, execute the rest, store each as it finishes.

The stage functions are pluggable (:class:`prunelab.experiments.stages.Stages`): the real ones wrap
``prunelab.prune`` / ``recover`` / ``stress`` / ``evaluate``; ``$PRUNELAB_STAGES=module:factory`` swaps in
another set (the tests use fast fake stages to kill a real ``prunelab run`` subprocess mid-run).

Per treated run: prune (cached per model × pruning × seed) → isodose epochs (the reference run's cost under the
spec's formula, study ``6·P·L·N·E`` or honest ``T·(2F + 6P)``, solved by
:func:`prunelab.recover.isodose.solve_isodose`) → LoRA recovery (merged) → evaluate → acute relapse on a copy
→ evaluate → chronic cycles (cycle 0 = treated model).
"""

from __future__ import annotations

import importlib
import os
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prunelab.errors import PrunelabError
from prunelab.experiments.spec import ExperimentSpec, Run, expand, load_spec
from prunelab.experiments.stages import Prepared, Stages, split_chronic, split_eval
from prunelab.experiments.store import (EVAL_PHASE, RELAPSE_PHASE, Heartbeat, RunOutcomes, RunRecord, Store,
                                        chronic_phase, new_owner, package_versions)

STAGES_ENV = "PRUNELAB_STAGES"
#: seconds a run's lease lasts without a heartbeat (``$PRUNELAB_LEASE_TTL`` overrides; short in tests)
LEASE_TTL_ENV, DEFAULT_LEASE_TTL = "PRUNELAB_LEASE_TTL", 60.0


def get_stages() -> Stages:
    """The real stages, or ``$PRUNELAB_STAGES`` (``package.module:factory``) when set."""
    target = os.environ.get(STAGES_ENV)
    if not target:
        from prunelab.experiments.stages import real_stages

        return real_stages()
    mod, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(mod), attr or "stages")
    except (ImportError, AttributeError) as exc:
        raise PrunelabError(f"${STAGES_ENV}={target!r} cannot be imported ({exc})") from None
    return factory()


@dataclass
class RunSummary:
    """What ``prunelab run`` did."""

    experiment: str
    db: str
    total: int
    already_stored: int
    completed: int
    failed: int
    seconds: float
    failures: list[str] = field(default_factory=list)
    work_dir: str = ""
    #: pending runs that another process sharing the store finished while this one ran
    by_others: int = 0


# ------------------------------------------------------------------------------------------ one run
def solve_dose(model: Any, tokenizer: Any, stages: Stages, dose: dict, tr: dict, seed: int,
               trainable: int) -> dict[str, Any]:
    """Epochs of one treated run: ``dose["epochs"]``, or solved from the isodose reference by
    :func:`prunelab.recover.isodose.solve_isodose` under ``dose["formula"]`` (``study`` when absent).

    Returns ``{"epochs", "budget_flops", "exact_epochs", "isodose_formula"}`` (budget and exact epochs None
    for fixed epochs). ``honest`` needs the base's forward FLOPs per token (``stages.base_flops_per_token``)
    and, without padding, the real tokens per epoch (``stages.epoch_tokens``).
    """
    import warnings

    from prunelab.recover.isodose import solve_isodose

    if "reference" not in dose:
        return {"epochs": int(dose["epochs"]), "budget_flops": None, "exact_epochs": None, "isodose_formula": None}
    ref = dose["reference"]
    formula = dose.get("formula", "study")  # configs stored before the formula existed used the study's
    base_f = tokens = None
    if formula == "honest":
        base_f = stages.base_flops_per_token(model, tr["seq_len"])
        tokens = None if tr["pad"] else stages.epoch_tokens(tokenizer, tr, seed)
    with warnings.catch_warnings():  # a clamp to 1 epoch is visible in the stored exact_epochs vs epochs
        warnings.simplefilter("ignore")
        sol = solve_isodose(formula, stages.trainable_params(model, ref["mechanism"]), ref["epochs"], trainable,
                            tr["seq_len"], tr["samples"], base_flops_per_token=base_f, tokens_per_epoch=tokens)
    return {"epochs": sol.epochs, "budget_flops": sol.budget, "exact_epochs": sol.exact_epochs,
            "isodose_formula": formula}


def train_flops(trainable: int, seq_len: int, n_samples: int, epochs: float) -> float:
    """The study's isodose cost ``6 × trainable_params × seq_len × n_samples × epochs``
    (:func:`prunelab.recover.isodose.train_flops`)."""
    from prunelab.recover.isodose import train_flops as _flops

    return float(_flops(trainable, seq_len, n_samples, epochs))


def execute_run(run_config: dict[str, Any], stages: Stages, prepared: Prepared,
                status: Callable[[str], None] = lambda s: None,
                outcomes: RunOutcomes | None = None) -> tuple[dict[str, Any], float | None, dict[str, float]]:
    """Execute one run on a prepared (pruned) model; returns ``(metrics, flops, timings)``. Nothing is stored here.

    ``outcomes``, when given, is filled with the run's per-item outcomes ``{phase: {task: [ItemOutcome]}}``
    (phases ``eval``, ``relapse``, ``chronic:<k>``) for :meth:`Store.add_run`; they stay out of ``metrics``.
    """
    cfg = run_config
    timings: dict[str, float] = dict(prepared.timings)
    metrics: dict[str, Any] = {"model": prepared.info}
    ev = cfg["eval"]
    sink: RunOutcomes = outcomes if outcomes is not None else {}

    def evaluated(phase: str, result: Any) -> dict[str, Any]:
        summary, per_task = split_eval(result)
        if per_task:
            sink[phase] = per_task
        return summary

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        status(name)
        t0 = time.perf_counter()
        out = fn()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        return out

    model = timed("copy", lambda: stages.clone(prepared.model))
    if cfg["kind"] == "baseline":
        metrics["eval"] = evaluated(EVAL_PHASE, timed("evaluate", lambda: stages.evaluate(model, prepared.tokenizer,
                                                                                           ev, ev["tasks"])))
        return metrics, None, timings

    mech, tr = cfg["mechanism"], cfg["training"]
    p = stages.trainable_params(model, mech)
    dose = solve_dose(model, prepared.tokenizer, stages, cfg["dose"], tr, cfg["seed"], p)
    epochs = dose["epochs"]
    flops = train_flops(p, tr["seq_len"], tr["samples"], epochs)
    model, rec_info = timed("recover", lambda: stages.recover(model, prepared.tokenizer, mech, tr, epochs, cfg["seed"]))
    # rec_info carries the recovery stage's own figures (incl. honest_flops = T·(2F + 6P), frozen base included);
    # budget_flops is in the units of isodose_formula (study: 6·P·L·N·E; honest: T·(2F + 6P))
    metrics["training"] = {**dose, "trainable_params": p, "padded": tr["pad"], **rec_info, "flops": flops}
    metrics["eval"] = evaluated(EVAL_PHASE, timed("evaluate", lambda: stages.evaluate(model, prepared.tokenizer,
                                                                                       ev, ev["tasks"])))
    st = cfg.get("stress") or {}
    if st.get("relapse"):
        stressed = timed("copy", lambda: stages.clone(model))
        info = timed("relapse", lambda: stages.relapse(stressed, st["relapse"]["fraction"]))
        scores = evaluated(RELAPSE_PHASE, timed("relapse-evaluate",
                                                lambda: stages.evaluate(stressed, prepared.tokenizer, ev, ev["tasks"])))
        metrics["relapse"] = {"eval": scores, **info}
        del stressed
    if st.get("chronic"):
        ch = st["chronic"]
        cycles, per_cycle = split_chronic(timed("chronic", lambda: stages.chronic(model, prepared.tokenizer, mech, ch,
                                                                                   tr, ev, cfg["seed"])))
        for cycle, per_task in per_cycle.items():
            if per_task:
                sink[chronic_phase(cycle)] = per_task
        metrics["chronic"] = {"cycles": cycles, "step": ch["step"], "maintenance_epochs": ch["maintenance_epochs"]}
    return metrics, flops, timings


def run_record(run: Run, metrics: dict[str, Any], flops: float | None, timings: dict[str, float],
               started: float, outcomes: RunOutcomes | None = None) -> RunRecord:
    cfg = run.config
    return RunRecord(
        hash=run.hash, kind=cfg["kind"], model=cfg["model"]["name"], pruning=cfg["pruning"]["name"],
        mechanism=cfg["mechanism"]["name"] if cfg["kind"] == "treated" else None, seed=cfg["seed"],
        config=cfg, metrics=metrics, flops=flops, timings=timings, versions=package_versions(),
        started_at=started, finished_at=time.time(), outcomes=outcomes or {})


class PreparedCache:
    """The most recent pruned model in memory (runs are ordered so each model × pruning × seed is pruned once)."""

    def __init__(self, stages: Stages, cache_dir: Path, size: int = 1) -> None:
        self.stages, self.cache_dir, self.size = stages, cache_dir, size
        self._items: OrderedDict[str, Prepared] = OrderedDict()

    def get(self, run: Run) -> Prepared:
        key = run.group[-1]
        if key in self._items:
            self._items.move_to_end(key)
            prepared = self._items[key]
            return Prepared(prepared.model, prepared.tokenizer, prepared.info, {})  # timings charged once
        while len(self._items) >= self.size:
            self._items.popitem(last=False)
        cfg = run.config
        prepared = self.stages.prepare(cfg["model"], cfg["pruning"], cfg["seed"], self.cache_dir / key)
        self._items[key] = prepared
        return prepared


class ClaimQueue:
    """This invocation's pending runs, handed out one leased run at a time (:meth:`Store.claim_next`).

    Several drivers may share one store (two ``prunelab run --db SAME``, local or ``--ray``): each run is
    leased before it executes, the lease is renewed by a heartbeat thread while this process lives, and a
    run leased by another live process waits here until that process stores it (then it only joins this
    experiment) or its lease lapses (then it is leased here). Use as a context manager: leaving it stops the
    heartbeat and drops every lease still held, so an interrupted run is free at once for the next driver.
    """

    def __init__(self, store: Store, spec: ExperimentSpec, runs: list[Run], ttl: float,
                 meta: Callable[[ExperimentSpec, Run], dict[str, Any]]) -> None:
        self.store, self.spec, self.waiting, self.ttl, self.meta = store, spec, list(runs), ttl, meta
        self.owner, self.since = new_owner(), time.time()
        self.poll = min(1.0, ttl / 4)
        self.by_others = 0
        self.failed_elsewhere: list[str] = []
        self.on_others: Callable[[int], None] = lambda n: None
        self._heartbeat = Heartbeat(store.path, self.owner, ttl)

    def __enter__(self) -> "ClaimQueue":
        self._heartbeat.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._heartbeat.__exit__(*exc)
        self.store.release_claims(self.owner)

    @property
    def done(self) -> bool:
        return not self.waiting

    def take(self) -> Run | None:
        """Lease the next free run, or None when every remaining one is leased elsewhere (poll again later)."""
        if not self.waiting:
            return None
        res = self.store.claim_next([r.hash for r in self.waiting], self.owner, self.ttl, self.since)
        others = [r for r in self.waiting if r.hash in res.stored]
        if others:
            self.store.add_memberships(self.spec.name, [(r.hash, r.index, self.meta(self.spec, r)) for r in others])
            self.by_others += len(others)
            self.on_others(len(others))
        self.failed_elsewhere += [f"{r.label}: failed in another process sharing the store (see its failures table)"
                                  for r in self.waiting if r.hash in res.failed]
        claimed = next((r for r in self.waiting if r.hash == res.claimed), None)
        gone = res.stored | res.failed | {res.claimed}
        self.waiting = [r for r in self.waiting if r.hash not in gone]
        return claimed

    def release(self, run: Run, failed: bool = False) -> None:
        self.store.release_claim(run.hash, self.owner, failed=failed)

    def iterate(self, on_wait: Callable[[int], None] = lambda n: None) -> Iterator[Run]:
        """Yield leased runs until none is left, sleeping while the rest are leased elsewhere."""
        while not self.done:
            run = self.take()
            if run is None:
                if self.waiting:
                    on_wait(len(self.waiting))
                    time.sleep(self.poll)
                continue
            yield run


def lease_ttl_from_env() -> float:
    raw = os.environ.get(LEASE_TTL_ENV)
    if raw is None:
        return DEFAULT_LEASE_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not ttl > 0:
        raise PrunelabError(f"${LEASE_TTL_ENV}={raw!r} must be a positive number of seconds")
    return ttl


# --------------------------------------------------------------------------------------------- driver
def plan(spec_path: str | Path) -> tuple[ExperimentSpec, list[Run]]:
    """Load + validate the spec and expand it (no work, no output)."""
    spec = load_spec(spec_path)
    stages = get_stages()
    try:
        stages.validate(spec)
    except PrunelabError as exc:
        raise PrunelabError(f"{spec_path}: {exc}") from None
    runs = expand(spec, stages.mechanisms())
    return spec, runs


def _meta(spec: ExperimentSpec, run: Run) -> dict[str, Any]:
    desc = {m.name: m.description for m in spec.models}
    return {"description": desc.get(run.config["model"]["name"], ""), "note": spec.note,
            "models_order": [m.name for m in spec.models]}


def run_experiment(spec_path: str | Path, db: str | Path, work_dir: str | Path | None = None,
                   ray_address: str | None = None, max_runs: int | None = None,
                   fail_fast: bool = False, lease_ttl: float | None = None) -> RunSummary:
    """Execute every run of the experiment not yet in ``db``; each finished run is committed at once.

    ``work_dir`` holds cached pruned checkpoints (default: ``<db>.work/``). ``ray_address`` dispatches runs to
    a Ray cluster (one task per run) while this process writes the store. ``max_runs`` stops after that many
    new runs (useful to split a long study). A failing run is recorded in the ``failures`` table and the
    others continue (``fail_fast`` stops instead); the summary counts failures.

    Other drivers may run on the same ``db`` at once: every run is leased before it executes
    (:class:`ClaimQueue`; ``lease_ttl`` seconds, default ``$PRUNELAB_LEASE_TTL`` or 60), so each executes once
    in total and this call returns when all of its runs are stored, by it or by the others.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from prunelab.console import err_console

    t0 = time.perf_counter()
    ttl = lease_ttl if lease_ttl is not None else lease_ttl_from_env()
    spec, runs = plan(spec_path)
    db = Path(db)
    work = Path(work_dir) if work_dir else db.with_name(db.name + ".work")
    store = Store(db)
    try:
        stored = store.stored_hashes()
        done = [r for r in runs if r.hash in stored]
        store.add_memberships(spec.name, [(r.hash, r.index, _meta(spec, r)) for r in done])
        pending = [r for r in runs if r.hash not in stored]
        # expansion order already keeps runs sharing a pruned model together, so each is pruned once
        if max_runs is not None:
            pending = pending[:max_runs]
        failures: list[str] = []
        completed = 0
        queue = ClaimQueue(store, spec, pending, ttl, _meta)
        if ray_address:
            from prunelab.experiments.ray_dispatch import run_on_ray

            with queue:
                completed, failures = run_on_ray(ray_address, spec, queue, store, work, _meta, fail_fast)
        else:
            stages = get_stages()
            cache = PreparedCache(stages, work / "pruned")
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=err_console,
                          transient=False) as progress, queue:
                task = progress.add_task(spec.name, total=len(runs), completed=len(done), status="")
                queue.on_others = lambda n: progress.update(task, advance=n)

                def waiting(n: int) -> None:
                    progress.update(task, status=f"waiting for {n} run(s) leased by another process")

                for run in queue.iterate(waiting):
                    def status(stage: str, run: Run = run) -> None:
                        progress.update(task, status=f"{run.label}: {stage}")

                    started = time.time()
                    try:
                        status("prepare")
                        prepared = cache.get(run)
                        outcomes: RunOutcomes = {}
                        metrics, flops, timings = execute_run(run.config, stages, prepared, status, outcomes)
                    except Exception as exc:  # noqa: BLE001 - one run's failure must not lose the others
                        msg = f"{run.label}: {type(exc).__name__}: {exc}"
                        store.add_failure(run.hash, run.label, traceback.format_exc())
                        queue.release(run, failed=True)
                        failures.append(msg)
                        err_console.print(f"[red]run failed[/] {msg}", highlight=False)
                        if fail_fast or isinstance(exc, PrunelabError):
                            raise
                        continue
                    store.add_run(run_record(run, metrics, flops, timings, started, outcomes), spec.name, run.index,
                                  _meta(spec, run))
                    completed += 1
                    progress.update(task, advance=1, status=f"{run.label}: stored")
                    spent = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items() if v >= 0.5)
                    progress.console.print(f"[green]stored[/] {run.label} ({time.time() - started:.0f}s: {spent})",
                                           highlight=False)
        failures += queue.failed_elsewhere
        return RunSummary(experiment=spec.name, db=str(db), total=len(runs), already_stored=len(done),
                          completed=completed, failed=len(failures), seconds=time.perf_counter() - t0,
                          failures=failures, work_dir=str(work), by_others=queue.by_others)
    finally:
        store.close()
