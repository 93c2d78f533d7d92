"""Structural surgery on decoder blocks: remove GLU neurons, attention heads (GQA-aware) or whole blocks.

Every edit computes the sliced weights, builds a *fresh* decoder layer with the family's own HF class from
a per-layer config (``config.per_layer_config[i]`` semantics), and loads the sliced weights into it. The same
constructor path is used when a pruned checkpoint is reloaded (:mod:`prunelab.models.io`), so a pruned model in
memory and the same model reloaded from disk are built identically — that is what makes logits match.

Per-layer shapes are then written back to ``model.config`` by :func:`sync_config`: uniform shapes become the
global fields (plain ``from_pretrained`` works), non-uniform ones go into HF's ``per_layer_config``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.adapters import FamilyAdapter, HeadLayout, adapter_for

#: Config fields prunelab may vary per layer.
PER_LAYER_FIELDS = ("intermediate_size", "num_attention_heads", "num_key_value_heads")


# ----------------------------------------------------------------------------------------------------------
# config helpers
# ----------------------------------------------------------------------------------------------------------
def base_config(config):
    """A homogeneous copy of ``config`` (per-layer overrides stripped, global fields readable)."""
    cfg = copy.deepcopy(config)
    cfg.__dict__.pop("_heterogeneity_spec", None)
    cfg.__dict__.pop("allow_global_per_layer_attribute_access", None)
    return cfg


def layer_config(config, overrides: dict):
    """Config for one decoder layer: the global config with ``overrides`` applied (HF per-layer view semantics)."""
    cfg = base_config(config)
    for key, value in overrides.items():
        # object.__setattr__ bypasses strict-dataclass validation (e.g. hidden_size % num_attention_heads),
        # which is about the *global* layout and does not hold for a pruned layer with explicit head_dim.
        object.__setattr__(cfg, key, value)
    return cfg


def _ensure_explicit_head_dim(config) -> None:
    """Pin ``head_dim`` in the config: once heads are pruned it can no longer be derived as hidden/heads."""
    cfg = base_config(config)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    config.__dict__["head_dim"] = head_dim


def layer_shapes(model: nn.Module) -> list[dict[str, int]]:
    """Actual per-layer shapes read from the weights: intermediate_size, num_attention_heads, num_key_value_heads."""
    adapter = adapter_for(model)
    return [_shape_of(adapter, layer) for layer in adapter.layers(model)]


def _shape_of(adapter: FamilyAdapter, layer: nn.Module) -> dict[str, int]:
    """One layer's :data:`PER_LAYER_FIELDS`, read from its weights."""
    lay = adapter.head_layout(layer)
    return {
        "intermediate_size": adapter.mlp_width(layer),
        "num_attention_heads": lay.num_heads,
        "num_key_value_heads": lay.num_kv_heads,
    }


def _global_heads_valid(config, num_heads: int) -> bool:
    """Whether HF's config validation would accept ``num_heads`` as the global head count."""
    return config.hidden_size % num_heads == 0


def sync_config(model: nn.Module) -> None:
    """Write the model's actual per-layer shapes into ``model.config``.

    Uniform shapes become global fields (plain ``AutoModelForCausalLM.from_pretrained`` reloads them). A field
    that differs between layers — or a uniform head count that HF's validation rejects as a global value
    (``hidden_size % num_attention_heads != 0``) — goes into ``per_layer_config`` for every layer, keeping the
    original global value.
    """
    config = model.config
    shapes = layer_shapes(model)
    cfg = base_config(config)
    globals_: dict[str, int] = {}
    per_layer: dict[int, dict[str, int]] = {}
    for key in PER_LAYER_FIELDS:
        values = {s[key] for s in shapes}
        uniform = len(values) == 1
        if uniform and key == "num_attention_heads" and not _global_heads_valid(cfg, next(iter(values))):
            uniform = False
        if uniform and key == "num_key_value_heads" and "num_attention_heads" in {
            k for d in per_layer.values() for k in d
        }:
            uniform = False  # keep kv heads next to the per-layer q heads they divide
        if uniform:
            globals_[key] = next(iter(values))
        else:
            for i, s in enumerate(shapes):
                per_layer.setdefault(i, {})[key] = s[key]
    config.__dict__.pop("_heterogeneity_spec", None)
    for key, value in globals_.items():
        object.__setattr__(config, key, value)
    config.__dict__["num_hidden_layers"] = len(shapes)
    if per_layer:
        config.per_layer_config = per_layer
        # Generation utilities and user code read e.g. config.num_key_value_heads globally; allow it
        # (prunelab itself always reads shapes from the weights or config.per_layer_config[i]).
        config.allow_global_per_layer_attribute_access = True
    else:
        config.per_layer_config = None


def layer_overrides(config, layer_idx: int) -> dict:
    """The per-layer overrides of ``layer_idx`` currently stored in ``config`` (empty if homogeneous)."""
    spec = config.__dict__.get("_heterogeneity_spec")
    return dict(spec.per_layer_overrides.get(layer_idx, {})) if spec is not None else {}


# ----------------------------------------------------------------------------------------------------------
# layer rebuild
# ----------------------------------------------------------------------------------------------------------
def build_layer(model: nn.Module, layer_idx: int, overrides: dict, template: nn.Module | None = None) -> nn.Module:
    """A new, randomly initialised decoder layer of the model's own class with per-layer ``overrides``."""
    adapter = adapter_for(model)
    template = template if template is not None else adapter.layers(model)[layer_idx]
    cfg = layer_config(model.config, overrides)
    param = next(template.parameters())
    with torch.device(param.device):
        new = type(template)(cfg, layer_idx)
    return new.to(dtype=param.dtype)


def replace_layer(model: nn.Module, layer_idx: int, overrides: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Replace decoder layer ``layer_idx`` by one built with ``overrides`` and loaded from ``state_dict``."""
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    new = build_layer(model, layer_idx, overrides, template=layers[layer_idx])
    new.load_state_dict(state_dict, strict=True)
    new.train(layers[layer_idx].training)
    layers[layer_idx] = new
    return new


def _current_overrides(model: nn.Module, layer_idx: int) -> dict:
    adapter = adapter_for(model)
    return _shape_of(adapter, adapter.layers(model)[layer_idx])


# ----------------------------------------------------------------------------------------------------------
# MLP neurons
# ----------------------------------------------------------------------------------------------------------
def _as_index(keep: Sequence[int] | torch.Tensor, size: int, what: str) -> torch.Tensor:
    idx = torch.as_tensor(keep, dtype=torch.long).flatten()
    idx = torch.unique(idx)  # sorted, deduplicated: keeps the original order of surviving units
    if idx.numel() == 0:
        raise PrunelabError(f"cannot remove every {what}: at least one must be kept")
    if int(idx.min()) < 0 or int(idx.max()) >= size:
        raise PrunelabError(f"{what} index out of range [0, {size})")
    return idx


def prune_mlp_neurons(model: nn.Module, layer_idx: int, keep: Sequence[int] | torch.Tensor) -> nn.Module:
    """Keep only GLU neurons ``keep`` of layer ``layer_idx`` (gate row + up row + down column each).

    Returns the new layer. Does not touch ``model.config`` globals: call :func:`sync_config` after a batch of
    edits (the prune functions do).
    """
    adapter = adapter_for(model)
    layer = adapter.layers(model)[layer_idx]
    width = adapter.mlp_width(layer)
    idx = _as_index(keep, width, f"MLP neuron of layer {layer_idx}")
    # no clone: sliced entries are new tensors and load_state_dict copies the rest into the fresh layer
    sd = {k: v.detach() for k, v in layer.state_dict().items()}
    gate_path, up_path, down_path = (adapter.proj_names[n] for n in ("gate", "up", "down"))
    if adapter.fused_gate_up:
        rows = torch.cat([idx, idx + width])
        for suffix in ("weight", "bias"):
            key = f"{gate_path}.{suffix}"
            if key in sd:
                sd[key] = sd[key][rows]
    else:
        for path in (gate_path, up_path):
            for suffix in ("weight", "bias"):
                key = f"{path}.{suffix}"
                if key in sd:
                    sd[key] = sd[key][idx]
    sd[f"{down_path}.weight"] = sd[f"{down_path}.weight"][:, idx]
    overrides = _current_overrides(model, layer_idx)
    overrides["intermediate_size"] = int(idx.numel())
    return replace_layer(model, layer_idx, overrides, sd)


# ----------------------------------------------------------------------------------------------------------
# attention heads
# ----------------------------------------------------------------------------------------------------------
def check_gqa_keep(layout: HeadLayout, keep_heads: Iterable[int]) -> tuple[list[int], list[int]]:
    """Validate a set of query heads to keep under GQA; return ``(kept q heads, kept kv groups)``.

    Query head ``h`` belongs to KV group ``h // group_size``. A KV group with no kept query head is removed
    with its K/V rows. Every kept group must keep the same number of query heads, so that the layer still has
    ``num_heads % num_kv_heads == 0`` (required by HF attention's ``repeat_kv``).
    """
    heads = sorted({int(h) for h in keep_heads})
    if not heads:
        raise PrunelabError("cannot remove every attention head of a layer: at least one must be kept")
    if heads[0] < 0 or heads[-1] >= layout.num_heads:
        raise PrunelabError(f"attention head index out of range [0, {layout.num_heads})")
    per_group: dict[int, int] = {}
    for h in heads:
        per_group[h // layout.group_size] = per_group.get(h // layout.group_size, 0) + 1
    if len(set(per_group.values())) != 1:
        raise PrunelabError(
            "head pruning would break GQA: every kept KV group must keep the same number of query heads "
            f"(kept per group: {dict(sorted(per_group.items()))})"
        )
    return heads, sorted(per_group)


def _rows(units: list[int], size: int) -> torch.Tensor:
    return torch.cat([torch.arange(u * size, (u + 1) * size) for u in units])


def prune_attention_heads(model: nn.Module, layer_idx: int, keep_heads: Iterable[int]) -> nn.Module:
    """Keep only query heads ``keep_heads`` of layer ``layer_idx`` (GQA-aware, see :func:`check_gqa_keep`).

    Removes the heads' rows of q_proj and columns of o_proj, and the K/V rows of KV groups left empty.
    """
    adapter = adapter_for(model)
    layer = adapter.layers(model)[layer_idx]
    lay = adapter.head_layout(layer)
    heads, groups = check_gqa_keep(lay, keep_heads)
    d = lay.head_dim
    q_rows, kv_rows = _rows(heads, d), _rows(groups, d)
    # no clone: sliced entries are new tensors and load_state_dict copies the rest into the fresh layer
    sd = {k: v.detach() for k, v in layer.state_dict().items()}
    o_path = adapter.proj_names["o"]
    if adapter.fused_qkv:
        qkv_path = adapter.proj_names["q"]
        nq = lay.num_heads * d
        nkv = lay.num_kv_heads * d
        rows = torch.cat([q_rows, nq + kv_rows, nq + nkv + kv_rows])
        for suffix in ("weight", "bias"):
            key = f"{qkv_path}.{suffix}"
            if key in sd:
                sd[key] = sd[key][rows]
    else:
        for name, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
            for suffix in ("weight", "bias"):
                key = f"{adapter.proj_names[name]}.{suffix}"
                if key in sd:
                    sd[key] = sd[key][rows]
    sd[f"{o_path}.weight"] = sd[f"{o_path}.weight"][:, q_rows]
    _ensure_explicit_head_dim(model.config)
    overrides = _current_overrides(model, layer_idx)
    overrides["num_attention_heads"] = len(heads)
    overrides["num_key_value_heads"] = len(groups)
    # some families (Gemma2) scale by query_pre_attn_scalar, others by head_dim: both unchanged by head removal.
    return replace_layer(model, layer_idx, overrides, sd)


# ----------------------------------------------------------------------------------------------------------
# whole blocks
# ----------------------------------------------------------------------------------------------------------
def remove_layers(model: nn.Module, remove: Iterable[int]) -> nn.Module:
    """Remove decoder blocks ``remove`` in place; renumber the rest for the KV cache; update the config.

    ``num_hidden_layers``, ``layer_types`` (sliding/full attention pattern) and per-layer overrides follow the
    surviving blocks.
    """
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    n = len(layers)
    drop = sorted({int(i) for i in remove})
    if any(i < 0 or i >= n for i in drop):
        raise PrunelabError(f"block index out of range [0, {n})")
    if len(drop) >= n:
        raise PrunelabError(f"cannot remove {len(drop)} of {n} blocks: at least one block must remain")
    keep = [i for i in range(n) if i not in set(drop)]
    config = model.config
    layer_types = base_config(config).__dict__.get("layer_types")
    new_layers = nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(new_layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    adapter.decoder(model).layers = new_layers
    if layer_types is not None:
        config.__dict__["layer_types"] = [layer_types[i] for i in keep]
    sync_config(model)
    return model
