"""Family adapters: where each supported architecture keeps its decoder layers, projections and norms.

Modelled on SliceGPT's ``ModelAdapter`` (one adapter per family, everything else family-agnostic). All
pruning, recovery and stress code talks to a model through :class:`FamilyAdapter` only, so adding a family
is one adapter instance plus one registry line.

Logical projection names used everywhere in prunelab: ``q k v o`` (attention) and ``gate up down``
(GLU-MLP). Phi3 fuses ``q,k,v`` into ``qkv_proj`` and ``gate,up`` into ``gate_up_proj``; the adapter
splits them logically (views into the fused weight) so criteria see the same shapes for every family.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class HeadLayout:
    """Attention head layout of one decoder layer (GQA: ``num_heads % num_kv_heads == 0``)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class FamilyAdapter:
    """Names the parts of one model family's decoder layers.

    ``proj_names`` maps logical names to module paths inside a decoder layer. Fused families list the fused
    module under each logical name it carries (Phi3: q, k and v all map to ``self_attn.qkv_proj``).
    """

    family: str
    model_types: tuple[str, ...]
    proj_names: dict[str, str] = field(
        default_factory=lambda: {
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj",
            "up": "mlp.up_proj",
            "down": "mlp.down_proj",
        }
    )
    fused_qkv: bool = False
    fused_gate_up: bool = False
    norm_names: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")

    # ----- model-level -------------------------------------------------------------------------------
    def decoder(self, model: nn.Module) -> nn.Module:
        """The inner decoder (``model.model``) holding embeddings, layers and final norm."""
        return model.model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The list of decoder blocks."""
        return self.decoder(model).layers

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self.decoder(model).norm

    def embeddings(self, model: nn.Module) -> nn.Module:
        return self.decoder(model).embed_tokens

    # ----- layer-level -------------------------------------------------------------------------------
    def module(self, layer: nn.Module, logical: str) -> nn.Linear:
        """The ``nn.Linear`` that carries logical projection ``logical`` (fused module for Phi3)."""
        return layer.get_submodule(self.proj_names[logical])

    def linear_modules(self, layer: nn.Module) -> dict[str, nn.Linear]:
        """All distinct linear layers of a block, by module path (used by unstructured stress pruning)."""
        seen: dict[str, nn.Linear] = {}
        for path in self.proj_names.values():
            seen.setdefault(path, layer.get_submodule(path))
        return seen

    def norms(self, layer: nn.Module) -> list[nn.Module]:
        return [getattr(layer, n) for n in self.norm_names if hasattr(layer, n)]

    def head_layout(self, layer: nn.Module) -> HeadLayout:
        """Head layout of ``layer``, read from its weights (so it is right after pruning)."""
        attn = layer.self_attn
        head_dim = attn.head_dim
        if self.fused_qkv:
            num_heads = attn.o_proj.in_features // head_dim
            qkv_rows = attn.qkv_proj.out_features
            num_kv = (qkv_rows - num_heads * head_dim) // (2 * head_dim)
        else:
            num_heads = attn.q_proj.out_features // head_dim
            num_kv = attn.k_proj.out_features // head_dim
        return HeadLayout(num_heads=num_heads, num_kv_heads=num_kv, head_dim=head_dim)

    def mlp_width(self, layer: nn.Module) -> int:
        """Number of GLU neurons (``intermediate_size``) of ``layer``."""
        return self.module(layer, "down").in_features

    def mlp_weights(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W_gate [I,H], W_up [I,H], W_down [H,I])`` as views (no copies), for any family."""
        down = self.module(layer, "down").weight
        if self.fused_gate_up:
            fused = self.module(layer, "gate").weight
            width = down.shape[1]
            return fused[:width], fused[width:], down
        return self.module(layer, "gate").weight, self.module(layer, "up").weight, down

    def attention_weights(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W_q [nq*d,H], W_k [nkv*d,H], W_v [nkv*d,H], W_o [H,nq*d])`` as views, for any family."""
        o = self.module(layer, "o").weight
        if self.fused_qkv:
            lay = self.head_layout(layer)
            fused = self.module(layer, "q").weight
            q_rows, kv_rows = lay.num_heads * lay.head_dim, lay.num_kv_heads * lay.head_dim
            return fused[:q_rows], fused[q_rows : q_rows + kv_rows], fused[q_rows + kv_rows :], o
        return self.module(layer, "q").weight, self.module(layer, "k").weight, self.module(layer, "v").weight, o

    def lora_target_modules(self, logical: list[str] | tuple[str, ...]) -> list[str]:
        """PEFT ``target_modules`` (leaf names) for logical projections, deduplicated for fused families.

        Raises if a fused family cannot target a projection on its own without its partners
        (e.g. Phi3 ``k`` alone shares ``qkv_proj`` with ``q`` and ``v``: we target the fused module and say so
        in the docs, since LoRA on the fused matrix is the only option the architecture offers).
        """
        names: list[str] = []
        for name in logical:
            if name not in self.proj_names:
                raise PrunelabError(
                    f"unknown projection '{name}' for family {self.family}; known: {', '.join(self.proj_names)}"
                )
            leaf = self.proj_names[name].rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
        return names


LLAMA = FamilyAdapter("llama", ("llama",))
QWEN2 = FamilyAdapter("qwen2", ("qwen2", "qwen3"))
MISTRAL = FamilyAdapter("mistral", ("mistral",))
GEMMA2 = FamilyAdapter(
    "gemma2",
    ("gemma2",),
    norm_names=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
)
PHI3 = FamilyAdapter(
    "phi3",
    ("phi3",),
    proj_names={
        "q": "self_attn.qkv_proj",
        "k": "self_attn.qkv_proj",
        "v": "self_attn.qkv_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_up_proj",
        "up": "mlp.gate_up_proj",
        "down": "mlp.down_proj",
    },
    fused_qkv=True,
    fused_gate_up=True,
)

#: Registry: model_type (config.json) -> adapter. Adding a family = one adapter + one line here.
ADAPTERS: dict[str, FamilyAdapter] = {t: a for a in (LLAMA, QWEN2, MISTRAL, GEMMA2, PHI3) for t in a.model_types}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(model_or_config) -> FamilyAdapter:
    """The adapter for a model, config or ``model_type`` string; a clear error for unsupported ones."""
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(config, "model_type", None)
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise PrunelabError(
            f"unsupported architecture '{model_type}'; prunelab supports: {', '.join(supported_model_types())}"
        ) from None
