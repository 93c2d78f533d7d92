"""Evaluation: one task registry (:data:`TASKS`), :func:`evaluate` over a list of task names.

``evaluate(model, tokenizer, ["arc_easy", "lambada_gen"], limit=100, seed=0)`` returns an
:class:`EvalReport` whose ``results[name]`` is a :class:`TaskResult` (accuracies in percent, the exact item
ids used, wall seconds). Built-in tasks live in :mod:`prunelab.evaluate.tasks`; other packages add tasks with
:func:`register_task` and the task's :class:`TaskSpec` (the one route: it fills both :data:`TASKS` and
:data:`TASK_SPECS`; the registering module must be imported before :func:`evaluate` looks the name up).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from prunelab.errors import PrunelabError
from prunelab.evaluate.registry import TASK_SPECS, TASKS, ItemOutcome, TaskFn, TaskResult, TaskSpec, register_task, task_spec

if TYPE_CHECKING:
    from prunelab.evaluate.generative_tasks import GenerationProtocol

#: Modules whose import registers tasks (:func:`prunelab.evaluate.registry.register_task`).
TASK_MODULES = ("prunelab.evaluate.tasks",)


def load_tasks() -> None:
    """Import every module that registers tasks (idempotent)."""
    for name in TASK_MODULES:
        importlib.import_module(name)


@dataclass
class EvalReport:
    """Results of :func:`evaluate`, keyed by task name."""

    results: dict[str, TaskResult] = field(default_factory=dict)
    limit: int | None = None
    seed: int = 0
    seconds: float = 0.0
    #: prompt protocol the generation tasks used ("raw" or "chat"; see ``evaluate(protocol=...)``)
    protocol: str | None = None
    #: tasks run only because a requested one needed them (``composite``'s arc_easy_gen / lambada_gen), kept
    #: so their per-item outcomes — from which the composite's interval is computed — are not lost
    dependencies: dict[str, TaskResult] = field(default_factory=dict)

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
             batch_size: int = 8, progress: Callable[[str, int, int], None] | None = None,
             protocol: GenerationProtocol = "auto") -> EvalReport:
    """Run ``tasks`` on ``model``; every name is validated before any work starts.

    ``limit`` = items per task (a seeded sample; for ``wikitext2``/``c4`` the number of 512-token windows),
    ``None`` = all. ``progress(task, done, total)`` is called as items of a task finish (the CLI's bar).
    ``protocol`` = prompt protocol of the generation tasks (``arc_easy_gen``, ``lambada_gen``, ``composite``):
    ``raw``, ``chat`` (the tokenizer's chat template; an error before any work if it has none) or ``auto``
    (chat iff the tokenizer has a template). The protocol used is in ``EvalReport.protocol`` and in each
    such task's ``details["protocol"]``.
    """
    import time

    from prunelab.evaluate.generative_tasks import check_protocol, generation_settings, protocol_tasks, resolve_protocol

    names = resolve_tasks(tasks)
    check_protocol(protocol)
    following = protocol_tasks()
    used = None
    if set(names) & following:  # chat without a template fails here, before any work
        used = resolve_protocol(tokenizer, protocol)
    if "arc_easy_gen_chat" in names:  # the old always-chat task: the same check, before any work
        resolve_protocol(tokenizer, "chat")
    if limit is not None and limit <= 0:
        raise PrunelabError(f"limit must be a positive number of items, got {limit}")
    if batch_size <= 0:
        raise PrunelabError(f"batch size must be positive, got {batch_size}")
    report = EvalReport(limit=limit, seed=seed, protocol=used)
    start = time.perf_counter()
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    from prunelab.evaluate.progress import reporting
    from prunelab.evaluate.tasks._common import dependency, run_cache

    cache: dict[str, TaskResult] = {}
    try:
        with reporting(progress), run_cache(cache), generation_settings(protocol=used or protocol):
            for name in names:
                report.results[name] = dependency(name, model, tokenizer, limit, seed, batch_size)
        report.dependencies = {k: v for k, v in cache.items() if k not in report.results}
        for name, res in [*report.results.items(), *report.dependencies.items()]:
            if name in following:  # composite has no prompts of its own: it used its parts' protocol
                res.details.setdefault("protocol", used)
    finally:
        if was_training:
            model.train()
    report.seconds = time.perf_counter() - start
    return report


__all__ = ["EvalReport", "ItemOutcome", "TASKS", "TASK_SPECS", "TaskFn", "TaskResult", "TaskSpec", "evaluate",
           "load_tasks", "register_task", "resolve_tasks", "task_spec"]
