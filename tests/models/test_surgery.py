"""Structural surgery is exact: a pruned model computes what the original computes with those units zeroed."""

from __future__ import annotations

import copy

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.models import adapter_for, layer_shapes, prune_attention_heads, prune_mlp_neurons, remove_layers
from prunelab.models.surgery import check_gqa_keep
from prunelab.models.adapters import HeadLayout
from tests.tiny import tiny_model

X = torch.randint(3, 120, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model, x=X):
    with torch.no_grad():
        return model(input_ids=x).logits


def test_mlp_pruning_equals_zeroed_neurons(family):
    model = tiny_model(family)
    reference = copy.deepcopy(model)
    adapter = adapter_for(model)
    keep = [i for i in range(48) if i % 3 != 0]
    drop = [i for i in range(48) if i % 3 == 0]
    with torch.no_grad():  # zero the down-projection columns of the dropped neurons in the reference
        _, _, down = adapter.mlp_weights(adapter.layers(reference)[1])
        down[:, drop] = 0
    prune_mlp_neurons(model, 1, keep)
    assert layer_shapes(model)[1]["intermediate_size"] == len(keep)
    torch.testing.assert_close(logits(model), logits(reference), rtol=1e-5, atol=1e-5)


def test_head_pruning_equals_zeroed_heads(family):
    model = tiny_model(family)
    reference = copy.deepcopy(model)
    adapter = adapter_for(model)
    d = adapter.head_layout(adapter.layers(model)[0]).head_dim
    with torch.no_grad():  # heads 1 and 3 removed (one per KV group): zero their o_proj columns
        _, _, _, o = adapter.attention_weights(adapter.layers(reference)[0])
        for h in (1, 3):
            o[:, h * d : (h + 1) * d] = 0
    prune_attention_heads(model, 0, [0, 2])
    assert layer_shapes(model)[0] == {"intermediate_size": 48, "num_attention_heads": 2, "num_key_value_heads": 2}
    torch.testing.assert_close(logits(model), logits(reference), rtol=1e-5, atol=1e-5)


def test_whole_kv_group_removal(family):
    model = tiny_model(family)
    prune_attention_heads(model, 2, [2, 3])  # group 1 only
    assert layer_shapes(model)[2]["num_key_value_heads"] == 1
    assert torch.isfinite(logits(model)).all()


def test_gqa_divisibility_enforced():
    lay = HeadLayout(num_heads=4, num_kv_heads=2, head_dim=8)
    with pytest.raises(PrunelabError, match="GQA"):
        check_gqa_keep(lay, [0, 1, 2])
    with pytest.raises(PrunelabError, match="every attention head"):
        check_gqa_keep(lay, [])
    assert check_gqa_keep(lay, [3, 1]) == ([1, 3], [0, 1])


def test_cannot_remove_every_neuron():
    model = tiny_model("llama")
    with pytest.raises(PrunelabError, match="at least one"):
        prune_mlp_neurons(model, 0, [])
    with pytest.raises(PrunelabError, match="out of range"):
        prune_mlp_neurons(model, 0, [48])


def test_remove_layers_renumbers_and_matches_manual_forward(family):
    model = tiny_model(family)
    remove_layers(model, [1, 2])
    adapter = adapter_for(model)
    assert model.config.num_hidden_layers == 2 and len(adapter.layers(model)) == 2
    assert [layer.self_attn.layer_idx for layer in adapter.layers(model)] == [0, 1]
    # KV-cached greedy generation equals uncached generation
    with torch.no_grad():
        cached = model.generate(X[:1], max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(X[:1], max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_remove_layers_bad_input():
    model = tiny_model("llama")
    with pytest.raises(PrunelabError, match="at least one block"):
        remove_layers(model, [0, 1, 2, 3])
    with pytest.raises(PrunelabError, match="out of range"):
        remove_layers(model, [7])


def test_per_layer_kv_heads_generate_with_cache(family):
    model = tiny_model(family)
    prune_attention_heads(model, 0, [0, 1])
    prune_mlp_neurons(model, 3, range(10))
    with torch.no_grad():
        cached = model.generate(X[:1], max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(X[:1], max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
