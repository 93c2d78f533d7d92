"""Evaluation: one task registry (:data:`TASKS`), :func:`evaluate` over a list of task names.

``evaluate(model, tokenizer, ["arc_easy", "lambada_gen"], limit=100, seed=0)`` returns an
:class:`EvalReport` whose ``results[name]`` is a :class:`TaskResult` (accuracies in percent, the exact item
ids used, wall seconds). Built-in tasks live in :mod:`prunelab.evaluate.tasks`; other packages add tasks by
registering into :data:`TASKS` (the module must be imported before :func:`evaluate` looks the name up).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from prunelab.errors import PrunelabError
from prunelab.evaluate.registry import TASKS, TaskFn, TaskResult, task

#: Modules whose import registers tasks. Built-ins first; optional study modules are imported when present.
TASK_MODULES = ("prunelab.evaluate.tasks",)
OPTIONAL_TASK_MODULES: list[str] = []


def load_tasks() -> None:
    """Import every module that registers tasks (idempotent)."""
    for name in TASK_MODULES:
        importlib.import_module(name)
    for name in OPTIONAL_TASK_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside the module: surface it
                raise


@dataclass
class EvalReport:
    """Results of :func:`evaluate`, keyed by task name."""

    results: dict[str, TaskResult] = field(default_factory=dict)
    limit: int | None = None
    seed: int = 0
    seconds: float = 0.0

    def score(self, task: str) -> float:
        """The primary metric of ``task`` (accuracy in percent, or perplexity)."""
        if task not in self.results:
            raise PrunelabError(f"task '{task}' was not evaluated; have: {', '.join(self.results)}")
        return self.results[task].score

    def scores(self) -> dict[str, float]:
        return {name: r.score for name, r in self.results.items()}


def resolve_tasks(tasks: str | list[str]) -> list[str]:
    """Validate task names (``"a,b"``, ``"all"`` or a list); unknown names raise listing the known ones."""
    load_tasks()
    if isinstance(tasks, str):
        return TASKS.parse_list(tasks)
    names = [t.strip() for t in tasks if t and t.strip()]
    if not names:
        raise PrunelabError(f"no eval task given; known: {', '.join(TASKS.names())}")
    for n in names:
        TASKS.get(n)
    return list(dict.fromkeys(names))


def evaluate(model: Any, tokenizer: Any, tasks: str | list[str], limit: int | None = None, seed: int = 0,
             batch_size: int = 8, progress: Callable[[str, int, int], None] | None = None) -> EvalReport:
    """Run ``tasks`` on ``model``; every name is validated before any work starts.

    ``limit`` = items per task (a seeded sample; for ``wikitext2``/``c4`` the number of 512-token windows),
    ``None`` = all. ``progress(task, done, total)`` is called as items of a task finish (the CLI's bar).
    """
    import time

    names = resolve_tasks(tasks)
    if limit is not None and limit <= 0:
        raise PrunelabError(f"limit must be a positive number of items, got {limit}")
    if batch_size <= 0:
        raise PrunelabError(f"batch size must be positive, got {batch_size}")
    report = EvalReport(limit=limit, seed=seed)
    start = time.perf_counter()
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    from prunelab.evaluate.progress import reporting
    from prunelab.evaluate.tasks._common import dependency, run_cache

    cache: dict[str, TaskResult] = {}
    try:
        with reporting(progress), run_cache(cache):
            for name in names:
                report.results[name] = dependency(name, model, tokenizer, limit, seed, batch_size)
    finally:
        if was_training:
            model.train()
    report.seconds = time.perf_counter() - start
    return report


__all__ = ["EvalReport", "TASKS", "TaskFn", "TaskResult", "evaluate", "load_tasks", "resolve_tasks", "task"]

from prunelab.evaluate import generative_tasks  # noqa: E402,F401  (registers gsm8k, ifeval, truthfulqa_mc1/mc2)
