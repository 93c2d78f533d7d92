"""The ``layer+attn`` repair target: pruned projections fitted as ``layer``, and every drifted layer's ``o_proj``
re-fitted toward the dense model's stream after its attention (tiny models, every family)."""

from __future__ import annotations

import copy

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for
from prunelab.prune.width import prune_width
from prunelab.runs.config import WidthPruning
from tests.tiny import tiny_model, tiny_tokenizer

CAL = torch.randint(3, 120, (8, 16), generator=torch.Generator().manual_seed(0))
X = torch.randint(3, 120, (2, 12), generator=torch.Generator().manual_seed(1))


def _attention_io(model, i, ids):
    """Layer ``i``'s input stream and its ``o_proj`` input and output on ``ids``."""
    adapter = adapter_for(model)
    layer = adapter.layers(model)[i]
    seen = {}
    h0 = layer.register_forward_pre_hook(
        lambda m, a, kw: seen.update(x=kw.get("hidden_states", a[0] if a else None)), with_kwargs=True)
    h1 = adapter.module(layer, "o").register_forward_hook(lambda m, a, o: seen.update(z=a[0], o=o))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        h0.remove()
        h1.remove()
    return seen["x"], seen["z"], seen["o"]


def test_layer_attn_refits_every_drifted_o_proj_and_reloads(family, tmp_path):
    dense = tiny_model(family)
    kw = dict(criterion="maw", ratio=0.4, calibration=CAL, progress=False)
    if family == "gemma2":
        with pytest.raises(PrunelabError, match="layer\\+attn cannot re-fit gemma2.*post-norm"):
            prune_width(copy.deepcopy(dense), repair="ls", repair_target="layer+attn", **kw)
        return
    layer_only, both = copy.deepcopy(dense), copy.deepcopy(dense)
    rep_layer = prune_width(layer_only, repair="ls", **kw).repair
    rep = prune_width(both, repair="ls", repair_target="layer+attn", **kw).repair
    assert rep.target == "layer+attn"
    n = len(adapter_for(dense).layers(dense))
    # layer 0's input is the embedding (no drift, no head pruned): its o_proj is left alone
    assert [(p.layer, p.projection) for p in rep.projections] == (
        [(0, "down")] + [(i, name) for i in range(1, n) for name in ("o", "down")])
    assert all(p.error_after <= p.error_before + 1e-9 for p in rep.projections)
    assert min(p.error_after / p.error_before for p in rep.projections if p.projection == "o") < 0.95
    o = adapter_for(dense).module
    assert torch.equal(o(adapter_for(both).layers(both)[0], "o").weight, o(adapter_for(dense).layers(dense)[0], "o").weight)
    # layer 0 is repaired exactly as with the layer target (same input, same fit)
    assert rep.projections[0].error_after == pytest.approx(rep_layer.projections[0].error_after, rel=1e-6)
    import prunelab
    from transformers import AutoModelForCausalLM

    prunelab.save(both, tiny_tokenizer(), tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(X).logits, both(X).logits, atol=1e-5)


def test_layer_attn_o_proj_is_least_squares_toward_the_dense_stream():
    """Layer 2's re-fitted o_proj is the least-squares map from its input on the repaired model's own forward to the
    dense model's stream after layer 2's attention minus the repaired layer input (ridge 0, uniform weights)."""
    dense = tiny_model("llama")
    model = copy.deepcopy(dense)
    prune_width(model, criterion="maw", ratio=0.4, calibration=CAL, repair="ls", repair_target="layer+attn",
                ridge=0.0, token_weights="uniform", progress=False)
    d_x, _, d_o = _attention_io(dense, 2, CAL)
    x, z, _ = _attention_io(model, 2, CAL)
    hidden = x.shape[-1]
    a = z.reshape(-1, z.shape[-1]).double()
    want = (d_x + d_o - x).reshape(-1, hidden).double()
    w_ls = torch.linalg.lstsq(a, want).solution.T
    got = adapter_for(model).module(adapter_for(model).layers(model)[2], "o").weight.double()
    assert torch.allclose(got, w_ls, atol=2e-3)


def test_layer_attn_with_heads_pruned_fits_the_pruned_o_proj_in_every_layer():
    dense = tiny_model("llama")
    rep = prune_width(copy.deepcopy(dense), criterion="maw", ratio=0.4, heads_ratio=0.5, calibration=CAL,
                      repair="ls", repair_target="layer+attn", progress=False).repair
    n = len(adapter_for(dense).layers(dense))
    assert [(p.layer, p.projection) for p in rep.projections] == [(i, name) for i in range(n) for name in ("o", "down")]
    assert all(p.error_after <= p.error_before + 1e-9 for p in rep.projections)


def test_layer_attn_in_a_spec():
    spec = WidthPruning(ratio=0.4, repair="ls", repair_target="layer+attn")
    assert spec.model_dump()["repair_target"] == "layer+attn" and spec.name.endswith("+ls@layer+attn")
