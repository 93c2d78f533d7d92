"""Run an experiment: expand the spec, skip stored runs, execute the rest, store each as it finishes.

The stage functions are pluggable (:class:`prunelab.experiments.stages.Stages`): the library's wrap
``prunelab.prune`` / ``recover`` / ``stress`` / ``evaluate``; ``$PRUNELAB_STAGES=module:factory`` swaps in
another set (the tests use fast fake stages to kill a real ``prunelab run`` subprocess mid-run). One run is
executed by :func:`prunelab.experiments.execute.execute_run`, here or on a Ray worker
(:mod:`prunelab.experiments.ray_dispatch`).
"""

from __future__ import annotations

import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.experiments.execute import execute_run
from prunelab.experiments.queue import ClaimQueue, lease_ttl_from_env
from prunelab.experiments.spec import ExperimentSpec, Run, expand, load_spec
from prunelab.experiments.stages import Prepared, Stages, get_stages
from prunelab.runs.result import RunMeta, RunRecord
from prunelab.runs.store import Store


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


class PreparedCache:
    """The most recent pruned model in memory (runs are ordered so each model × pruning × seed is pruned once)."""

    def __init__(self, stages: Stages, cache_dir: Path, size: int = 1) -> None:
        self.stages, self.cache_dir, self.size = stages, cache_dir, size
        self._items: OrderedDict[str, Prepared] = OrderedDict()

    def get(self, run: Run) -> Prepared:
        key = run.prune_key
        if key in self._items:
            self._items.move_to_end(key)
            prepared = self._items[key]
            return Prepared(prepared.model, prepared.tokenizer, prepared.info, {})  # timings charged once
        while len(self._items) >= self.size:
            self._items.popitem(last=False)
        config = run.config
        prepared = self.stages.prepare(config.model, config.pruning, config.seed, self.cache_dir / key)
        self._items[key] = prepared
        return prepared


# --------------------------------------------------------------------------------------------- driver
def plan(spec_path: str | Path) -> tuple[ExperimentSpec, list[Run]]:
    """Load + validate the spec and expand it (no work, no output)."""
    spec = load_spec(spec_path)
    stages = get_stages()
    variants = spec.variants()
    for i, variant in enumerate(variants):
        where = f"{spec_path}: parts.{i} ({spec.parts[i].name})" if spec.parts else f"{spec_path}"
        try:
            stages.validate(variant)
        except PrunelabError as exc:
            raise PrunelabError(f"{where}: {exc}") from None
    runs = expand(spec, stages.mechanisms())
    return spec, runs


def _meta(spec: ExperimentSpec, run: Run) -> RunMeta:
    return RunMeta(description=run.config.model.description, note=spec.note,
                   models_order=tuple(m.name for m in spec.models))


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
                        result = execute_run(run.config, stages, prepared, status, started)
                    except Exception as exc:  # noqa: BLE001 - one run's failure must not lose the others
                        msg = f"{run.label}: {type(exc).__name__}: {exc}"
                        store.add_failure(run.hash, run.label, traceback.format_exc())
                        queue.release(run, failed=True)
                        failures.append(msg)
                        err_console.print(f"[red]run failed[/] {msg}", highlight=False)
                        if fail_fast or isinstance(exc, PrunelabError):
                            raise
                        continue
                    store.add_run(RunRecord(run.hash, run.config, result), spec.name, run.index, _meta(spec, run))
                    completed += 1
                    progress.update(task, advance=1, status=f"{run.label}: stored")
                    spent = ", ".join(f"{k} {v:.0f}s" for k, v in result.timings.items() if v >= 0.5)
                    progress.console.print(f"[green]stored[/] {run.label} ({time.time() - started:.0f}s: {spent})",
                                           highlight=False)
        failures += queue.failed_elsewhere
        return RunSummary(experiment=spec.name, db=str(db), total=len(runs), already_stored=len(done),
                          completed=completed, failed=len(failures), seconds=time.perf_counter() - t0,
                          failures=failures, work_dir=str(work), by_others=queue.by_others)
    finally:
        store.close()
