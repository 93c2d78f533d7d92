"""Adapt-Pruner: A=0 is uniform pruning, targets are met, GQA stays valid, per-layer save/reload, plot, ablation."""

from __future__ import annotations

import pytest
import torch

import prunelab
from prunelab.errors import PrunelabError
from prunelab.models import adapter_for, layer_shapes
from prunelab.prune.adaptive import (
    adapt_prune,
    amplitude_ablation,
    apportion,
    layer_targets,
    normalise_importance,
    plot_sparsity_profile,
)
from prunelab.prune.width import prune_width
from tests.tiny import tiny_model, tiny_tokenizer

CAL = torch.randint(3, 120, (4, 16), generator=torch.Generator().manual_seed(1))
X = torch.randint(3, 120, (2, 12), generator=torch.Generator().manual_seed(0))


def test_normalisation_and_targets():
    imp = normalise_importance([-0.9, -0.5, -0.7])  # −cos
    assert sum(imp) == pytest.approx(0.0, abs=1e-12) and max(abs(i) for i in imp) == pytest.approx(1.0)
    assert imp == pytest.approx([-1.0, 1.0, 0.0])
    assert normalise_importance([0.3, 0.3]) == [0.0, 0.0]
    assert layer_targets([-1.0, 1.0, 0.0], 0.4, 0.1) == pytest.approx([0.5, 0.3, 0.4])
    assert layer_targets([-1.0, 1.0], 0.9, 0.2) == pytest.approx([0.95, 0.7])  # clipped at 0.95


def test_a0_reproduces_uniform_taylor_pruning():
    """A = 0, one step, MLP only: every layer gets the same width and the same neurons as uniform Taylor."""
    a = tiny_model("llama")
    rep = adapt_prune(a, ratio=0.3, amplitude=0.0, steps=1, calibration=CAL, prune_heads=False, progress=False)
    assert len(set(rep.widths_after)) == 1
    k = rep.widths_after[0]
    b = tiny_model("llama")
    uni = prune_width(b, criterion="taylor", ratio=(48 - k) / 48, calibration=CAL, progress=False)
    assert uni.widths_after == rep.widths_after
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=X).logits, b(input_ids=X).logits, rtol=0, atol=0)


def test_a0_progressive_gives_uniform_sparsity(family):
    model = tiny_model(family)
    rep = adapt_prune(model, ratio=0.4, amplitude=0.0, steps=3, calibration=CAL, progress=False)
    assert all(t == pytest.approx(0.4) for t in rep.target_sparsity)
    # every layer at most at its target, and within one neuron's parameters of it
    neuron = 3 * 32
    for after, before in zip(rep.block_params_after, rep.block_params_before):
        assert 0.6 * before - neuron < after <= 0.6 * before


def test_amplitude_shapes_profile_and_gqa_valid(family, tmp_path):
    model = tiny_model(family)
    rep = adapt_prune(model, ratio=0.5, amplitude=0.2, steps=2, calibration=CAL, progress=False)
    imp = rep.importance[-1]
    # the least important layer (lowest I) gets the highest target sparsity
    assert rep.target_sparsity[imp.index(min(imp))] == max(rep.target_sparsity)
    for s, t in zip(rep.layer_sparsity, rep.target_sparsity):
        assert s >= t - 1e-9  # targets reached (never below)
    for s in layer_shapes(model):
        assert s["num_attention_heads"] % s["num_key_value_heads"] == 0
    # per-layer widths round-trip through prunelab.save / prunelab.load with identical logits
    prunelab.save(model, tiny_tokenizer(), tmp_path / "m")
    re = prunelab.load(tmp_path / "m").model
    assert layer_shapes(re) == layer_shapes(model)
    with torch.no_grad():
        torch.testing.assert_close(re(input_ids=X).logits, model(input_ids=X).logits, rtol=1e-5, atol=1e-5)
    png = plot_sparsity_profile(rep, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heads_can_be_pruned_when_cheap():
    """A layer whose attention contributes nothing (o_proj zero → Taylor 0) loses heads before neurons."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    with torch.no_grad():
        for layer in adapter.layers(model):
            adapter.attention_weights(layer)[3].zero_()
    rep = adapt_prune(model, ratio=0.3, amplitude=0.0, steps=1, calibration=CAL, progress=False)
    assert all(h < 4 for h in rep.heads_after)


def test_ablation_runs_each_amplitude_on_a_copy():
    model = tiny_model("llama")
    before = sum(p.numel() for p in model.parameters())
    rep = amplitude_ablation(model, tiny_tokenizer(), ratio=0.3, amplitudes=[0.0, 0.1], steps=1, calibration=CAL,
                             text="the quick brown fox jumps over the lazy dog. " * 10, ppl_windows=2, ppl_seq_len=32,
                             progress=False)
    assert [r.amplitude for r in rep.rows] == [0.0, 0.1]
    assert all(r.params < before and r.perplexity > 1 for r in rep.rows)
    assert sum(p.numel() for p in model.parameters()) == before


def test_a0_with_a_hybrid_criterion_reproduces_uniform_hybrid_pruning():
    """The within-layer criterion is pluggable: A = 0, T = 1, MLP only, maw_hybrid == uniform maw_hybrid."""
    a = tiny_model("llama")
    rep = adapt_prune(a, ratio=0.3, amplitude=0.0, steps=1, calibration=CAL, prune_heads=False,
                      criterion="maw_hybrid", progress=False)
    assert rep.criterion == "maw_hybrid" and len(set(rep.widths_after)) == 1
    b = tiny_model("llama")
    prune_width(b, criterion="maw_hybrid", ratio=(48 - rep.widths_after[0]) / 48, calibration=CAL, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=X).logits, b(input_ids=X).logits, rtol=0, atol=0)
    c = tiny_model("llama")
    adapt_prune(c, ratio=0.3, amplitude=0.0, steps=1, calibration=CAL, prune_heads=False, progress=False)
    with torch.no_grad():  # and Taylor chooses other neurons on the same data
        assert not torch.equal(a(input_ids=X).logits, c(input_ids=X).logits)


def test_ablation_selects_amplitude_on_heldout_text():
    held = torch.randint(3, 120, (3, 16), generator=torch.Generator().manual_seed(7))
    rep = amplitude_ablation(tiny_model("llama"), tiny_tokenizer(), ratio=0.3, amplitudes=[0.0, 0.2, 0.5], steps=1,
                             calibration=CAL, heldout=held, text="a b c d e f g. " * 20, ppl_windows=1,
                             ppl_seq_len=32, progress=False)
    assert rep.heldout_tokens == 48
    held_ppls = [r.heldout_perplexity for r in rep.rows]
    assert all(p > 1 for p in held_ppls) and len(set(held_ppls)) == 3
    assert rep.selected.heldout_perplexity == min(held_ppls)


@pytest.mark.parametrize("kwargs, message", [
    (dict(ratio=0.4, criterion="maw"), "static criterion"),
    (dict(ratio=0.4, criterion="maw_hybrid"), "different scales"),
    (dict(ratio=0.4, criterion="nope"), "nope"),
    (dict(ratio=0.0), "must be in"),
    (dict(ratio=0.96), "must be in"),
    (dict(ratio=0.4, amplitude=-1.0), "amplitude"),
    (dict(ratio=0.4, steps=0), "steps"),
])
def test_bad_inputs(kwargs, message):
    with pytest.raises(PrunelabError, match=message):
        adapt_prune(tiny_model("llama"), calibration=CAL, progress=False, **kwargs)


def test_apportion_hits_the_total_by_largest_remainder():
    assert apportion([2.7, 3.2, 4.5], 10, [9, 9, 9]) == [3, 3, 4]  # floors 2,3,4 (9): +1 to the largest remainder
    assert apportion([2.7, 3.2, 4.5], 8, [9, 9, 9]) == [2, 2, 4]  # floors 9: −1 from the smallest remainder (0.2)
    assert apportion([3.0, 3.0, 3.0], 9, [9, 9, 9]) == [3, 3, 3]
    assert apportion([2.9, 2.9], 7, [3, 9]) == [3, 4]  # a capped layer passes the rest on
    assert apportion([0.2, 0.4, 5.0], 3, [9, 9, 9], low=1) == [1, 1, 1]  # the floor of 1 holds; the rest gives way
    for real in ([5.5, 1.25, 7.75, 0.5], [10.0, 0.1, 0.9, 3.3]):
        got = apportion(real, 12, [20] * 4)
        assert sum(got) == 12 and all(abs(g - r) < 2 for g, r in zip(got, real))


def test_mlp_only_size_does_not_depend_on_the_calibration():
    """MLP only, A > 0: two calibration sets give different per-layer widths but the same total (the uniform
    model's), so cross-fitted models of one cell have equal size; with A = 0 the widths stay uniform."""
    other = torch.randint(3, 120, (4, 16), generator=torch.Generator().manual_seed(7))
    sizes, widths = [], []
    for cal in (CAL, other):
        model = tiny_model("llama", num_hidden_layers=6)
        rep = adapt_prune(model, ratio=0.37, amplitude=0.3, steps=2, calibration=cal, prune_heads=False,
                          progress=False)
        sizes.append(rep.params_after)
        widths.append(rep.widths_after)
    assert widths[0] != widths[1] and len(set(widths[0])) > 1  # the allocation really depends on the data
    assert sizes[0] == sizes[1] and sum(widths[0]) == sum(widths[1])
    uni = tiny_model("llama", num_hidden_layers=6)
    rep0 = adapt_prune(uni, ratio=0.37, amplitude=0.0, steps=2, calibration=CAL, prune_heads=False, progress=False)
    assert len(set(rep0.widths_after)) == 1 and sum(rep0.widths_after) == sum(widths[0])
