"""Parameter and FLOP counts, and the per-layer shape summary (``prunelab info``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from prunelab.models.adapters import adapter_for
from prunelab.models.surgery import base_config, layer_shapes


@dataclass
class ParamCounts:
    """``total`` counts tied embeddings once; ``non_embedding`` excludes input and output embeddings."""

    total: int
    embedding: int
    non_embedding: int


def count_parameters(model: nn.Module) -> ParamCounts:
    """Unique parameters (tied weights once); embedding = token embeddings + an untied lm_head."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    adapter = adapter_for(model)
    emb = adapter.embeddings(model).weight
    embedding = emb.numel()
    head = getattr(model, "lm_head", None)
    if head is not None and head.weight is not emb:
        embedding += head.weight.numel()
    return ParamCounts(total=total, embedding=embedding, non_embedding=total - embedding)


def attention_flops_per_token(model: nn.Module, context_len: int) -> int:
    """Score + weighted-sum FLOPs per token at context length L: Σ_layers 2·2·L·n_heads·head_dim.

    (QKᵀ and AV are each one multiply-add per element; Kaplan et al. 2020 count this as 2·n_layer·n_ctx·d_attn
    for the forward pass, with d_attn the concatenated query width.)
    """
    adapter = adapter_for(model)
    total = 0
    for layer in adapter.layers(model):
        lay = adapter.head_layout(layer)
        total += 2 * context_len * lay.num_heads * lay.head_dim
    return total


def flops_per_token(model: nn.Module, context_len: int = 512) -> int:
    """Forward FLOPs per token: ``2 × non-embedding params + attention`` (Kaplan et al. 2020, eq. 2.2).

    The output projection to the vocabulary is part of the embedding count here (tied in SmolLM2), as in
    Kaplan's convention; see :func:`count_parameters`.
    """
    return 2 * count_parameters(model).non_embedding + attention_flops_per_token(model, context_len)


@dataclass
class ModelInfo:
    """What ``prunelab info`` prints."""

    family: str
    model_type: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    head_dim: int
    tied_embeddings: bool
    params_total: int
    params_embedding: int
    params_non_embedding: int
    flops_per_token: int
    flops_context_len: int
    intermediate_sizes: list[int] = field(default_factory=list)
    num_heads: list[int] = field(default_factory=list)
    num_kv_heads: list[int] = field(default_factory=list)
    uniform: bool = True

    @property
    def intermediate_size(self) -> int | list[int]:
        return self.intermediate_sizes[0] if len(set(self.intermediate_sizes)) == 1 else self.intermediate_sizes


def model_info(model: nn.Module, context_len: int = 512) -> ModelInfo:
    """Summarise a (possibly pruned) model from its actual weights."""
    adapter = adapter_for(model)
    cfg = base_config(model.config)
    shapes = layer_shapes(model)
    counts = count_parameters(model)
    layers = adapter.layers(model)
    head_dim = adapter.head_layout(layers[0]).head_dim if len(layers) else 0
    inter = [s["intermediate_size"] for s in shapes]
    heads = [s["num_attention_heads"] for s in shapes]
    kv = [s["num_key_value_heads"] for s in shapes]
    return ModelInfo(
        family=adapter.family,
        model_type=cfg.model_type,
        num_layers=len(shapes),
        hidden_size=cfg.hidden_size,
        vocab_size=cfg.vocab_size,
        head_dim=head_dim,
        tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        params_total=counts.total,
        params_embedding=counts.embedding,
        params_non_embedding=counts.non_embedding,
        flops_per_token=flops_per_token(model, context_len),
        flops_context_len=context_len,
        intermediate_sizes=inter,
        num_heads=heads,
        num_kv_heads=kv,
        uniform=len(set(inter)) == 1 and len(set(heads)) == 1 and len(set(kv)) == 1,
    )
