"""Dispatch independent runs to a Ray cluster: one Ray task per run; the driver alone writes the store.

Each task loads/prunes its own model (in the worker's ``work_dir``, so a shared filesystem lets workers
reuse pruned checkpoints), executes the run with the worker's stages through the same
:func:`prunelab.experiments.execute.prepare_and_execute` a local run uses, and returns its
:class:`~prunelab.runs.result.RunResult` (or a :class:`RemoteFailure`); the driver commits each result as it arrives
(``ray.wait``), so killing the driver loses only unfinished runs, exactly like local execution.

Faults: a task whose worker process dies (SIGKILL, OOM killer, lost node) is re-executed by Ray up to
``resources.retries`` times (Ray's ``max_retries``; default 1) and recorded as failed with Ray's error after
that; a run that raises is recorded as failed at once (``retry_exceptions`` stays off: a deterministic error
would only fail again). Either way the run is absent from ``runs`` until it succeeds, and a rerun of the same
command retries it. Runs are leased in the store before submission (:class:`~prunelab.experiments.queue.ClaimQueue`),
so a driver sharing the store — another ``--ray`` driver or a local one — never executes the same run.

CPUs/GPUs per task come from the spec's ``resources``. ``PRUNELAB_*`` environment variables of the driver
(stages, data location, ...) are passed to the tasks as Ray ``runtime_env`` variables, so workers evaluate
what the driver would. Ray is optional (``pip install 'prunelab[ray]'``) and imported only here.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunelab.errors import PrunelabError
from prunelab.runs.config import RunConfig
from prunelab.runs.result import RunMeta, RunRecord, RunResult

if TYPE_CHECKING:
    from prunelab.experiments.queue import ClaimQueue
    from prunelab.experiments.spec import ExperimentSpec, Run
    from prunelab.runs.store import Store

#: driver environment variables handed to every task (stages, data location, fake-stage knobs in tests)
ENV_PREFIX = "PRUNELAB_"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PrunelabError("--ray needs the optional 'ray' package: pip install 'prunelab[ray]' "
                            "(or run without --ray to execute locally)") from None
    return ray


@dataclass(frozen=True)
class RemoteFailure:
    """A run that raised on its worker (or whose worker died): one line for the summary, the full traceback for
    the store's ``failures`` table."""

    error: str
    traceback: str


def remote_run(config: RunConfig, prepare_dir: str) -> RunResult | RemoteFailure:
    """Body of one Ray task (a plain function, so it is testable without Ray)."""
    from prunelab.experiments.execute import prepare_and_execute
    from prunelab.experiments.stages import get_stages

    try:
        return prepare_and_execute(config, get_stages(), Path(prepare_dir))
    except Exception as exc:  # noqa: BLE001 - reported back to the driver, which records the failure
        return RemoteFailure(f"{type(exc).__name__}: {exc}", traceback.format_exc())


def _task_options(spec: ExperimentSpec) -> dict[str, Any]:
    res = spec.resources
    opts: dict[str, Any] = {"num_gpus": res.gpus, "num_cpus": res.cpus, "max_retries": res.retries}
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    if env:
        opts["runtime_env"] = {"env_vars": env}
    return opts


def _capacity(ray, spec: ExperimentSpec) -> int:
    """How many runs the cluster can execute at once with the spec's resources (at least 1).

    The driver leases and submits only about that many (x2, so a worker never idles between results), which
    leaves the other pending runs free for a second driver sharing the store.
    """
    try:
        total = ray.cluster_resources()
    except Exception:  # noqa: BLE001 - an unknown capacity only costs balance, never correctness
        return 1
    res = spec.resources
    fits = [math.floor(total.get("CPU", 0.0) / res.cpus)]
    if res.gpus > 0:
        fits.append(math.floor(total.get("GPU", 0.0) / res.gpus))
    return max(1, 2 * min(fits))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_on_ray(address: str, spec: ExperimentSpec, queue: ClaimQueue, store: Store, work: Path,
               meta: Callable[[ExperimentSpec, Run], RunMeta], fail_fast: bool = False,
               ray_module=None) -> tuple[int, list[str]]:
    """Lease, submit and store every run ``queue`` hands out; returns ``(completed, failures)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from prunelab.console import err_console

    ray = ray_module or _import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - connection problems become one clear line
            raise PrunelabError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    task = ray.remote(**_task_options(spec))(remote_run)
    inflight: dict[Any, Any] = {}
    completed, failures = 0, []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console) as progress:
        bar = progress.add_task(f"{spec.name} (ray)", total=len(queue.waiting))
        queue.on_others = lambda n: progress.advance(bar, n)
        while not queue.done or inflight:
            capacity = _capacity(ray, spec)
            while len(inflight) < capacity:
                run = queue.take()
                if run is None:
                    break
                inflight[task.remote(run.config, str(work / "pruned" / run.prune_key))] = run
            if not inflight:  # everything left is leased by another driver: wait for it
                time.sleep(queue.poll)
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=None if queue.done else queue.poll)
            for ref in ready:
                run = inflight.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - e.g. WorkerCrashedError once max_retries is spent
                    out = RemoteFailure(_first_line(exc), f"{type(exc).__name__}: {exc}")
                if isinstance(out, RemoteFailure):
                    store.add_failure(run.hash, run.label, out.traceback)
                    queue.release(run, failed=True)
                    failures.append(f"{run.label}: {out.error}")
                    err_console.print(f"[red]run failed[/] {run.label}: {out.error}", highlight=False)
                    if fail_fast:
                        for r in inflight:
                            ray.cancel(r)
                        return completed, failures
                    continue
                store.add_run(RunRecord(run.hash, run.config, out), spec.name, run.index, meta(spec, run))
                completed += 1
                progress.advance(bar)
                progress.console.print(f"[green]stored[/] {run.label}", highlight=False)
    return completed, failures
