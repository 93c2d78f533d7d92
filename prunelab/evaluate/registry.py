"""The evaluation-task registry and the result type every task returns.

A task is a function ``(model, tokenizer, limit: int | None, seed: int, batch_size: int) -> TaskResult``
registered under its name::

    from prunelab.evaluate.registry import TASKS, TaskResult

    @TASKS.register("my_task")
    def my_task(model, tokenizer, limit, seed, batch_size) -> TaskResult: ...

``limit`` is the number of items of a seeded sample (``prunelab.data.seeded_sample(items, limit, seed)``;
``None`` = every item); accuracies are **percent (0-100)**; ``item_ids`` names exactly the items scored.

Every task also returns ``outcomes``: one :class:`ItemOutcome` per item (per window for perplexity), holding
what its metric is computed from, so paired statistics (bootstrap over items, McNemar) can be computed later
from stored outcomes without re-evaluating. Contract: for accuracy tasks
``100 · mean(o.correct for o in outcomes) == metrics[primary]``; for perplexity tasks
``exp(Σ o.nll / Σ o.tokens) == metrics["ppl"]`` (up to float summation order).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Protocol

from prunelab.registry import Registry


@dataclass(frozen=True)
class ItemOutcome:
    """What one evaluated item contributed to its task's metric (fields a task does not produce stay None).

    - ``correct``: the item's value of the task's *primary* metric as a fraction — 0/1 for accuracy tasks
      (HellaSwag: the acc_norm verdict; GSM8K: the flexible-extract match; IFEval: all strict verdicts
      followed), TruthfulQA MC2's normalised probability mass on the true answers (in [0, 1]); None for
      perplexity windows.
    - ``prediction``: the parsed prediction (generation tasks: the choice index / word / number as a string;
      multiple choice: the index chosen under the primary metric; None where nothing parsed).
    - ``logliks``: per-choice summed log-likelihoods (multiple choice), or the target's (``lambada``).
    - ``nll`` / ``tokens``: a perplexity window's summed NLL (nats) and number of predicted tokens.
    - ``verdicts`` / ``verdicts_loose``: IFEval per-instruction strict / loose verdicts.
    """

    item_id: str
    correct: float | None = None
    prediction: str | None = None
    logliks: tuple[float, ...] | None = None
    nll: float | None = None
    tokens: int | None = None
    verdicts: tuple[bool, ...] | None = None
    verdicts_loose: tuple[bool, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The non-None fields (compact JSON for the store / ``--json``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ItemOutcome":
        """Inverse of :meth:`to_dict` (unknown keys are ignored, so newer stores stay readable)."""
        known = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(**kw)


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
    #: per-item outcomes in ``item_ids`` order (see :class:`ItemOutcome` and the module docstring)
    outcomes: list[ItemOutcome] = field(default_factory=list)
    #: the data each score came from: local file path(s) or ``hf:<id>/<config>:<split>@<revision>``, "; "-joined
    #: (filled by ``evaluate`` from :mod:`prunelab.data.sources`; None when the task read no dataset)
    data_source: str | None = None

    @property
    def score(self) -> float:
        return self.metrics[self.primary]


class TaskFn(Protocol):
    def __call__(self, model: Any, tokenizer: Any, limit: int | None, seed: int, batch_size: int) -> TaskResult: ...


TASKS: Registry[TaskFn] = Registry("eval task")


def task(name: str) -> Callable[[TaskFn], TaskFn]:
    """Decorator shorthand for ``TASKS.register(name)``."""
    return TASKS.register(name)  # type: ignore[return-value]
