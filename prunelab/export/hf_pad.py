"""Pad a per-layer pruned model back to uniform shapes with exact zeros, so vanilla transformers loads it.

Per-layer widths (Adapt-Pruner, per-layer head pruning) are stored in ``config.per_layer_config``, which the
Llama-family modelling code of transformers 5.23 does not read. Padding every block to one shape makes the
checkpoint a plain Llama again — any engine that loads HF Llama runs it — without changing a single output:

* **MLP** (SwiGLU ``down(silu(gate x) * up x)``): a padded neuron has a zero gate row, a zero up row and a
  zero down column. ``silu(0) * 0 = 0`` and its down column adds nothing, so the MLP output is unchanged.
* **Attention**: a padded query head has zero q rows and zero o_proj columns. Its scores are all 0, so its
  softmax is uniform and it returns an average of (real or zero) values — which its zero o_proj columns then
  multiply by 0. A padded KV group has zero k/v rows and only padded query heads. The real heads' scores,
  softmax and values are untouched, so the attention output is unchanged.

Only the summation order of the matrix products changes (longer rows of zeros), so logits agree to float
rounding (the tests state the tolerance), at the cost of dense-model speed and size.

GQA layout: block ``i`` with ``nq_i`` query heads in ``nkv_i`` groups (``g_i = nq_i / nkv_i`` per group) is
placed into ``NKV = max nkv_i`` groups of ``G = max g_i`` query slots; group ``j``'s heads take its first
``g_i`` slots, so query head ``h`` still reads the same K/V head as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for
from prunelab.models.counts import count_parameters
from prunelab.models.surgery import _ensure_explicit_head_dim, base_config, layer_shapes, replace_layer, sync_config


@dataclass
class PadReport:
    """The uniform shape every block was padded to, and what that cost."""

    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    widths_before: list[int]
    heads_before: list[int]
    kv_heads_before: list[int]
    params_before: int
    params_after: int

    @property
    def was_uniform(self) -> bool:
        return (len(set(self.widths_before)) == 1 and len(set(self.heads_before)) == 1
                and len(set(self.kv_heads_before)) == 1)


def uniform_shape(model: nn.Module) -> tuple[int, int, int]:
    """``(intermediate_size, num_heads, num_kv_heads)`` every block fits into (see the module docstring)."""
    shapes = layer_shapes(model)
    width = max(s["intermediate_size"] for s in shapes)
    nkv = max(s["num_key_value_heads"] for s in shapes)
    group = max(s["num_attention_heads"] // s["num_key_value_heads"] for s in shapes)
    return width, nkv * group, nkv


def pad_uniform(model: nn.Module) -> PadReport:
    """Pad every block of ``model`` (in place) to :func:`uniform_shape` with exact zeros; sync the config."""
    adapter = adapter_for(model)
    if adapter.fused_qkv or adapter.fused_gate_up:
        raise PrunelabError(f"--pad-uniform does not support the fused {adapter.family} layout; supported: "
                            "llama, mistral, qwen2, qwen3, gemma2")
    shapes = layer_shapes(model)
    width, nq, nkv = uniform_shape(model)
    cfg = base_config(model.config)
    if cfg.hidden_size % nq != 0:
        # transformers validates hidden_size % num_attention_heads for a global head count
        raise PrunelabError(f"cannot pad to a uniform {nq} attention heads: transformers requires the hidden size "
                            f"({cfg.hidden_size}) to be a multiple of the head count")
    before = count_parameters(model).total
    _ensure_explicit_head_dim(model.config)
    layers = adapter.layers(model)
    for i, layer in enumerate(layers):
        lay = adapter.head_layout(layer)
        sd = {k: v.detach() for k, v in layer.state_dict().items()}
        _pad_mlp(sd, adapter, adapter.mlp_width(layer), width)
        _pad_attention(sd, adapter, lay.num_heads, lay.num_kv_heads, lay.head_dim, nq, nkv)
        replace_layer(model, i, {"intermediate_size": width, "num_attention_heads": nq, "num_key_value_heads": nkv},
                      sd)
    # every block now has the same shape: the overrides are dropped and the globals set
    model.config.__dict__.pop("_heterogeneity_spec", None)
    sync_config(model)
    return PadReport(intermediate_size=width, num_heads=nq, num_kv_heads=nkv,
                     widths_before=[s["intermediate_size"] for s in shapes],
                     heads_before=[s["num_attention_heads"] for s in shapes],
                     kv_heads_before=[s["num_key_value_heads"] for s in shapes],
                     params_before=before, params_after=count_parameters(model).total)


def _scatter_rows(t: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    out = t.new_zeros((n, *t.shape[1:]))
    out[rows] = t
    return out


def _pad_mlp(sd: dict, adapter, width: int, target: int) -> None:
    if width == target:
        return
    rows = torch.arange(width)
    for name in ("gate", "up"):
        for suffix in ("weight", "bias"):
            key = f"{adapter.proj_names[name]}.{suffix}"
            if key in sd:
                sd[key] = _scatter_rows(sd[key], rows, target)
    key = f"{adapter.proj_names['down']}.weight"
    sd[key] = _scatter_rows(sd[key].T, rows, target).T.contiguous()


def _pad_attention(sd: dict, adapter, nq: int, nkv: int, d: int, tq: int, tkv: int) -> None:
    if (nq, nkv) == (tq, tkv):
        return
    g, tg = nq // nkv, tq // tkv
    # query head h (group h // g, slot h % g) → target head (h // g) * tg + h % g; kv group j → j
    q_heads = torch.tensor([(h // g) * tg + h % g for h in range(nq)])
    q_rows = (q_heads[:, None] * d + torch.arange(d)).flatten()
    kv_rows = torch.arange(nkv * d)
    for name, rows, n in (("q", q_rows, tq * d), ("k", kv_rows, tkv * d), ("v", kv_rows, tkv * d)):
        for suffix in ("weight", "bias"):
            key = f"{adapter.proj_names[name]}.{suffix}"
            if key in sd:
                sd[key] = _scatter_rows(sd[key], rows, n)
    key = f"{adapter.proj_names['o']}.weight"
    sd[key] = _scatter_rows(sd[key].T, q_rows, tq * d).T.contiguous()
