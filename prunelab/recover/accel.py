"""Adapt-Accel: incremental pruning interleaved with training (study: adapt-pruner, §3.2, Fig. 3, App. settings).

From a start size to a target size in ``N`` prune/train phases:

* every phase keeps ``P = (target / start)^(1/N)`` of the current prunable size, so after ``N`` phases the model
  is at ``target``. Sizes are MLP parameters (``3·H·Σ I_l``; the pruners remove GLU neurons, and a neuron's
  gate row, up row and down column are its parameters), so ``P`` is also the per-phase neuron keep ratio.
  ``target_ratio`` is the overall fraction removed, as in ``prunelab prune width --ratio``:
  ``target / start = 1 − target_ratio``. Cumulative widths follow ``round(I_start · P^(i+1))`` per layer, so
  rounding never accumulates. With ``pruner="adaptive"`` (Adapt-Pruner, layer-adaptive neurons + heads) the
  size is the decoder-block parameter count, as in the paper, and each phase calls ``adapt_prune`` with
  ``ratio = 1 − start·P^(i+1) / current``.
* phase ``i`` (0-based) trains on a disjoint random share ``|D_i| = |D| · 2(i+1) / (N(N+1))`` of the data
  (growing linearly; later phases prune more important weights and need more recovery). Shares are
  rounded by largest remainder so they sum to ``|D|`` exactly.
* one warmup–stable–decay (WSD, Hu et al. 2024) learning-rate schedule spans all phases: 5 % linear warm-up,
  constant ``max_lr``, final 10 % linear decay to ``min_lr`` (2e-5 → 2e-6). Each phase's optimizer gets a
  ``torch.optim.lr_scheduler.LambdaLR`` that reads the schedule at the *global* step (phase offset + local
  step), so the concatenated phases trace one WSD curve. (The optimizer itself is rebuilt every phase,
  since pruning changes the parameter shapes.)
* training is a full fine-tune (``mode="full"``) or LoRA (``mode="lora"``: the mechanism's r/α/targets/dropout,
  merged back after each phase so the next pruning step sees plain weights; its own lr is replaced by the WSD
  schedule). One epoch over each share, AdamW (no weight decay), batch 4 × accumulation 4 by default.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError

WARMUP_FRACTION = 0.05
DECAY_FRACTION = 0.10
MAX_LR = 2e-5
MIN_LR = 2e-6


# ----------------------------------------------------------------------------------------------------------
# pure pieces (tested on their own)
# ----------------------------------------------------------------------------------------------------------
def phase_keep_ratio(start: float, target: float, phases: int) -> float:
    """``P = (target / start)^(1/N)``."""
    if phases < 1:
        raise PrunelabError(f"need at least one phase, got {phases}")
    if not 0 < target <= start:
        raise PrunelabError(f"target size must be in (0, start], got target {target} for start {start}")
    return (target / start) ** (1.0 / phases)


def data_shares(n: int, phases: int) -> list[int]:
    """``|D_i| = |D|·2(i+1)/(N(N+1))`` for i = 0..N−1, rounded by largest remainder (sums to ``n`` exactly)."""
    if phases < 1:
        raise PrunelabError(f"need at least one phase, got {phases}")
    exact = [n * 2 * (i + 1) / (phases * (phases + 1)) for i in range(phases)]
    shares = [math.floor(x) for x in exact]
    # ties go to the later (larger) phase
    order = sorted(range(phases), key=lambda i: (exact[i] - shares[i], i), reverse=True)
    for i in order[: n - sum(shares)]:
        shares[i] += 1
    if min(shares) < 1:
        raise PrunelabError(
            f"{n} training samples are too few for {phases} phases (phase 0 would get {min(shares)}); "
            f"need at least {phases * (phases + 1) // 2}"
        )
    return shares


def split_data(records: Sequence[Any], phases: int, seed: int = 0) -> list[list[Any]]:
    """Disjoint random shares of ``records`` with the sizes of :func:`data_shares` (seeded, no replacement)."""
    import random

    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    out, start = [], 0
    for size in data_shares(len(records), phases):
        out.append([records[j] for j in order[start : start + size]])
        start += size
    return out


def wsd_lr(step: int, total_steps: int, max_lr: float = MAX_LR, min_lr: float = MIN_LR,
           warmup: float = WARMUP_FRACTION, decay: float = DECAY_FRACTION) -> float:
    """Learning rate at optimizer step ``step`` (0-based) of a WSD schedule of ``total_steps`` steps.

    Warm-up ``W = ceil(warmup·T)`` steps: ``max·(s+1)/W``; decay over the last ``D = ceil(decay·T)`` steps:
    linear from ``max`` to ``min`` reached at the final step; ``max`` in between.
    """
    if total_steps < 1:
        raise PrunelabError(f"the schedule needs at least one step, got {total_steps}")
    w = math.ceil(warmup * total_steps) if warmup > 0 else 0
    d = math.ceil(decay * total_steps) if decay > 0 else 0
    if step < w:
        return max_lr * (step + 1) / w
    decay_start = total_steps - d
    if d and step >= decay_start:
        frac = (step - decay_start + 1) / d
        return max_lr - (max_lr - min_lr) * min(frac, 1.0)
    return max_lr


def wsd_scheduler(optimizer, offset: int, total_steps: int, max_lr: float = MAX_LR, min_lr: float = MIN_LR,
                  warmup: float = WARMUP_FRACTION, decay: float = DECAY_FRACTION):
    """A ``LambdaLR`` for one phase that continues the global WSD curve from step ``offset``.

    The optimizer's base lr must be ``max_lr`` (LambdaLR multiplies it by the lambda).
    """
    from torch.optim.lr_scheduler import LambdaLR

    for group in optimizer.param_groups:
        group["lr"] = max_lr
        group["initial_lr"] = max_lr
    return LambdaLR(optimizer, lambda s: wsd_lr(offset + s, total_steps, max_lr, min_lr, warmup, decay) / max_lr)


def trainer_steps(n_samples: int, batch_size: int, grad_accum: int, epochs: int = 1) -> int:
    """Optimizer steps the HF Trainer takes: ``ceil(ceil(n / batch) / accum)`` per epoch (last step partial)."""
    return math.ceil(math.ceil(n_samples / batch_size) / grad_accum) * epochs


def block_params(model: nn.Module) -> int:
    """Decoder-block parameters (attention + MLP + norms): the size Adapt-Pruner's ratio refers to."""
    from prunelab.models import adapter_for

    return sum(p.numel() for layer in adapter_for(model).layers(model) for p in layer.parameters())


def mlp_params(model: nn.Module) -> int:
    """Prunable size: GLU parameters ``Σ_l numel(gate, up, down)`` (biases included when present)."""
    from prunelab.models import adapter_for

    adapter = adapter_for(model)
    total = 0
    for layer in adapter.layers(model):
        seen = set()
        for name in ("gate", "up", "down"):
            mod = adapter.module(layer, name)
            if id(mod) not in seen:
                seen.add(id(mod))
                total += sum(p.numel() for p in mod.parameters())
    return total


# ----------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------
@dataclass
class AccelPhase:
    phase: int
    keep_ratio: float                # achieved: size after / size before this phase
    size_after: int                  # MLP params (width pruner) or decoder-block params (adaptive)
    widths_after: list[int]
    mlp_params_after: int
    params_after: int
    n_samples: int
    steps: int
    lr_first: float
    lr_last: float
    loss_first: float
    loss_last: float
    tokens: int
    train_seconds: float
    prune_seconds: float


@dataclass
class AccelResult:
    """Adapt-Accel run. ``lr_schedule`` has the lr of every global optimizer step (one WSD curve)."""

    target_ratio: float
    phases: int
    keep_ratio: float                # P per phase
    mode: str
    pruner: str
    criterion: str
    mechanism: str | None
    n_samples: int
    shares: list[int]
    params_before: int
    params_after: int
    mlp_params_before: int
    mlp_params_after: int
    achieved_mlp_ratio: float        # mlp_after / mlp_before (width pruner target: 1 − target_ratio)
    size_measure: str                # "mlp_params" (width/custom pruner) or "block_params" (adaptive)
    size_before: int
    size_after: int
    achieved_size_ratio: float       # size_after / size_before (target: 1 − target_ratio)
    total_steps: int
    tokens: int
    honest_flops: float
    seconds: float
    phase_results: list[AccelPhase] = field(default_factory=list)
    lr_schedule: list[float] = field(default_factory=list)
    loss_history: list[dict] = field(default_factory=list)  # global step, phase, loss, lr
    output_dir: str | None = None

    model = None  # plain attribute (not a field): the pruned + trained model, kept out of JSON


# ----------------------------------------------------------------------------------------------------------
# pruning step
# ----------------------------------------------------------------------------------------------------------
def _default_prune_step(pruner: str, criterion: str, calibration_samples: int, calibration_seq_len: int,
                        seed: int, progress: bool) -> Callable[[nn.Module, Any, list[int]], None]:
    """``step(model, tokenizer, target_widths)``: prune each layer to ``target_widths`` with the named pruner."""

    def width_step(model, tokenizer, target_widths):
        from prunelab.models import adapter_for
        from prunelab.prune.width import prune_width

        widths = [adapter_for(model).mlp_width(layer) for layer in adapter_for(model).layers(model)]
        if len(set(widths)) != 1 or len(set(target_widths)) != 1:
            raise PrunelabError("pruner 'width' is uniform: the model's MLP widths differ between layers; use --pruner adaptive")
        w, k = widths[0], target_widths[0]
        if k >= w:
            return
        # prune_width removes int(ratio·w) neurons; (w − k)/w gives exactly w − k (it guards float error)
        prune_width(model, tokenizer, criterion=criterion, ratio=(w - k) / w, seed=seed,
                    calibration_samples=calibration_samples, calibration_seq_len=calibration_seq_len,
                    progress=progress)

    def adaptive_step(model, tokenizer, target_size):
        try:
            from prunelab.prune.adaptive import adapt_prune
        except ImportError as exc:
            raise PrunelabError(f"pruner 'adaptive' is not available in this build ({exc})") from None
        ratio = 1.0 - target_size / block_params(model)  # adapt_prune's ratio is relative to the current blocks
        if ratio <= 0:
            return
        adapt_prune(model, tokenizer, ratio=ratio, seed=seed, calibration_samples=calibration_samples,
                    calibration_seq_len=calibration_seq_len, progress=progress)

    if pruner == "width":
        return width_step
    if pruner == "adaptive":
        return adaptive_step
    raise PrunelabError(f"unknown pruner '{pruner}'; known: width, adaptive")


# ----------------------------------------------------------------------------------------------------------
# accel
# ----------------------------------------------------------------------------------------------------------
def accel(model: nn.Module, tokenizer, records: Sequence[Any], target_ratio: float = 0.4, phases: int = 4, *,
          mode: str = "lora", mechanism: str = "ketamine", pruner: str = "width", criterion: str = "taylor",
          max_lr: float = MAX_LR, min_lr: float = MIN_LR, warmup: float = WARMUP_FRACTION,
          decay: float = DECAY_FRACTION, seq_len: int = 512, pad_to_max: bool = True, batch_size: int = 4,
          grad_accum: int = 4, seed: int = 0, calibration_samples: int = 128, calibration_seq_len: int = 128,
          prune_step: Callable[[nn.Module, Any, list[int]], None] | None = None, output_dir: str | Path | None = None,
          progress: bool = True, metadata: dict | None = None) -> AccelResult:
    """Adapt-Accel (see module docstring): ``phases`` × (prune by ``P`` → train on share ``D_i``), one WSD schedule.

    ``prune_step(model, tokenizer, target_widths)`` overrides the pruner (it must bring every layer's MLP to
    ``target_widths``). The model is edited in place; ``output_dir`` (atomic) receives the final model in HF
    format plus ``accel.json``.
    """
    from peft import get_peft_model
    from transformers import set_seed

    from prunelab.models import adapter_for, count_parameters
    from prunelab.recover.isodose import base_forward_flops_per_token, honest_flops
    from prunelab.recover.mechanisms import count_trainable_lora_params, get_mechanism
    from prunelab.recover.train import lora_config, run_trainer, tokenize_records

    if not 0 < target_ratio < 1:
        raise PrunelabError(f"target ratio (fraction of MLP size removed) must be in (0, 1), got {target_ratio}")
    if mode not in ("lora", "full"):
        raise PrunelabError(f"mode must be 'lora' or 'full', got '{mode}'")
    if not (0 < min_lr <= max_lr):
        raise PrunelabError(f"need 0 < min_lr ≤ max_lr, got {min_lr}, {max_lr}")
    if not (0 <= warmup < 1 and 0 <= decay < 1 and warmup + decay <= 1):
        raise PrunelabError(f"warm-up and decay fractions must be in [0, 1) and sum to ≤ 1, got {warmup}, {decay}")
    custom_pruner = prune_step is not None
    mech = get_mechanism(mechanism) if mode == "lora" else None
    if mech is not None:
        count_trainable_lora_params(model, mech)  # validates targets
    if prune_step is None:
        if pruner == "width":
            from prunelab.prune.criteria import CRITERIA

            CRITERIA.get(criterion)
        prune_step = _default_prune_step(pruner, criterion, calibration_samples, calibration_seq_len, seed, progress)
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    start_widths = [adapter.mlp_width(layer) for layer in layers]
    keep = phase_keep_ratio(1.0, 1.0 - target_ratio, phases)
    by_size = pruner == "adaptive" and not custom_pruner  # Adapt-Pruner: sizes are decoder-block params
    size_fn = block_params if by_size else mlp_params
    size_before = size_fn(model)
    if by_size:
        plan = [size_before * keep ** (i + 1) for i in range(phases)]
    else:
        plan = [[max(1, round(w * keep ** (i + 1))) for w in start_widths] for i in range(phases)]
    shares_data = split_data(records, phases, seed)  # validates |D| vs N
    datasets = [tokenize_records(tokenizer, d, seq_len=seq_len, pad_to_max=pad_to_max) for d in shares_data]
    steps_per_phase = [trainer_steps(len(d), batch_size, grad_accum) for d in datasets]
    total_steps = sum(steps_per_phase)
    out = Path(output_dir) if output_dir is not None else None

    params_before = count_parameters(model).total
    mlp_before = mlp_params(model)
    result = AccelResult(
        target_ratio=target_ratio, phases=phases, keep_ratio=keep, mode=mode, pruner="custom" if custom_pruner else pruner,
        criterion=criterion, mechanism=mech.name if mech else None, n_samples=len(records),
        shares=[len(d) for d in datasets], params_before=params_before, params_after=params_before,
        mlp_params_before=mlp_before, mlp_params_after=mlp_before, achieved_mlp_ratio=1.0,
        size_measure="block_params" if by_size else "mlp_params", size_before=size_before, size_after=size_before,
        achieved_size_ratio=1.0,
        total_steps=total_steps, tokens=0, honest_flops=0.0, seconds=0.0,
        lr_schedule=[wsd_lr(s, total_steps, max_lr, min_lr, warmup, decay) for s in range(total_steps)],
        output_dir=str(out) if out else None,
    )
    t_start = time.perf_counter()
    offset = 0
    for i in range(phases):
        t0 = time.perf_counter()
        prune_step(model, tokenizer, plan[i])
        prune_seconds = time.perf_counter() - t0
        widths = [adapter.mlp_width(layer) for layer in adapter.layers(model)]
        if not by_size and widths != plan[i]:
            raise PrunelabError(f"phase {i}: the pruner left MLP widths {widths[:4]}…, expected {plan[i][:4]}…")

        base_f = base_forward_flops_per_token(model, seq_len)  # before LoRA layers are injected
        set_seed(seed + i)
        if mode == "lora":
            train_model = get_peft_model(model, lora_config(model, mech))
        else:
            train_model = model
            for p in model.parameters():
                p.requires_grad_(True)
        params = [p for p in train_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=max_lr, weight_decay=0.0)
        scheduler = wsd_scheduler(optimizer, offset, total_steps, max_lr, min_lr, warmup, decay)
        trainable = sum(p.numel() for p in params)
        stats = run_trainer(train_model, tokenizer, datasets[i], lr=max_lr, epochs=1, pad_to_max=pad_to_max,
                            batch_size=batch_size, grad_accum=grad_accum, seed=seed + i,
                            optimizers=(optimizer, scheduler), description=f"accel phase {i + 1}/{phases}",
                            progress=progress)
        if stats.steps != steps_per_phase[i]:
            raise PrunelabError(f"internal: phase {i} took {stats.steps} steps, the WSD plan assumed {steps_per_phase[i]}")
        if mode == "lora":
            model = train_model.merge_and_unload()
        else:
            for p in model.parameters():
                p.requires_grad_(False)
        model.eval()
        for h in stats.loss_history:
            result.loss_history.append({"step": offset + h["step"], "phase": i, "loss": h["loss"], "lr": h["lr"]})
        lrs = [h["lr"] for h in stats.loss_history]
        losses = [h["loss"] for h in stats.loss_history]
        result.tokens += stats.tokens
        result.honest_flops += honest_flops(base_f, trainable, stats.tokens, full_finetune=(mode == "full"))
        size_now = size_fn(model)
        result.phase_results.append(AccelPhase(
            phase=i, keep_ratio=size_now / (result.phase_results[-1].size_after if result.phase_results else size_before),
            size_after=size_now,
            widths_after=widths, mlp_params_after=mlp_params(model), params_after=count_parameters(model).total,
            n_samples=len(datasets[i]), steps=stats.steps, lr_first=lrs[0] if lrs else float("nan"),
            lr_last=lrs[-1] if lrs else float("nan"), loss_first=losses[0] if losses else float("nan"),
            loss_last=losses[-1] if losses else float("nan"), tokens=stats.tokens, train_seconds=stats.seconds,
            prune_seconds=prune_seconds,
        ))
        offset += stats.steps

    result.params_after = count_parameters(model).total
    result.mlp_params_after = mlp_params(model)
    result.achieved_mlp_ratio = result.mlp_params_after / mlp_before
    result.size_after = size_fn(model)
    result.achieved_size_ratio = result.size_after / size_before
    result.seconds = time.perf_counter() - t_start
    result.model = model
    if out is not None:
        from prunelab.atomic import to_jsonable
        from prunelab.models import save

        save(model, tokenizer, out, metadata={"accel": to_jsonable(result), **(metadata or {})})
    return result
