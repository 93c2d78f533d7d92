"""What acute relapse and chronic stress share: merging an adapter before pruning, and the default evaluation.

Both stress tests prune the *merged* weights (a LoRA update left in an adapter would escape the magnitude
pruning), and both score the model with :func:`prunelab.evaluate.evaluate` plus the study's composite
(:func:`prunelab.scores.with_composite`), so ``relapse_drop`` and the chronic decline read the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from prunelab.scores import with_composite

__all__ = ["EvalFn", "TuneFn", "default_eval_fn", "default_tune_fn", "merge_adapter"]

#: ``eval_fn(model, tokenizer) -> {metric: value}`` (accuracies in percent).
EvalFn = Callable[[nn.Module, Any], dict[str, float]]
#: ``tune_fn(model, tokenizer, mechanism, records, epochs) -> (tuned plain model, final training loss or None)``.
TuneFn = Callable[[nn.Module, Any, Any, Sequence[Any], float], "tuple[nn.Module, float | None]"]


def merge_adapter(model: nn.Module) -> tuple[nn.Module, bool]:
    """``(plain_model, merged)``: a PEFT model is merged into its base weights (``merge_and_unload``)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return model, False
    if isinstance(model, PeftModel):
        return model.merge_and_unload(), True
    return model, False


def default_eval_fn(tasks: Sequence[str], limit: int | None, seed: int, batch_size: int = 8) -> EvalFn:
    """An ``eval_fn`` running :func:`prunelab.evaluate.evaluate`; adds ``composite`` when both of its parts ran."""
    from prunelab.evaluate import evaluate

    def run(model: nn.Module, tokenizer: Any) -> dict[str, float]:
        rep = evaluate(model, tokenizer, list(tasks), limit=limit, seed=seed, batch_size=batch_size)
        return with_composite(rep.scores())

    return run


def default_tune_fn(seq_len: int, seed: int, pad_to_max: bool = True, progress: bool = True) -> TuneFn:
    """A ``tune_fn`` running :func:`prunelab.recover.recover` (LoRA, merged) and returning its final loss."""
    from prunelab.recover import recover

    def run(model, tokenizer, mechanism, records, epochs):
        res = recover(model, tokenizer, mechanism, records, epochs, seq_len=seq_len, pad_to_max=pad_to_max,
                      seed=seed, merge=True, progress=progress)
        return res.model, res.final_loss

    return run
