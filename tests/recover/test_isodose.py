"""Isodose formula, epoch solving, the study's 1.38e14 case, trainable-parameter counts."""

from __future__ import annotations

import warnings

import pytest

from prunelab.errors import PrunelabError
from prunelab.recover import (
    MECHANISMS,
    count_trainable_lora_params,
    epoch_flops,
    honest_flops,
    isodose_epochs,
    parse_reference,
    plan_isodose,
    train_flops,
)
from tests.tiny import tiny_model


def test_train_flops_formula():
    assert train_flops(10, 20, 30, 2) == 6 * 10 * 20 * 30 * 2
    assert epoch_flops(7, 512, 500) == 6 * 7 * 512 * 500


def study_model():
    """The study's 60%-pruned Llama-3.2-1B shapes on a meta device: 16 layers, hidden 2048, KV 512, GLU 3277."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=2048, intermediate_size=3277, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def test_study_case_1_38e14():
    model = study_model()
    p = count_trainable_lora_params(model, "ketamine")
    # r·(in+out) per adapted linear, by hand: q,o 2048→2048; k,v 2048→512; gate,up 2048→3277; down 3277→2048
    per_layer = 64 * (2 * (2048 + 2048) + 2 * (2048 + 512) + 3 * (2048 + 3277))
    assert p == 16 * per_layer == 29_989_888
    flops = train_flops(p, 512, 500, 3)
    assert flops == pytest.approx(1.38e14, rel=0.005)


def test_isodose_epochs_on_study_case():
    model = study_model()
    budget = train_flops(count_trainable_lora_params(model, "ketamine"), 512, 500, 3)
    p_ssri = count_trainable_lora_params(model, "ssri")
    assert p_ssri == 16 * 8 * ((2048 + 2048) + (2048 + 512))
    e = isodose_epochs(budget, p_ssri, 512, 500)
    assert e == round(budget / (6 * p_ssri * 512 * 500))
    assert abs(train_flops(p_ssri, 512, 500, e) - budget) <= epoch_flops(p_ssri, 512, 500) / 2
    plans = plan_isodose(model, MECHANISMS.names(), "ketamine:3", 512, 500)
    by = {pl.mechanism: pl for pl in plans}
    assert by["ketamine"].epochs == 3
    assert by["ssri"].epochs == e > 100
    flops = [pl.flops for pl in plans]
    assert max(flops) - min(flops) <= max(pl.epoch_flops for pl in plans)


def test_budget_below_one_epoch_clamps_with_warning_or_raises():
    with pytest.warns(UserWarning, match="clamped to 1 epoch"):
        assert isodose_epochs(1.0, 1000, 512, 500) == 1
    with pytest.raises(PrunelabError, match="of one epoch"):
        isodose_epochs(1.0, 1000, 512, 500, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isodose_epochs(epoch_flops(1000, 512, 500) * 0.6, 1000, 512, 500) == 1


@pytest.mark.parametrize("bad", [0, -1.0])
def test_bad_budget(bad):
    with pytest.raises(PrunelabError, match="budget must be positive"):
        isodose_epochs(bad, 1000, 512, 500)


@pytest.mark.parametrize("text", ["ketamine", "ketamine:x", ":3", "ketamine:0"])
def test_bad_reference(text):
    with pytest.raises(PrunelabError):
        parse_reference(text)


def test_reference_parses():
    assert parse_reference("ketamine:3") == ("ketamine", 3.0)


def test_honest_flops():
    assert honest_flops(100.0, 5, 10) == 10 * (2 * 100 + 6 * 5)
    assert honest_flops(100.0, 5, 10, full_finetune=True) == 10 * 300


def test_count_matches_peft(family):
    from peft import get_peft_model

    from prunelab.recover.train import lora_config

    for name in MECHANISMS.names():
        model = tiny_model(family)
        mech = MECHANISMS.get(name)
        expected = count_trainable_lora_params(model, mech)
        peft_model = get_peft_model(model, lora_config(model, mech))
        assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == expected


def test_count_on_per_layer_pruned_model():
    from prunelab.models.surgery import prune_mlp_neurons, sync_config

    model = tiny_model("llama")
    prune_mlp_neurons(model, 0, range(10))
    prune_mlp_neurons(model, 2, range(30))
    sync_config(model)
    widths = [10, 48, 30, 48]
    ket = MECHANISMS.get("ketamine")
    # hidden 32; q 32→32, k/v 32→16, o 32→32; gate/up 32→I, down I→32
    expected = sum(64 * (2 * 64 + 2 * 48 + 3 * (32 + w)) for w in widths)
    assert count_trainable_lora_params(model, ket) == expected
