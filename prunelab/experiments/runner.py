"""Run an experiment: expand the spec, skip stored runs, execute the rest, store each as it finishes.

The stage functions are pluggable (:class:`prunelab.experiments.stages.Stages`): the real ones wrap
``prunelab.prune`` / ``recover`` / ``stress`` / ``evaluate``; ``$PRUNELAB_STAGES=module:factory`` swaps in
another set (the tests use fast fake stages to kill a real ``prunelab run`` subprocess mid-run).

Per treated run (DESIGN §5–§8): prune (cached per model × pruning × seed) → isodose epochs
``E = max(1, round(P_ref·E_ref / P))`` (same budget ``6·P·L·N·E`` as the reference) → LoRA recovery (merged)
→ evaluate → acute relapse on a copy → evaluate → chronic cycles (cycle 0 = treated model).
"""

from __future__ import annotations

import importlib
import os
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prunelab.errors import PrunelabError
from prunelab.experiments.spec import ExperimentSpec, Run, expand, load_spec
from prunelab.experiments.stages import Prepared, Stages
from prunelab.experiments.store import RunRecord, Store, package_versions

STAGES_ENV = "PRUNELAB_STAGES"


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


# ------------------------------------------------------------------------------------------ one run
def isodose_epochs(budget: float, trainable: int, seq_len: int, n_samples: int) -> int:
    """``E = max(1, round(budget / (6·P·L·N)))`` (DESIGN §5; ``prunelab.recover.isodose``)."""
    import warnings

    from prunelab.recover.isodose import isodose_epochs as _epochs

    with warnings.catch_warnings():  # a clamp to 1 epoch is visible in the stored flops vs budget_flops
        warnings.simplefilter("ignore")
        return int(_epochs(budget, trainable, seq_len, n_samples))


def train_flops(trainable: int, seq_len: int, n_samples: int, epochs: float) -> float:
    """The study's isodose cost ``6 × trainable_params × seq_len × n_samples × epochs`` (DESIGN §5)."""
    from prunelab.recover.isodose import train_flops as _flops

    return float(_flops(trainable, seq_len, n_samples, epochs))


def execute_run(run_config: dict[str, Any], stages: Stages, prepared: Prepared,
                status: Callable[[str], None] = lambda s: None) -> tuple[dict[str, Any], float | None, dict[str, float]]:
    """Execute one run on a prepared (pruned) model; returns ``(metrics, flops, timings)``. Nothing is stored here."""
    cfg = run_config
    timings: dict[str, float] = dict(prepared.timings)
    metrics: dict[str, Any] = {"model": prepared.info}
    ev = cfg["eval"]

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        status(name)
        t0 = time.perf_counter()
        out = fn()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        return out

    model = timed("copy", lambda: stages.clone(prepared.model))
    if cfg["kind"] == "baseline":
        metrics["eval"] = timed("evaluate", lambda: stages.evaluate(model, prepared.tokenizer, ev, ev["tasks"]))
        return metrics, None, timings

    mech, tr = cfg["mechanism"], cfg["training"]
    p = stages.trainable_params(model, mech)
    dose = cfg["dose"]
    if "reference" in dose:
        ref = dose["reference"]
        p_ref = stages.trainable_params(model, ref["mechanism"])
        budget = train_flops(p_ref, tr["seq_len"], tr["samples"], ref["epochs"])
        epochs = isodose_epochs(budget, p, tr["seq_len"], tr["samples"])
    else:
        epochs, budget = int(dose["epochs"]), None
    flops = train_flops(p, tr["seq_len"], tr["samples"], epochs)
    model, rec_info = timed("recover", lambda: stages.recover(model, prepared.tokenizer, mech, tr, epochs, cfg["seed"]))
    # rec_info carries the recovery stage's own figures (incl. honest_flops = T·(2F + 6P), frozen base included)
    metrics["training"] = {"epochs": epochs, "trainable_params": p, "budget_flops": budget,
                           "padded": tr["pad"], **rec_info, "flops": flops}
    metrics["eval"] = timed("evaluate", lambda: stages.evaluate(model, prepared.tokenizer, ev, ev["tasks"]))
    st = cfg.get("stress") or {}
    if st.get("relapse"):
        stressed = timed("copy", lambda: stages.clone(model))
        info = timed("relapse", lambda: stages.relapse(stressed, st["relapse"]["fraction"]))
        scores = timed("relapse-evaluate", lambda: stages.evaluate(stressed, prepared.tokenizer, ev, ev["tasks"]))
        metrics["relapse"] = {"eval": scores, **info}
        del stressed
    if st.get("chronic"):
        ch = st["chronic"]
        cycles = timed("chronic", lambda: stages.chronic(model, prepared.tokenizer, mech, ch, tr, ev, cfg["seed"]))
        metrics["chronic"] = {"cycles": cycles, "step": ch["step"], "maintenance_epochs": ch["maintenance_epochs"]}
    return metrics, flops, timings


def run_record(run: Run, metrics: dict[str, Any], flops: float | None, timings: dict[str, float],
               started: float) -> RunRecord:
    cfg = run.config
    return RunRecord(
        hash=run.hash, kind=cfg["kind"], model=cfg["model"]["name"], pruning=cfg["pruning"]["name"],
        mechanism=cfg["mechanism"]["name"] if cfg["kind"] == "treated" else None, seed=cfg["seed"],
        config=cfg, metrics=metrics, flops=flops, timings=timings, versions=package_versions(),
        started_at=started, finished_at=time.time())


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
                   fail_fast: bool = False) -> RunSummary:
    """Execute every run of the experiment not yet in ``db``; each finished run is committed at once.

    ``work_dir`` holds cached pruned checkpoints (default: ``<db>.work/``). ``ray_address`` dispatches runs to
    a Ray cluster (one task per run) while this process writes the store. ``max_runs`` stops after that many
    new runs (useful to split a long study). A failing run is recorded in the ``failures`` table and the
    others continue (``fail_fast`` stops instead); the summary counts failures.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from prunelab.cli._common import err_console

    t0 = time.perf_counter()
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
        if ray_address:
            from prunelab.experiments.ray_dispatch import run_on_ray

            completed, failures = run_on_ray(ray_address, spec, pending, store, work, _meta, fail_fast)
        else:
            stages = get_stages()
            cache = PreparedCache(stages, work / "pruned")
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=err_console,
                          transient=False) as progress:
                task = progress.add_task(spec.name, total=len(runs), completed=len(done), status="")
                for run in pending:
                    def status(stage: str, run: Run = run) -> None:
                        progress.update(task, status=f"{run.label}: {stage}")

                    started = time.time()
                    try:
                        status("prepare")
                        prepared = cache.get(run)
                        metrics, flops, timings = execute_run(run.config, stages, prepared, status)
                    except Exception as exc:  # noqa: BLE001 - one run's failure must not lose the others
                        msg = f"{run.label}: {type(exc).__name__}: {exc}"
                        store.add_failure(run.hash, run.label, traceback.format_exc())
                        failures.append(msg)
                        err_console.print(f"[red]run failed[/] {msg}", highlight=False)
                        if fail_fast or isinstance(exc, PrunelabError):
                            raise
                        continue
                    store.add_run(run_record(run, metrics, flops, timings, started), spec.name, run.index,
                                  _meta(spec, run))
                    completed += 1
                    progress.update(task, advance=1, status=f"{run.label}: stored")
                    spent = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items() if v >= 0.5)
                    progress.console.print(f"[green]stored[/] {run.label} ({time.time() - started:.0f}s: {spent})",
                                           highlight=False)
        return RunSummary(experiment=spec.name, db=str(db), total=len(runs), already_stored=len(done),
                          completed=completed, failed=len(failures), seconds=time.perf_counter() - t0,
                          failures=failures, work_dir=str(work))
    finally:
        store.close()
