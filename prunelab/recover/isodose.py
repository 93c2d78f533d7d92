"""Isodose: equal-compute budgets for recovery mechanisms (study: recovery-isodose, "Isodose Calibration").

A reference ``(mechanism, epochs)`` fixes the budget ``B`` = the reference run's cost; every other mechanism
gets ``E = max(1, round(B / cost_of_one_epoch))`` with data and sequence length fixed. Two cost formulas
(``formula``, :data:`ISODOSE_FORMULAS`) define "cost":

``study`` — the study's own (what its Table 3 budgets)::

    FLOPs = 6 · P · L · N · E         P trainable params, L seq len, N samples, E epochs

i.e. Kaplan et al. 2020's ``C ≈ 6·N·T`` training-compute rule (§2.1, eq. 2.1 with ``C_forward ≈ 2N``)
applied to the *trainable* parameters only, over ``T = L·N·E`` tokens.

``honest`` — the same 6N rule with LoRA's split between frozen and trainable weights::

    LoRA:  honest = T · (2·F + 6·P)
    full:  honest = T · 3·F

    F = forward FLOPs per token of the base = 2·(non-embedding params) + 2·(lm_head params)
        + attention scores 2·L·d_attn per layer (Kaplan et al. 2020, eq. 2.2, at context L, plus the vocab head,
        which Kaplan leaves out but which is a large share of a small model's matmuls)
    T = tokens processed = N · E · L when padded to L, else the real token count × E

Derivation for LoRA: forward through the base ``F·T`` plus the adapters ``2·P·T``; backward needs activation
gradients through the whole base ``F·T`` (same matmuls, transposed) and the adapters ``2·P·T``, plus weight
gradients only for the trainable adapters ``2·P·T``: total ``2·F·T + 6·P·T``. A full fine-tune also computes
weight gradients of every base matmul (another ``F·T``): ``3·F·T``, i.e. Kaplan's ``6·N·T``.

The study's formula ignores the frozen base, which dominates the real cost of LoRA (every token still goes
forward and backward through the whole network), so a low-rank mechanism gets many more epochs — and many times
the real compute — of a high-rank one. ``honest`` equalises ``T·(2F + 6P)`` instead. :func:`honest_flops` is
the one definition of the honest cost: the solver (:func:`solve_isodose`) and every recovery result use it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, get_args

from torch import nn

from prunelab.errors import PrunelabError

IsodoseFormula = Literal["study", "honest"]
#: The cost formulas an isodose budget can be defined in (module docstring).
ISODOSE_FORMULAS: tuple[str, ...] = get_args(IsodoseFormula)


def check_formula(formula: str) -> IsodoseFormula:
    """``formula`` if it is one of :data:`ISODOSE_FORMULAS`, else a one-line :class:`PrunelabError`."""
    if formula not in ISODOSE_FORMULAS:
        raise PrunelabError(f"unknown isodose formula '{formula}'; known: {', '.join(ISODOSE_FORMULAS)}")
    return formula  # type: ignore[return-value]


def train_flops(trainable_params: int, seq_len: int, n_samples: int, epochs: float) -> float:
    """The study's isodose cost: ``6 · P · L · N · E``."""
    return 6.0 * trainable_params * seq_len * n_samples * epochs


def epoch_flops(trainable_params: int, seq_len: int, n_samples: int) -> float:
    """One epoch by the study's formula: ``6 · P · L · N``."""
    return train_flops(trainable_params, seq_len, n_samples, 1)


def isodose_epochs_exact(budget: float, trainable_params: int, seq_len: int, n_samples: int) -> float:
    """Unrounded ``budget / (6·P·L·N)`` (the study's formula)."""
    _check_positive(trainable_params=trainable_params, seq_len=seq_len, n_samples=n_samples)
    _check_budget(budget)
    return budget / epoch_flops(trainable_params, seq_len, n_samples)


def isodose_epochs(budget: float, trainable_params: int, seq_len: int, n_samples: int,
                   strict: bool = False) -> int:
    """Epochs that spend a given ``budget`` by the study's formula: ``max(1, round(budget / (6·P·L·N)))``.

    The budget-first form of the study's rounding; a run's epochs from an isodose *reference* (either formula)
    are solved by :func:`solve_isodose`, the one solver the experiment runner and
    :func:`prunelab.recover.train.recover_isodose` call.

    A budget below half an epoch (which would round to 0) is clamped to 1 epoch with a ``UserWarning`` that
    says how much the run overspends, since the spec requires ≥ 1 epoch; ``strict=True`` raises instead.
    """
    exact = isodose_epochs_exact(budget, trainable_params, seq_len, n_samples)
    return _round_epochs(exact, budget, epoch_flops(trainable_params, seq_len, n_samples),
                         f"{trainable_params:,} trainable params × {seq_len} tokens × {n_samples} samples", strict)


def _round_epochs(exact: float, budget: float, one_epoch: float, what: str, strict: bool) -> int:
    """``max(1, round(exact))``; the clamp warns (``UserWarning``) or, with ``strict``, raises."""
    epochs = round(exact)
    if epochs < 1:
        msg = f"isodose budget {budget:.3g} FLOPs is {exact:.3g} of one epoch ({one_epoch:.3g} FLOPs for {what})"
        if strict:
            raise PrunelabError(msg + "; raise the budget or shrink the run")
        warnings.warn(msg + "; clamped to 1 epoch, which overspends the budget", UserWarning, stacklevel=3)
        epochs = 1
    return int(epochs)


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise PrunelabError(f"{name} must be positive, got {v!r}")


def _check_budget(budget: float) -> None:
    if not budget > 0:
        raise PrunelabError(f"isodose budget must be positive, got {budget!r}")


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


# ----------------------------------------------------------------------------------------------------------
# the one epoch solver
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IsodoseSolution:
    """Epochs of one mechanism under the budget of a reference run, by one cost ``formula``.

    ``budget`` and ``epoch_cost`` are in the formula's FLOPs (study: ``6·P·L·N·E``; honest: ``T·(2F + 6P)``);
    ``flops`` / ``honest_flops`` are the planned run's cost by both formulas with the rounded epochs.
    """

    formula: str
    epochs: int
    exact_epochs: float
    budget: float
    epoch_cost: float
    clamped: bool
    flops: float
    honest_flops: float | None  # None when F (the base's FLOPs per token) was not given (study formula)


def solve_isodose(formula: str, reference_trainable: int, reference_epochs: float, trainable: int, seq_len: int,
                  n_samples: int, *, base_flops_per_token: float | None = None, tokens_per_epoch: float | None = None,
                  strict: bool = False) -> IsodoseSolution:
    """Epochs ``E = max(1, round(B / c))`` for a mechanism with ``trainable`` params, where ``B`` is the
    reference run's cost (``reference_trainable`` params for ``reference_epochs``) and ``c`` one epoch's cost,
    both by ``formula`` (module docstring): study ``c = 6·P·L·N``; honest ``c = T_epoch·(2F + 6P)``.

    ``tokens_per_epoch`` = tokens the model processes per epoch (default ``N·L``, i.e. padded to ``L``; the
    real token count for padding-free training) — it only matters for ``honest`` (the study's formula is
    defined in ``L·N``). ``base_flops_per_token`` = ``F`` (:func:`base_forward_flops_per_token`), required
    by ``honest``. The reference mechanism itself always gets ``reference_epochs`` (when an integer) under
    either formula. A clamp to 1 epoch warns (``UserWarning``); ``strict`` raises instead.
    """
    formula = check_formula(formula)
    _check_positive(trainable_params=trainable, reference_trainable_params=reference_trainable, seq_len=seq_len,
                    n_samples=n_samples, reference_epochs=reference_epochs)
    tokens = float(tokens_per_epoch) if tokens_per_epoch is not None else float(seq_len * n_samples)
    _check_positive(tokens_per_epoch=tokens)
    if formula == "honest" and base_flops_per_token is None:
        raise PrunelabError("the honest isodose formula needs the base model's forward FLOPs per token (F)")
    if base_flops_per_token is not None:
        _check_positive(base_flops_per_token=base_flops_per_token)

    def cost(p: int) -> float:
        if formula == "study":
            return epoch_flops(p, seq_len, n_samples)
        return honest_flops(float(base_flops_per_token), p, tokens)  # type: ignore[arg-type]

    budget = cost(reference_trainable) * reference_epochs
    one_epoch = cost(trainable)
    exact = budget / one_epoch
    what = f"{trainable:,} trainable params × {seq_len} tokens × {n_samples} samples"
    if formula == "honest":
        what += ", honest formula T·(2F + 6P)"
    epochs = _round_epochs(exact, budget, one_epoch, what, strict)
    honest = None if base_flops_per_token is None else honest_flops(float(base_flops_per_token), trainable,
                                                                     tokens * epochs)
    return IsodoseSolution(formula=formula, epochs=epochs, exact_epochs=exact, budget=budget, epoch_cost=one_epoch,
                           clamped=round(exact) < 1, flops=train_flops(trainable, seq_len, n_samples, epochs),
                           honest_flops=honest)


@dataclass
class IsodosePlan:
    """Epochs and costs of one mechanism under a budget (``budget`` in the ``formula``'s FLOPs)."""

    mechanism: str
    trainable_params: int
    epochs: int
    exact_epochs: float
    flops: float          # 6·P·L·N·E with the rounded epochs
    epoch_flops: float    # 6·P·L·N
    budget: float
    clamped: bool
    formula: str = "study"
    honest_flops: float = 0.0  # T·(2F + 6P) with the rounded epochs


def plan_isodose(model: nn.Module, mechanisms: list, reference: str | tuple[str, float], seq_len: int,
                 n_samples: int, formula: str = "study", tokens_per_epoch: float | None = None) -> list[IsodosePlan]:
    """Epochs for each mechanism under the budget of ``reference`` (``"ketamine:3"`` or ``(name, epochs)``)
    by ``formula`` (:func:`solve_isodose`), with both costs of every plan; no training.

    Every plan's cost (by ``formula``) is within half an epoch's cost of the budget, except when clamped to 1.
    """
    from prunelab.recover.mechanisms import count_trainable_lora_params, get_mechanism

    check_formula(formula)
    ref_name, ref_epochs = parse_reference(reference) if isinstance(reference, str) else reference
    p_ref = count_trainable_lora_params(model, get_mechanism(ref_name))
    base_f = base_forward_flops_per_token(model, seq_len)
    plans = []
    for mech in mechanisms:
        m = get_mechanism(mech)
        p = count_trainable_lora_params(model, m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a clamp is in the plan's `clamped`
            sol = solve_isodose(formula, p_ref, ref_epochs, p, seq_len, n_samples, base_flops_per_token=base_f,
                                tokens_per_epoch=tokens_per_epoch)
        plans.append(IsodosePlan(m.name, p, sol.epochs, sol.exact_epochs, sol.flops, epoch_flops(p, seq_len, n_samples),
                                 sol.budget, sol.clamped, formula, float(sol.honest_flops or 0.0)))
    return plans
