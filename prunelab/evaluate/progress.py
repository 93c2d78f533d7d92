"""Progress reporting from inside tasks without threading a callback through every signature.

:func:`prunelab.evaluate.evaluate` installs a callback ``(task, done, total)``; tasks call :func:`report`.
With no callback installed (library use) reporting is a no-op.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

Callback = Callable[[str, int, int], None]
_CALLBACK: contextvars.ContextVar[Callback | None] = contextvars.ContextVar("prunelab_eval_progress", default=None)


@contextlib.contextmanager
def reporting(callback: Callback | None) -> Iterator[None]:
    token = _CALLBACK.set(callback)
    try:
        yield
    finally:
        _CALLBACK.reset(token)


def report(task: str, done: int, total: int) -> None:
    cb = _CALLBACK.get()
    if cb is not None:
        cb(task, done, total)


class Counter:
    """``Counter(task, total)``; ``counter(n)`` adds ``n`` done items and reports."""

    def __init__(self, task: str, total: int) -> None:
        self.task, self.total, self.done = task, total, 0
        report(task, 0, total)

    def __call__(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        report(self.task, self.done, self.total)
