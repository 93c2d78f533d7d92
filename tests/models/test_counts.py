"""Parameter and FLOP counts against hand-computed values."""

from __future__ import annotations

from prunelab.models import count_parameters, flops_per_token, model_info, prune_attention_heads, prune_mlp_neurons
from prunelab.models.counts import attention_flops_per_token
from tests.tiny import tiny_model

H, I, V, L, D = 32, 48, 128, 4, 8


def block_params(inter: int = I, heads: int = 4, kv: int = 2) -> int:
    attn = H * heads * D + 2 * H * kv * D + heads * D * H
    mlp = 3 * H * inter
    norms = 2 * H
    return attn + mlp + norms


def test_llama_counts_tied():
    model = tiny_model("llama")  # tied embeddings
    counts = count_parameters(model)
    assert counts.embedding == V * H
    assert counts.non_embedding == L * block_params() + H  # + final norm
    assert counts.total == counts.embedding + counts.non_embedding


def test_counts_follow_pruning():
    model = tiny_model("llama")
    prune_mlp_neurons(model, 0, range(20))
    prune_attention_heads(model, 1, [0, 1])
    counts = count_parameters(model)
    expected = block_params(inter=20) + block_params(heads=2, kv=1) + 2 * block_params() + H
    assert counts.non_embedding == expected


def test_flops_per_token():
    model = tiny_model("llama")
    n = count_parameters(model).non_embedding
    assert attention_flops_per_token(model, 100) == L * 2 * 100 * 4 * D
    assert flops_per_token(model, 100) == 2 * n + L * 2 * 100 * 4 * D


def test_model_info_untied_family():
    model = tiny_model("qwen2")  # untied lm_head counts as embedding
    info = model_info(model)
    assert info.params_embedding == 2 * V * H
    assert info.num_layers == 4 and info.intermediate_size == 48 and info.uniform
