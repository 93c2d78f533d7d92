"""``composite`` = mean(ARC-Easy generation acc %, LAMBADA generation acc %) — the recovery study's score."""

from __future__ import annotations

import time

from prunelab.evaluate.registry import TaskResult, TaskSpec, register_task
from prunelab.evaluate.tasks._common import dependency
from prunelab.scores import STUDY_COMPOSITE, composite_score


@register_task(TaskSpec("composite", "composite", "composite", higher_is_better=True, label="Composite (%)"))
def composite(model, tokenizer, limit, seed, batch_size) -> TaskResult:
    """(arc_easy_gen.acc + lambada_gen.acc) / 2 with the same limit and seed (reused when run in the same call).

    No per-item outcomes of its own: an item of one part is not an item of the composite. The parts' outcomes
    (in ``EvalReport.results`` or ``EvalReport.dependencies``) are what its interval is resampled from.
    """
    start = time.perf_counter()
    arc = dependency("arc_easy_gen", model, tokenizer, limit, seed, batch_size)
    lam = dependency("lambada_gen", model, tokenizer, limit, seed, batch_size)
    value = composite_score({"arc_easy_gen": arc.metrics["acc"], "lambada_gen": lam.metrics["acc"]}, STUDY_COMPOSITE)
    return TaskResult("composite", {"composite": value, "arc_easy_gen": arc.metrics["acc"],
                                    "lambada_gen": lam.metrics["acc"]}, "composite", arc.n + lam.n,
                      arc.item_ids + lam.item_ids, time.perf_counter() - start,
                      # the parts' sources (a part reused from this run loads nothing the tracker could see)
                      data_source="; ".join(s for s in (arc.data_source, lam.data_source) if s) or None)
