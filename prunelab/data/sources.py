"""Which copy of a dataset a loader read: a local file or a Hugging Face ``datasets`` id at a revision.

Every loader in :mod:`prunelab.data.loaders` calls :func:`record` with the :class:`DataSource` it used.
Evaluation wraps each task in :func:`tracking` and stores what was recorded in the task's result
(``TaskResult.data_source``), so ``prunelab eval --json`` names the exact data behind every score. Recording
is a no-op outside :func:`tracking` (a context variable, like the evaluation run cache), so loaders stay
usable on their own.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DataSource:
    """One dataset read: ``kind="local"`` with ``location`` = the file's path, or ``kind="hf"`` with
    ``location`` = the HF dataset id, its ``config`` / ``split`` and the resolved ``revision`` (commit hash,
    None when ``datasets`` did not report one). ``note`` states a known difference of this copy from what
    lm-eval 0.4.13 scores (shown to the user in the task's result)."""

    dataset: str
    kind: Literal["local", "hf"]
    location: str
    config: str | None = None
    split: str | None = None
    revision: str | None = None
    note: str | None = None

    def __str__(self) -> str:
        if self.kind == "local":
            return self.location
        config = f"/{self.config}" if self.config else ""
        split = f":{self.split}" if self.split else ""
        revision = f"@{self.revision}" if self.revision else ""
        return f"hf:{self.location}{config}{split}{revision}"


# the source lists of every tracking() block currently open (nested: a composite task and its parts)
_ACTIVE: contextvars.ContextVar[tuple[list[DataSource], ...]] = contextvars.ContextVar(
    "prunelab_data_sources", default=())


def record(source: DataSource) -> None:
    """Note that ``source`` was read (into every open :func:`tracking` block; nothing happens outside one)."""
    for used in _ACTIVE.get():
        if source not in used:
            used.append(source)


@contextlib.contextmanager
def tracking() -> Iterator[list[DataSource]]:
    """Collect the :class:`DataSource` of every dataset loaded inside the block, in first-use order."""
    used: list[DataSource] = []
    token = _ACTIVE.set(_ACTIVE.get() + (used,))
    try:
        yield used
    finally:
        _ACTIVE.reset(token)


def describe(sources: list[DataSource]) -> str | None:
    """``"; "``-joined sources (None when nothing was loaded), for ``TaskResult.data_source``."""
    return "; ".join(str(s) for s in sources) or None


def notes(sources: list[DataSource]) -> str | None:
    """The known-difference notes of ``sources`` (None when there are none)."""
    return " ".join(dict.fromkeys(s.note for s in sources if s.note)) or None
