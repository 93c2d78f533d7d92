"""The dichotomy study's plan: the capability battery and the expansion-ratio sweep, validated before any work.

The expansion ratio of a GLU-MLP is ``e = intermediate / hidden``; a ratio ``e`` keeps ``round(e · hidden)``
neurons per layer (Martra 2025, "Fragile Knowledge, Robust Instruction-Following").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prunelab.errors import PrunelabError

#: The battery, grouped by kind (task names of :data:`prunelab.evaluate.TASKS`).
BATTERY: dict[str, list[str]] = {
    "knowledge": ["mmlu_5shot", "mmlu", "arc_challenge"],
    "language": ["wikitext2", "lambada"],
    "commonsense": ["hellaswag", "piqa", "boolq", "winogrande"],
    "instruction": ["ifeval"],
    "truthfulness": ["truthfulqa_mc1", "truthfulqa_mc2"],
    "math": ["gsm8k"],
}
# What a task is (perplexity: lower is better; open-ended generation: its own, usually smaller, item limit) is
# its TaskSpec: prunelab.evaluate.registry.task_spec(t).higher_is_better / .open_ended.


def kind_of(task: str) -> str:
    """The battery kind ``task`` belongs to (``"other"`` for a task outside the battery)."""
    for kind, tasks in BATTERY.items():
        if task in tasks:
            return kind
    return "other"


@dataclass
class RatioPlan:
    """The validated sweep: the dense point first, then pruned points by decreasing expansion ratio."""

    hidden_size: int
    dense_width: int
    dense_ratio: float
    points: list[tuple[float, int]]  # (expansion ratio, kept neurons per layer); points[0] is dense


def kept_width(expansion_ratio: float, hidden_size: int, round_to: int = 1) -> int:
    """Neurons kept per layer: ``round(e · hidden)`` rounded down to a multiple of ``round_to`` (the rule of
    :func:`prunelab.prune.width.plan_widths`)."""
    target = int(round(expansion_ratio * hidden_size))
    return target - target % round_to


def validate_expansion_ratios(model: Any, ratios: Sequence[float], round_to: int = 1) -> RatioPlan:
    """Check every ratio before any work; the dense point (the model's own ratio) is always included.

    Errors: a ratio that is not a finite number > 0; one ≥ the model's own ratio (width pruning cannot
    widen; listing the exact own ratio names the dense point); one that rounds to zero neurons; one that
    rounds to the dense width; two that round to the same width.
    """
    from prunelab.models import adapter_for

    if round_to < 1:
        raise PrunelabError(f"round_to must be a positive integer, got {round_to}")
    adapter = adapter_for(model)
    hidden = int(model.config.hidden_size)
    widths = [adapter.mlp_width(layer) for layer in adapter.layers(model)]
    if not widths:
        raise PrunelabError("the model has no decoder layers to prune")
    dense_width = min(widths)  # a ratio must prune every layer, so the narrowest one bounds it
    own = dense_width / hidden
    if len(set(widths)) > 1:
        own_text = f"{own:.4g} (narrowest layer {dense_width}/{hidden}; widths differ per layer)"
    else:
        own_text = f"{own:.4g} ({dense_width}/{hidden})"
    points: list[tuple[float, int]] = [(own, dense_width)]
    seen: dict[int, float] = {}
    for r in ratios:
        r = float(r)
        if not math.isfinite(r) or r <= 0:
            raise PrunelabError(f"expansion ratio {r:g} must be a number > 0")
        if math.isclose(r, own, rel_tol=1e-9, abs_tol=1e-12):
            continue  # the dense point, always included
        if r > own:
            raise PrunelabError(f"expansion ratio {r:g} is ≥ the model's own {own_text}: width pruning cannot "
                                f"widen a layer (the dense point is always included)")
        kept = kept_width(r, hidden, round_to)
        if kept <= 0:
            raise PrunelabError(f"expansion ratio {r:g} rounds to zero neurons (hidden size {hidden}"
                                f"{f', rounding to multiples of {round_to}' if round_to > 1 else ''})")
        if kept >= dense_width:
            raise PrunelabError(f"expansion ratio {r:g} rounds to {kept} neurons, no fewer than the dense "
                                f"{dense_width}; the dense point is always included")
        if kept in seen:
            raise PrunelabError(f"expansion ratios {seen[kept]:g} and {r:g} both keep {kept} neurons per layer")
        seen[kept] = r
        points.append((r, kept))
    points[1:] = sorted(points[1:], key=lambda p: -p[0])
    return RatioPlan(hidden_size=hidden, dense_width=dense_width, dense_ratio=own, points=points)


def parse_ratios(text: str) -> list[float]:
    """``"2.4,2.0,1.6"`` → floats; a clear error for anything else."""
    out = []
    for tok in text.split(","):
        tok = tok.strip()
        if not tok:
            continue
        try:
            out.append(float(tok))
        except ValueError:
            raise PrunelabError(f"expansion ratio '{tok}' is not a number (use e.g. 2.4,2.0,1.6)") from None
    if not out:
        raise PrunelabError("no expansion ratio given (use e.g. --expansion-ratios 2.4,2.0,1.6,1.2,1.0)")
    return out
