"""The composite score, defined once for every stage that computes or reads it.

The recovery study scores a model by ``composite = mean(ARC-Easy %, LAMBADA %)`` over its generation
protocols (:data:`STUDY_COMPOSITE`). An experiment may name other parts (``eval.composite`` in the YAML: e.g.
the log-likelihood ``arc_easy`` and ``lambada`` on a small Instruct model whose letter-generation ARC-Easy sits at
chance); every reader takes the parts from the run's config, so the evaluation, chronic cycles and the report
agree on what "composite" means. Pure, ground floor: no imports from any stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

#: The study's composite: ARC-Easy generation accuracy and LAMBADA generation accuracy (percent).
STUDY_COMPOSITE: tuple[str, ...] = ("arc_easy_gen", "lambada_gen")


def composite_parts(eval_config: Mapping | None) -> tuple[str, ...]:
    """The composite's parts named by a run's eval config (``eval.composite``), else the study's."""
    parts = (eval_config or {}).get("composite") if isinstance(eval_config, Mapping) else None
    return tuple(parts) if parts else STUDY_COMPOSITE


def composite_score(scores: Mapping[str, float], parts: Sequence[str] = STUDY_COMPOSITE) -> float | None:
    """``mean(scores[p] for p in parts)`` (percent) when every part was scored, else None."""
    if not parts or any(p not in scores or scores[p] is None for p in parts):
        return None
    return sum(float(scores[p]) for p in parts) / len(parts)


def with_composite(scores: dict[str, float], parts: Sequence[str] = STUDY_COMPOSITE) -> dict[str, float]:
    """``scores`` plus ``composite`` when every part is present and ``composite`` itself was not scored."""
    if "composite" in scores:
        return scores
    value = composite_score(scores, parts)
    return scores if value is None else {**scores, "composite": value}
