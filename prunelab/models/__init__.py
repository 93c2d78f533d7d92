"""Models: loading (alias | GGUF | local dir | hub id), family adapters, structural surgery, save/reload, counts."""

from prunelab.models.adapters import ADAPTERS, FamilyAdapter, HeadLayout, adapter_for, supported_model_types
from prunelab.models.counts import ModelInfo, ParamCounts, count_parameters, flops_per_token, model_info
from prunelab.models.io import LoadedModel, load, resolve_device, save
from prunelab.models.sources import ALIASES, DEFAULT_MODEL, cache_dir
from prunelab.models.surgery import (
    layer_shapes,
    prune_attention_heads,
    prune_mlp_neurons,
    remove_layers,
    sync_config,
)

__all__ = [
    "ADAPTERS", "ALIASES", "DEFAULT_MODEL", "FamilyAdapter", "HeadLayout", "LoadedModel", "ModelInfo",
    "ParamCounts", "adapter_for", "cache_dir", "count_parameters", "flops_per_token", "layer_shapes", "load",
    "model_info", "prune_attention_heads", "prune_mlp_neurons", "remove_layers", "resolve_device", "save",
    "supported_model_types", "sync_config",
]
