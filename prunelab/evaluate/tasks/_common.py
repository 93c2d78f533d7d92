"""Shared machinery for the built-in tasks: lm-eval-style multiple choice, metric helpers, a run cache."""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from collections.abc import Callable, Iterator, Sequence

from prunelab.data import MCItem, seeded_sample
from prunelab.evaluate.loglik import loglikelihood_groups
from prunelab.evaluate.progress import Counter
from prunelab.evaluate.registry import ItemOutcome, TaskResult

# results already computed in this evaluate() call (so `composite` reuses arc_easy_gen / lambada_gen)
_RUN_CACHE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("prunelab_eval_cache", default=None)


@contextlib.contextmanager
def run_cache(results: dict) -> Iterator[None]:
    token = _RUN_CACHE.set(results)
    try:
        yield
    finally:
        _RUN_CACHE.reset(token)


def dependency(name: str, model, tokenizer, limit, seed, batch_size) -> TaskResult:
    """The result of task ``name`` for the same (limit, seed): reused from this run when present."""
    from prunelab.data import sources
    from prunelab.evaluate.registry import TASKS

    cache = _RUN_CACHE.get()
    if cache is not None and name in cache:
        return cache[name]
    with sources.tracking() as used:  # which files / HF revisions the task's loaders read
        result = TASKS.get(name)(model, tokenizer, limit, seed, batch_size)
    if result.data_source is None:
        result.data_source = sources.describe(used)
    if (note := sources.notes(used)) and "note" not in result.details:
        result.details["note"] = note  # a known difference of the data copy from lm-eval (HellaSwag local)
    if cache is not None:
        cache[name] = result
    return result


def percent_stderr(hits: Sequence[float]) -> float:
    """Standard error of a mean of 0/1 outcomes, in percent: 100·sd(hits, ddof=1)/√n (lm-eval's)."""
    n = len(hits)
    if n < 2:
        return float("nan")
    m = sum(hits) / n
    var = sum((h - m) ** 2 for h in hits) / (n - 1)
    return 100.0 * math.sqrt(var / n)


def argmax_first(values: Sequence[float]) -> int:
    """Index of the maximum; ties go to the first (as ``numpy.argmax``, which lm-eval uses)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def mc_requests(item: MCItem) -> list[tuple[str, str]]:
    """(context, continuation) per choice; WinoGrande-style items have one context per choice."""
    if item.contexts is not None:
        return list(zip(item.contexts, item.choices))
    return [(item.context, c) for c in item.choices]


def mc_completion_len(choice: str) -> float:
    """lm-eval's acc_norm denominator: ``len(choice)`` in characters of ``doc_to_choice`` (which has no
    target delimiter, i.e. our choice minus its one leading space)."""
    return float(len(choice[1:] if choice.startswith(" ") else choice))


def run_multiple_choice(task: str, items: list[MCItem], model, tokenizer, limit: int | None, seed: int,
                        batch_size: int, primary: str = "acc") -> TaskResult:
    """lm-eval ``multiple_choice``: acc = [argmax loglik == gold]; acc_norm = [argmax loglik/len(choice) == gold].

    Both are percentages over a seeded sample of ``limit`` items (``seeded_sample(items, limit, seed)``).
    """
    start = time.perf_counter()
    chosen = seeded_sample(items, limit, seed)
    counter = Counter(task, len(chosen))
    scores = loglikelihood_groups(model, tokenizer, [mc_requests(it) for it in chosen], batch_size=batch_size,
                                  progress=counter)
    acc, acc_norm, preds, outcomes = [], [], [], []
    # each outcome carries the primary metric's verdict (HellaSwag: acc_norm), so its mean is the headline
    norm = primary == "acc_norm"
    for it, sc in zip(chosen, scores):
        lls = [ll for ll, _ in sc]
        pred = argmax_first(lls)
        pred_norm = argmax_first([ll / mc_completion_len(c) for ll, c in zip(lls, it.choices)])
        acc.append(float(pred == it.answer))
        acc_norm.append(float(pred_norm == it.answer))
        preds.append(pred)
        outcomes.append(ItemOutcome(it.id, correct=acc_norm[-1] if norm else acc[-1],
                                    prediction=str(pred_norm if norm else pred), logliks=tuple(lls)))
    n = len(chosen)
    # 100·mean (not 100·sum/n) so the floats are bit-identical to lm-eval's mean converted to percent
    metrics = {"acc": 100.0 * (sum(acc) / n), "acc_norm": 100.0 * (sum(acc_norm) / n),
               "acc_stderr": percent_stderr(acc), "acc_norm_stderr": percent_stderr(acc_norm)}
    return TaskResult(task=task, metrics=metrics, primary=primary, n=n, item_ids=[it.id for it in chosen],
                      seconds=time.perf_counter() - start,
                      details={"predictions": preds, "loglikelihoods": [[ll for ll, _ in sc] for sc in scores]},
                      outcomes=outcomes)


def simple_task(fn: Callable[[], list[MCItem]], name: str, primary: str = "acc"):
    def run(model, tokenizer, limit, seed, batch_size) -> TaskResult:
        return run_multiple_choice(name, fn(), model, tokenizer, limit, seed, batch_size, primary)

    run.__name__ = name
    run.__doc__ = f"{name}: lm-eval multiple-choice log-likelihood (acc, acc_norm in %; primary {primary})."
    return run
