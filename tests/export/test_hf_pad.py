"""Zero padding back to uniform shapes: vanilla transformers loads the result and its logits do not change."""

from __future__ import annotations

import json

import pytest
import torch

import prunelab
from prunelab.errors import PrunelabError
from prunelab.export.hf_pad import pad_uniform, uniform_shape
from prunelab.models import layer_shapes, prune_attention_heads, prune_mlp_neurons
from tests.export._helpers import per_layer_pruned, tiny_bpe_tokenizer, tiny_llama
from tests.tiny import tiny_model

IDS = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
# Padding adds exact zeros; only the summation order of the longer matrix products changes.
TOL = dict(rtol=0, atol=1e-5)


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def test_padded_per_layer_model_loads_in_plain_transformers_with_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    model = per_layer_pruned(tiny_llama())
    before = _logits(model)
    rep = pad_uniform(model)
    assert (rep.intermediate_size, rep.num_heads, rep.num_kv_heads) == (40, 4, 2) and not rep.was_uniform
    assert {tuple(s.values()) for s in layer_shapes(model)} == {(40, 4, 2)}
    prunelab.save(model, tiny_bpe_tokenizer(), tmp_path / "padded")
    assert json.loads((tmp_path / "padded" / "config.json").read_text()).get("per_layer_config") is None
    vanilla = AutoModelForCausalLM.from_pretrained(tmp_path / "padded").eval()
    torch.testing.assert_close(_logits(vanilla), before, **TOL)


def test_gqa_groups_of_different_sizes_keep_their_kv_heads():
    """Block 0: 2 groups × 1 head; block 1: 1 group × 2 heads → padded to 2 groups × 2 slots, heads in place."""
    model = tiny_llama(vocab_size=128)
    prune_attention_heads(model, 0, [0, 2])   # heads 0 (group 0) and 2 (group 1)
    prune_attention_heads(model, 1, [2, 3])   # both heads of group 1 → 1 KV head
    prune_mlp_neurons(model, 1, [3])          # a 1-neuron MLP
    before = _logits(model)
    assert uniform_shape(model) == (48, 4, 2)
    pad_uniform(model)
    torch.testing.assert_close(_logits(model), before, **TOL)
    # the padded slots really are zero: head slot 1 of block 0's group 0 has zero q rows and o columns
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight[8:16].abs().sum() == 0 and attn.o_proj.weight[:, 8:16].abs().sum() == 0
    assert model.model.layers[1].mlp.down_proj.weight[:, 1:].abs().sum() == 0


@pytest.mark.parametrize("family", ["qwen2", "mistral", "gemma2"])
def test_other_families_pad_exactly(family):
    model = tiny_model(family)
    prune_mlp_neurons(model, 0, list(range(10)))
    prune_attention_heads(model, 2, [0, 1])  # qwen2: the q/k/v biases of padded rows are zero as well
    before = _logits(model)
    pad_uniform(model)
    torch.testing.assert_close(_logits(model), before, **TOL)


def test_fused_phi3_is_refused():
    model = tiny_model("phi3")
    prune_mlp_neurons(model, 0, list(range(10)))
    with pytest.raises(PrunelabError, match="fused phi3"):
        pad_uniform(model)


def test_uniform_model_is_left_as_it_is():
    model = tiny_llama(vocab_size=128)
    before = _logits(model)
    rep = pad_uniform(model)
    assert rep.was_uniform and rep.params_before == rep.params_after
    torch.testing.assert_close(_logits(model), before, rtol=0, atol=0)
