"""Isodose: equal-compute budgets for recovery mechanisms (study: recovery-isodose, "Isodose Calibration").

The study's formula (what the budget is defined in)::

    FLOPs = 6 · P · L · N · E         P trainable params, L seq len, N samples, E epochs

A reference ``(mechanism, epochs)`` fixes the budget ``B``; every other mechanism gets
``E = max(1, round(B / (6·P·L·N)))`` with everything else fixed.

That formula ignores the frozen base, which dominates the real cost of LoRA (every token still goes forward
and backward through the whole network). :func:`honest_flops` reports it beside the study's number::

    LoRA:  honest = T · (2·F + 6·P)
    full:  honest = T · 3·F

    F = forward FLOPs per token of the base = 2·(non-embedding params) + 2·(lm_head params)
        + attention scores 2·L·d_attn per layer (Kaplan et al. 2020, eq. 2.2, at context L, plus the vocab head,
        which Kaplan leaves out but which is a large share of a small model's matmuls)
    T = tokens processed = N · E · L when padded to L, else the real token count × E

Derivation for LoRA: forward through the base ``F·T`` plus the adapters ``2·P·T``; backward needs activation
gradients through the whole base ``F·T`` (same matmuls, transposed) and the adapters ``2·P·T``, plus weight
gradients only for the trainable adapters ``2·P·T``: total ``2·F·T + 6·P·T``. A full fine-tune also computes
weight gradients of every base matmul (another ``F·T``): ``3·F·T``, i.e. the familiar ``6·N·T``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import nn

from prunelab.errors import PrunelabError


def train_flops(trainable_params: int, seq_len: int, n_samples: int, epochs: float) -> float:
    """The study's isodose cost: ``6 · P · L · N · E``."""
    return 6.0 * trainable_params * seq_len * n_samples * epochs


def epoch_flops(trainable_params: int, seq_len: int, n_samples: int) -> float:
    """One epoch by the study's formula: ``6 · P · L · N``."""
    return train_flops(trainable_params, seq_len, n_samples, 1)


def isodose_epochs_exact(budget: float, trainable_params: int, seq_len: int, n_samples: int) -> float:
    """Unrounded ``budget / (6·P·L·N)``."""
    _check_positive(trainable_params=trainable_params, seq_len=seq_len, n_samples=n_samples)
    if not budget > 0:
        raise PrunelabError(f"isodose budget must be positive, got {budget!r}")
    return budget / epoch_flops(trainable_params, seq_len, n_samples)


def isodose_epochs(budget: float, trainable_params: int, seq_len: int, n_samples: int,
                   strict: bool = False) -> int:
    """Epochs that spend ``budget``: ``max(1, round(budget / (6·P·L·N)))``.

    A budget below half an epoch (which would round to 0) is clamped to 1 epoch with a ``UserWarning`` that
    says how much the run overspends, since the spec requires ≥ 1 epoch; ``strict=True`` raises instead.
    """
    exact = isodose_epochs_exact(budget, trainable_params, seq_len, n_samples)
    epochs = round(exact)
    if epochs < 1:
        msg = (f"isodose budget {budget:.3g} FLOPs is {exact:.3g} of one epoch ({epoch_flops(trainable_params, seq_len, n_samples):.3g} "
               f"FLOPs for {trainable_params:,} trainable params × {seq_len} tokens × {n_samples} samples)")
        if strict:
            raise PrunelabError(msg + "; raise the budget or shrink the run")
        warnings.warn(msg + "; clamped to 1 epoch, which overspends the budget", UserWarning, stacklevel=2)
        epochs = 1
    return int(epochs)


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise PrunelabError(f"{name} must be positive, got {v!r}")


def parse_reference(text: str) -> tuple[str, float]:
    """``"ketamine:3"`` → ``("ketamine", 3.0)``."""
    name, sep, epochs = str(text).partition(":")
    if not sep or not name.strip():
        raise PrunelabError(f"isodose reference must look like MECHANISM:EPOCHS (e.g. ketamine:3), got '{text}'")
    try:
        e = float(epochs)
    except ValueError:
        raise PrunelabError(f"isodose reference epochs must be a number, got '{epochs}'") from None
    if not e > 0:
        raise PrunelabError(f"isodose reference epochs must be positive, got {e:g}")
    return name.strip(), e


def base_forward_flops_per_token(model: nn.Module, seq_len: int) -> int:
    """``F``: forward FLOPs per token of the base model at context ``seq_len`` (see module docstring).

    Kaplan's ``2·N_non-embedding + attention`` (:func:`prunelab.models.flops_per_token`) plus the vocabulary
    head ``2·V·H`` (tied or not: the matmul happens either way).
    """
    from prunelab.models import flops_per_token

    head = getattr(model, "lm_head", None)
    head_params = head.weight.numel() if head is not None else 0
    return int(flops_per_token(model, seq_len)) + 2 * head_params


def honest_flops(base_flops_per_token: float, trainable_params: int, tokens: float, full_finetune: bool = False) -> float:
    """Real training cost including the frozen base: LoRA ``T·(2F + 6P)``, full fine-tune ``T·3F``."""
    if full_finetune:
        return 3.0 * base_flops_per_token * tokens
    return tokens * (2.0 * base_flops_per_token + 6.0 * trainable_params)


@dataclass
class IsodosePlan:
    """Epochs and costs of one mechanism under a budget."""

    mechanism: str
    trainable_params: int
    epochs: int
    exact_epochs: float
    flops: float          # 6·P·L·N·E with the rounded epochs
    epoch_flops: float    # 6·P·L·N
    budget: float
    clamped: bool


def plan_isodose(model: nn.Module, mechanisms: list, reference: str | tuple[str, float], seq_len: int,
                 n_samples: int) -> list[IsodosePlan]:
    """Epochs for each mechanism under the budget of ``reference`` (``"ketamine:3"`` or ``(name, epochs)``).

    Every plan's FLOPs are within half an epoch's FLOPs of the budget, except when clamped to 1 epoch.
    """
    from prunelab.recover.mechanisms import count_trainable_lora_params, get_mechanism

    ref_name, ref_epochs = parse_reference(reference) if isinstance(reference, str) else reference
    ref = get_mechanism(ref_name)
    budget = train_flops(count_trainable_lora_params(model, ref), seq_len, n_samples, ref_epochs)
    plans = []
    for mech in mechanisms:
        m = get_mechanism(mech)
        p = count_trainable_lora_params(model, m)
        exact = isodose_epochs_exact(budget, p, seq_len, n_samples)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            e = isodose_epochs(budget, p, seq_len, n_samples)
        plans.append(IsodosePlan(m.name, p, e, exact, train_flops(p, seq_len, n_samples, e),
                                 epoch_flops(p, seq_len, n_samples), budget, clamped=round(exact) < 1))
    return plans
