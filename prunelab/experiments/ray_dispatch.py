"""Dispatch independent runs to a Ray cluster: one Ray task per run; the driver alone writes the store.

Each task loads/prunes its own model (in the worker's ``work_dir``, so a shared filesystem lets workers
reuse pruned checkpoints), executes the run with the worker's stages and returns ``(metrics, flops,
timings, versions)``; the driver commits each result as it arrives (``ray.wait``), so killing the driver
loses only unfinished runs, exactly like local execution. GPUs/CPUs per task come from the spec's
``resources``. Ray is optional (``pip install 'prunelab[ray]'``) and imported only here.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable

from prunelab.errors import PrunelabError


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PrunelabError("--ray needs the optional 'ray' package: pip install 'prunelab[ray]' "
                            "(or run without --ray to execute locally)") from None
    return ray


def remote_run(run_config: dict[str, Any], prepare_dir: str) -> dict[str, Any]:
    """Body of one Ray task (a plain function, so it is testable without Ray)."""
    from prunelab.experiments.runner import execute_run, get_stages
    from prunelab.experiments.store import package_versions

    stages = get_stages()
    started = time.time()
    try:
        prepared = stages.prepare(run_config["model"], run_config["pruning"], run_config["seed"], Path(prepare_dir))
        metrics, flops, timings = execute_run(run_config, stages, prepared)
    except Exception as exc:  # noqa: BLE001 - reported back to the driver, which records the failure
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    return {"ok": True, "metrics": metrics, "flops": flops, "timings": timings, "versions": package_versions(),
            "started": started, "finished": time.time()}


def run_on_ray(address: str, spec, pending: list, store, work: Path, meta: Callable, fail_fast: bool = False,
               ray_module=None) -> tuple[int, list[str]]:
    """Submit every pending run, store results as they complete; returns ``(completed, failures)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from prunelab.cli._common import err_console
    from prunelab.experiments.store import RunRecord

    ray = ray_module or _import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - connection problems become one clear line
            raise PrunelabError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    res = spec.resources
    task = ray.remote(num_gpus=res.gpus, num_cpus=res.cpus, max_retries=0)(remote_run)
    refs = {}
    for run in pending:
        refs[task.remote(run.config, str(work / "pruned" / run.group[-1]))] = run
    completed, failures = 0, []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console) as progress:
        bar = progress.add_task(f"{spec.name} (ray)", total=len(pending))
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for ref in ready:
                run = refs[ref]
                out = ray.get(ref)
                if not out["ok"]:
                    store.add_failure(run.hash, run.label, out["traceback"])
                    failures.append(f"{run.label}: {out['error']}")
                    if fail_fast:
                        for r in waiting:
                            ray.cancel(r)
                        return completed, failures
                    continue
                cfg = run.config
                store.add_run(RunRecord(
                    hash=run.hash, kind=cfg["kind"], model=cfg["model"]["name"], pruning=cfg["pruning"]["name"],
                    mechanism=cfg["mechanism"]["name"] if cfg["kind"] == "treated" else None, seed=cfg["seed"],
                    config=cfg, metrics=out["metrics"], flops=out["flops"], timings=out["timings"],
                    versions=out["versions"], started_at=out["started"], finished_at=out["finished"]),
                    spec.name, run.index, meta(spec, run))
                completed += 1
                progress.advance(bar)
    return completed, failures
