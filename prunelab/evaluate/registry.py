"""The evaluation-task registry and the result type every task returns.

A task is a function ``(model, tokenizer, limit: int | None, seed: int, batch_size: int) -> TaskResult``
registered with its :class:`TaskSpec` (name, kind, primary metric, direction, label, generation settings)::

    from prunelab.evaluate.registry import TaskResult, TaskSpec, register_task

    @register_task(TaskSpec("my_task", "loglikelihood", "acc", higher_is_better=True, label="My task (%)"))
    def my_task(model, tokenizer, limit, seed, batch_size) -> TaskResult: ...

Built-in tasks register when :func:`prunelab.evaluate.load_tasks` imports :mod:`prunelab.evaluate.tasks`;
:func:`task_spec` says what a task is without running it.

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
from typing import Any, Callable, Literal, Protocol

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


#: how a task scores: per-choice log-likelihoods, generated text, perplexity windows, or other tasks' scores
TaskKind = Literal["loglikelihood", "generation", "perplexity", "composite"]


@dataclass(frozen=True)
class GenerationSpec:
    """How a generation task decodes (greedy): its default new-token budget and which prompt rules apply.

    ``follows_protocol``: the prompt follows the ``raw`` / ``chat`` / ``auto`` protocol of the study's generation
    tasks; ``lm_eval_rules``: lm-eval's ``generate_until`` encoding, truncation and stop strings
    (:mod:`prunelab.evaluate.generation`). Budgets that can be changed per run are in
    :func:`prunelab.evaluate.generative_tasks.generation_settings`.
    """

    max_new_tokens: int
    follows_protocol: bool = False
    lm_eval_rules: bool = False


@dataclass(frozen=True)
class TaskSpec:
    """What one registered task is: its ``kind``, the ``primary`` metric key of its :class:`TaskResult`, whether a
    higher primary is better (perplexity: lower), the ``label`` tables print and, for generation, how it decodes."""

    name: str
    kind: TaskKind
    primary: str
    higher_is_better: bool
    label: str
    generation: GenerationSpec | None = None

    @property
    def open_ended(self) -> bool:
        """Free-text answers under lm-eval's ``generate_until`` (``gsm8k``, ``ifeval``): the slow tasks."""
        return self.generation is not None and self.generation.lm_eval_rules


#: every task's spec, under the same names as :data:`TASKS`
TASK_SPECS: Registry[TaskSpec] = Registry("eval task")


def register_task(spec: TaskSpec, fn: TaskFn | None = None) -> Callable[[TaskFn], TaskFn] | TaskFn:
    """Register ``fn`` under ``spec.name`` with its spec (decorator without ``fn``): the one registration route."""

    def add(task_fn: TaskFn) -> TaskFn:
        TASKS.register(spec.name, task_fn)
        TASK_SPECS.register(spec.name, spec)
        return task_fn

    return add if fn is None else add(fn)


def task_spec(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of a registered task (built-ins loaded first); unknown names raise listing the known."""
    from prunelab.evaluate import load_tasks

    load_tasks()
    return TASK_SPECS.get(name)
