"""The evaluation-task registry and the result type every task returns.

A task is a function ``(model, tokenizer, limit: int | None, seed: int, batch_size: int) -> TaskResult``
registered under its name::

    from prunelab.evaluate.registry import TASKS, TaskResult

    @TASKS.register("my_task")
    def my_task(model, tokenizer, limit, seed, batch_size) -> TaskResult: ...

``limit`` is the number of items of a seeded sample (``prunelab.data.seeded_sample(items, limit, seed)``;
``None`` = every item); accuracies are **percent (0-100)**; ``item_ids`` names exactly the items scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from prunelab.registry import Registry


@dataclass
class TaskResult:
    """One task's scores. ``metrics[primary]`` is the headline number (accuracies in percent)."""

    task: str
    metrics: dict[str, float]
    primary: str
    n: int
    item_ids: list[str]
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.metrics[self.primary]


class TaskFn(Protocol):
    def __call__(self, model: Any, tokenizer: Any, limit: int | None, seed: int, batch_size: int) -> TaskResult: ...


TASKS: Registry[TaskFn] = Registry("eval task")


def task(name: str) -> Callable[[TaskFn], TaskFn]:
    """Decorator shorthand for ``TASKS.register(name)``."""
    return TASKS.register(name)  # type: ignore[return-value]
