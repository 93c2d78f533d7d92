"""Unstructured L1-magnitude pruning: exact per-layer counts (incl. ties), only decoder linears, masks, schedule."""

from __future__ import annotations

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.stress import apply_masks, cumulative_schedule, decoder_linears, magnitude_prune, measure_sparsity
from tests.tiny import tiny_model


def _non_decoder_state(model):
    lin_names = {f"{n}.weight" for n in decoder_linears(model)}
    return {k: v.clone() for k, v in model.state_dict().items() if k not in lin_names}


def test_fraction_of_remaining_is_exact_per_layer_and_smallest_first(family):
    model = tiny_model(family)
    originals = {n: m.weight.detach().clone() for n, m in decoder_linears(model).items()}
    res = magnitude_prune(model, fraction=0.3)
    assert len(res.layers) == len(originals)
    for layer in res.layers:
        w0 = originals[layer.name]
        k = round(0.3 * w0.numel())
        assert layer.zeros_before == 0 and layer.zeros_after == k
        assert abs(layer.pruned_fraction - 0.3) <= 1e-3
        mask = res.masks[layer.name]
        assert int((~mask).sum()) == k
        # L1 criterion: every pruned weight is no larger in magnitude than every kept one.
        assert w0.abs()[~mask].max() <= w0.abs()[mask].min()
        w = model.get_submodule(layer.name).weight
        assert torch.equal(w[mask], w0[mask]) and bool((w[~mask] == 0).all())


def test_ties_still_give_the_exact_count():
    model = tiny_model("llama")
    for lin in decoder_linears(model).values():
        with torch.no_grad():  # every magnitude equal: any k of them are "the smallest"
            lin.weight.copy_(torch.where(torch.rand_like(lin.weight) < 0.5, -0.25, 0.25))
    res = magnitude_prune(model, fraction=0.3)
    for layer in res.layers:
        assert layer.zeros_after == round(0.3 * layer.numel)


def test_remaining_means_nonzero_weights_only():
    model = tiny_model("qwen2")
    lin = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        lin.weight[:, :8] = 0  # 8 of 32 input columns already dead
    nnz = int((lin.weight != 0).sum())
    res = magnitude_prune(model, fraction=0.5)
    row = next(l for l in res.layers if l.name == "model.layers.0.self_attn.q_proj")
    assert row.zeros_before == lin.weight.numel() - nnz
    assert row.zeros_after - row.zeros_before == round(0.5 * nnz)
    assert row.pruned_fraction == pytest.approx(0.5, abs=1e-3)
    assert row.sparsity == pytest.approx((row.zeros_before + round(0.5 * nnz)) / row.numel)


def test_embeddings_lm_head_and_norms_untouched(family):
    model = tiny_model(family)
    before = _non_decoder_state(model)
    magnitude_prune(model, fraction=0.6)
    after = _non_decoder_state(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert any("embed_tokens" in k for k in before)


def test_cumulative_schedule_math():
    assert cumulative_schedule(8, 0.1) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert cumulative_schedule(3, 0.25) == [0.25, 0.5, 0.75]
    assert cumulative_schedule(9, 0.1)[-1] == pytest.approx(0.9)


@pytest.mark.parametrize("cycles, step", [(10, 0.1), (4, 0.25), (2, 0.6), (0, 0.1), (-1, 0.1), (1.5, 0.1),
                                          (3, 0.0), (3, 1.0), (3, -0.1)])
def test_cumulative_schedule_rejects(cycles, step):
    with pytest.raises(PrunelabError):
        cumulative_schedule(cycles, step)


def test_sparsity_is_of_the_original_count_not_compounding():
    model = tiny_model("mistral")
    for target in cumulative_schedule(4, 0.2):
        res = magnitude_prune(model, sparsity=target)
        for layer in res.layers:
            # 0.2 then 0.4 of the *original* count: 40% sparse, not 1 − 0.8² = 36%.
            assert layer.zeros_after == round(target * layer.numel)
            assert abs(layer.sparsity - target) <= 1e-3
    snap = measure_sparsity(model)
    assert all(abs(l.sparsity - 0.8) <= 1e-3 for l in snap)


def test_mask_reapplication_keeps_zeros_after_a_training_step():
    torch.manual_seed(0)
    model = tiny_model("llama")
    masks = magnitude_prune(model, fraction=0.5).masks
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(3, 100, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    dense_again = sum(int((model.get_submodule(n).weight[~m] != 0).sum()) for n, m in masks.items())
    assert dense_again > 0  # the step really did move pruned weights
    kept = {n: model.get_submodule(n).weight[m].detach().clone() for n, m in masks.items()}
    apply_masks(model, masks)
    for n, m in masks.items():
        w = model.get_submodule(n).weight
        assert bool((w[~m] == 0).all())
        assert torch.equal(w[m], kept[n])  # re-masking never touches kept weights


def test_mask_reapplication_after_lora_merge():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama")
    masks = magnitude_prune(model, fraction=0.3).masks
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_()  # a trained adapter (B starts at zero)
    merged = peft.merge_and_unload()
    q = "model.layers.0.self_attn.q_proj"
    assert int((merged.get_submodule(q).weight[~masks[q]] != 0).sum()) > 0
    apply_masks(merged, masks)
    assert all(bool((merged.get_submodule(n).weight[~m] == 0).all()) for n, m in masks.items())


@pytest.mark.parametrize("kw", [dict(fraction=0.0), dict(fraction=1.0), dict(fraction=-0.2), dict(fraction=1.5),
                                dict(fraction="x"), dict(sparsity=1.0), dict(), dict(fraction=0.3, sparsity=0.3)])
def test_bad_amounts_raise_before_touching_the_model(kw):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PrunelabError):
        magnitude_prune(model, **kw)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_apply_masks_mismatch_is_clear():
    model = tiny_model("llama")
    with pytest.raises(PrunelabError, match="no module"):
        apply_masks(model, {"model.layers.9.mlp.up_proj": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(PrunelabError, match="mask"):
        apply_masks(model, {"model.layers.0.mlp.up_proj": torch.ones(3, 3, dtype=torch.bool)})
