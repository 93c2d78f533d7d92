"""One pass over calibration batches collecting what data-driven width criteria need.

* **Activation norms** (OptiPFair / CFSP eq. 8): for every GLU neuron ``i`` the L2 norm of its down-projection
  input over a batch, ``‖X_d^i‖ = sqrt(Σ_{b,s} X_d[b,s,i]²)``, *summed over batches* — exactly how OptiPFair's
  ``setup_mlp_hooks_for_importance`` accumulates it (so the result depends on the batch size, as theirs does).
  The same statistic per attention head is taken on the o_proj input (the head's ``head_dim`` slice).
* **Gradients** for first-order Taylor scores: the next-token NLL of each batch (HF ``labels=input_ids``, mean
  over the batch's predicted tokens) is back-propagated and gradients accumulate over batches,
  ``G = Σ_batches ∂L_b/∂W`` (as LLM-Pruner and torch-pruning's ``TaylorImportance`` do). Only the decoder-block
  projection weights (and their biases) require grad, which skips the large embedding/lm_head weight gradient.
* **Layer similarity** for Adapt-Pruner: ``mean_t cos(h_in_i[t], h_out_i[t])`` over every calibration token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for


@dataclass
class CalibrationStats:
    """Per-layer statistics from :func:`collect_statistics` (lists are indexed by decoder layer)."""

    mlp_act_norms: list[torch.Tensor] = field(default_factory=list)   # [I_l] each
    head_act_norms: list[torch.Tensor] = field(default_factory=list)  # [num_heads_l] each
    layer_cos: list[float] = field(default_factory=list)              # mean cos(h_in, h_out)
    mean_loss: float | None = None
    #: ``{nn.Linear: (|G ⊙ W| for the weight, |G ⊙ b| for the bias or None)}`` — element-wise Taylor saliency.
    saliency: dict = field(default_factory=dict)
    tokens: int = 0


def check_calibration(calibration) -> torch.Tensor:
    """Validate a calibration batch: a 2-D LongTensor ``[n_samples, seq_len]`` with seq_len ≥ 2."""
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.dtype != torch.long:
        raise PrunelabError("calibration must be a LongTensor of token ids shaped [n_samples, seq_len]")
    if calibration.shape[0] < 1 or calibration.shape[1] < 2:
        raise PrunelabError(f"calibration batch too small: {tuple(calibration.shape)} (need ≥1 sample of ≥2 tokens)")
    return calibration


def _distinct_linears(adapter, layer) -> dict[str, nn.Linear]:
    return {name: adapter.module(layer, name) for name in ("q", "k", "v", "o", "gate", "up", "down")}


def _progress(total: int, description: str, enabled: bool):
    from rich.progress import Progress

    prog = Progress(transient=True, disable=not enabled)
    task = prog.add_task(description, total=total)
    return prog, task


def collect_statistics(
    model: nn.Module,
    calibration: torch.Tensor,
    *,
    activations: bool = False,
    gradients: bool = False,
    layer_similarity: bool = False,
    batch_size: int = 8,
    progress: bool = True,
) -> CalibrationStats:
    """Run ``calibration`` through ``model`` once, collecting the requested statistics (see module docstring).

    The model is left unchanged (eval mode, grads cleared, ``requires_grad`` flags restored).
    """
    calibration = check_calibration(calibration)
    if batch_size < 1:
        raise PrunelabError(f"batch_size must be ≥ 1, got {batch_size}")
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    device = next(model.parameters()).device
    stats = CalibrationStats()
    handles = []
    cos_sum = [0.0] * len(layers)
    cos_n = [0] * len(layers)

    if activations:
        for i, layer in enumerate(layers):
            width = adapter.mlp_width(layer)
            lay = adapter.head_layout(layer)
            stats.mlp_act_norms.append(torch.zeros(width, dtype=torch.float32))
            stats.head_act_norms.append(torch.zeros(lay.num_heads, dtype=torch.float32))

            def down_hook(mod, inp, out, i=i):
                x = inp[0].detach().float()
                stats.mlp_act_norms[i] += torch.norm(x, p=2, dim=(0, 1)).cpu()

            def o_hook(mod, inp, out, i=i, nh=lay.num_heads, d=lay.head_dim):
                x = inp[0].detach().float()
                x = x.reshape(x.shape[0], x.shape[1], nh, d)
                stats.head_act_norms[i] += torch.sqrt((x * x).sum(dim=(0, 1, 3))).cpu()

            handles.append(adapter.module(layer, "down").register_forward_hook(down_hook))
            handles.append(adapter.module(layer, "o").register_forward_hook(o_hook))

    if layer_similarity:
        for i, layer in enumerate(layers):

            def block_hook(mod, args, kwargs, out, i=i):
                h_in = args[0] if args else kwargs["hidden_states"]
                h_out = out[0] if isinstance(out, tuple) else out
                cos = F.cosine_similarity(h_in.detach().float(), h_out.detach().float(), dim=-1)
                cos_sum[i] += float(cos.sum())
                cos_n[i] += cos.numel()

            handles.append(layer.register_forward_hook(block_hook, with_kwargs=True))

    flags = {id(p): p.requires_grad for p in model.parameters()}
    params = list(model.parameters())
    total_loss = 0.0
    n_batches = 0
    was_training = model.training
    model.eval()
    try:
        if gradients:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
            for layer in layers:
                for lin in _distinct_linears(adapter, layer).values():
                    lin.weight.requires_grad_(True)
                    if lin.bias is not None:
                        lin.bias.requires_grad_(True)
        prog, task = _progress(calibration.shape[0], "calibration", progress)
        with prog:
            for start in range(0, calibration.shape[0], batch_size):
                batch = calibration[start : start + batch_size].to(device)
                with torch.set_grad_enabled(gradients):
                    out = model(input_ids=batch, labels=batch if gradients else None, use_cache=False)
                    if gradients:
                        if not torch.isfinite(out.loss):
                            raise PrunelabError("calibration loss is not finite (NaN/inf): cannot compute Taylor scores")
                        out.loss.backward()
                        total_loss += float(out.loss.detach())
                n_batches += 1
                stats.tokens += batch.numel()
                prog.advance(task, batch.shape[0])
        if gradients:
            stats.mean_loss = total_loss / n_batches
            for layer in layers:
                for lin in _distinct_linears(adapter, layer).values():
                    key = lin  # fused Phi3 projections appear under several logical names: score once
                    if key in stats.saliency:
                        continue
                    w = (lin.weight.grad * lin.weight.detach()).abs().float()
                    b = (lin.bias.grad * lin.bias.detach()).abs().float() if lin.bias is not None else None
                    stats.saliency[key] = (w, b)
    finally:
        for h in handles:
            h.remove()
        for p in params:
            p.grad = None
            p.requires_grad_(flags[id(p)])
        model.train(was_training)
    if layer_similarity:
        stats.layer_cos = [s / max(n, 1) for s, n in zip(cos_sum, cos_n)]
    return stats
