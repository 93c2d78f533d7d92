"""Uniform width pruning: lowest-score groups removed, exact masking equivalence, GQA validity, save/reload, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import prunelab
from prunelab.errors import PrunelabError
from prunelab.models import adapter_for, layer_shapes
from prunelab.models.adapters import HeadLayout
from prunelab.prune.width import compute_scores, prune_width, select_heads
from tests.tiny import tiny_model, tiny_tokenizer

X = torch.randint(3, 120, (2, 12), generator=torch.Generator().manual_seed(0))
CAL = torch.randint(3, 120, (4, 16), generator=torch.Generator().manual_seed(1))


def logits(model, x=X):
    with torch.no_grad():
        return model(input_ids=x).logits


def test_removes_exactly_the_lowest_scores(family):
    model = tiny_model(family)
    original = copy.deepcopy(model)
    scores, _ = compute_scores(model, "maw", None)
    rep = prune_width(model, criterion="maw", ratio=0.25, progress=False)
    adapter = adapter_for(model)
    for i in range(4):
        order = torch.argsort(scores[i].mlp, descending=True)
        assert sorted(rep.kept_neurons[i]) == sorted(order[:36].tolist())  # 48 − ⌊0.25·48⌋ = 36 kept
        assert scores[i].mlp[order[36:]].max() <= scores[i].mlp[rep.kept_neurons[i]].min()
        g_new, _, d_new = adapter.mlp_weights(adapter.layers(model)[i])
        g_old, _, d_old = adapter.mlp_weights(adapter.layers(original)[i])
        assert torch.equal(g_new, g_old[rep.kept_neurons[i]])
        assert torch.equal(d_new, d_old[:, rep.kept_neurons[i]])
    assert rep.widths_after == [36] * 4 and rep.params_after < rep.params_before


@pytest.mark.parametrize("criterion", ["maw", "taylor", "maw_hybrid"])
def test_masking_equivalence(family, criterion):
    """Pruned model logits == original with the pruned neurons' down columns and heads' o columns zeroed."""
    model = tiny_model(family)
    reference = copy.deepcopy(model)
    rep = prune_width(model, criterion=criterion, ratio=0.4, heads_ratio=0.5, calibration=CAL, progress=False)
    adapter = adapter_for(reference)
    d = adapter.head_layout(adapter.layers(reference)[0]).head_dim
    with torch.no_grad():
        for i, layer in enumerate(adapter.layers(reference)):
            _, _, down = adapter.mlp_weights(layer)
            drop = [j for j in range(48) if j not in set(rep.kept_neurons[i])]
            down[:, drop] = 0
            _, _, _, o = adapter.attention_weights(layer)
            for h in range(4):
                if h not in rep.kept_heads[i]:
                    o[:, h * d : (h + 1) * d] = 0
    torch.testing.assert_close(logits(model), logits(reference), rtol=1e-5, atol=1e-5)
    for s in layer_shapes(model):
        assert s["intermediate_size"] == 48 - 19 and s["num_attention_heads"] % s["num_key_value_heads"] == 0


def test_save_reload_uniform_plain_transformers(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family)
    prune_width(model, criterion="maw", ratio=0.25, heads_ratio=0.5, progress=False)
    prunelab.save(model, tiny_tokenizer(), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["intermediate_size"] == 36 and not cfg.get("per_layer_config")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=1e-5, atol=1e-5)


def test_expansion_ratio_and_rounding():
    model = tiny_model("llama")  # hidden 32, intermediate 48 (expansion 1.5)
    rep = prune_width(model, criterion="l2", expansion_ratio=1.0, progress=False)
    assert rep.widths_after == [32] * 4
    model = tiny_model("llama")
    rep = prune_width(model, criterion="maw", ratio=0.3, round_to=8, progress=False)
    assert rep.widths_after == [32] * 4  # 48 − ⌊14.4⌋ = 34 → rounded down to 32


def test_gqa_head_selection_prefers_whole_group_when_it_scores_lowest():
    lay = HeadLayout(num_heads=4, num_kv_heads=2, head_dim=8)
    # group 0 (heads 0,1) weak overall → keeping 2 heads keeps group 1 whole rather than one head per group
    assert select_heads(lay, torch.tensor([1.0, 1.0, 5.0, 5.0]), torch.tensor([0.0, 0.0]), 2) == [2, 3]
    # strong heads 0 and 2, one per group → one head per group, both KV heads kept
    assert select_heads(lay, torch.tensor([9.0, 0.0, 9.0, 0.0]), torch.tensor([1.0, 1.0]), 2) == [0, 2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(ratio=1.0), "ratio must be in"),
    (dict(ratio=-0.1), "ratio must be in"),
    (dict(ratio=0.5, criterion="magic"), "unknown width criterion 'magic'"),
    (dict(ratio=0.9, round_to=8), "0 MLP neurons"),
    (dict(ratio=0.2, heads_ratio=0.25), "GQA"),
    (dict(expansion_ratio=1.5), "not fewer than the model's own"),
    (dict(expansion_ratio=0.0), "must be > 0"),
    (dict(ratio=0.2, expansion_ratio=1.0), "not both"),
    (dict(), "nothing to prune"),
    (dict(ratio=0.2, criterion="taylor"), "needs calibration data"),
])
def test_bad_inputs_leave_model_untouched(kwargs, message):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs.setdefault("criterion", "maw")
    with pytest.raises(PrunelabError, match=message):
        prune_width(model, progress=False, **kwargs)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
