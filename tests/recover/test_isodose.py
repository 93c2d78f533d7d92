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


# ------------------------------------------------------------------------------------ honest isodose (formula)
def _tiny_counts():
    """Trainable LoRA params on the tiny Llama (hidden 32, KV 16, GLU 48, 4 layers), by hand:
    ketamine r64 on q,k,v,o,gate,up,down: 64·(64+48+48+64+80+80+80); ssri r8 on q,v: 8·(64+48);
    neurosteroid r32 on q,v,gate,up: 32·(64+48+80+80); each × 4 layers."""
    return {"ketamine": 4 * 64 * 464, "ssri": 4 * 8 * 112, "neurosteroid": 4 * 32 * 272}


def test_base_forward_flops_of_tiny_model_by_hand():
    from prunelab.recover.isodose import base_forward_flops_per_token

    # non-embedding params per layer: q 32·32 + k,v 2·32·16 + o 32·32 + gate,up,down 3·32·48 + 2 norms·32 = 7744
    non_embedding = 4 * 7744 + 32  # + final norm
    attention = 4 * 2 * 32 * (4 * 8)  # Σ_layers 2·L·n_heads·head_dim at L = 32
    head = 2 * 128 * 32  # vocab head (tied; the matmul happens anyway)
    assert base_forward_flops_per_token(tiny_model("llama"), 32) == 2 * non_embedding + attention + head == 78_400


def test_honest_epochs_match_hand_computation():
    """ketamine:3, 8 samples × 32 tokens padded (T = 256 per epoch), F = 78 400: the honest budget is
    256·(2F + 6·P_ket)·3 and each mechanism gets round(budget / (256·(2F + 6·P)))."""
    model = tiny_model("llama")
    counts = _tiny_counts()
    for name, p in counts.items():
        assert count_trainable_lora_params(model, name) == p
    f, t = 78_400, 8 * 32
    budget = t * (2 * f + 6 * counts["ketamine"]) * 3  # = 256 · 869 504 · 3
    by = {pl.mechanism: pl for pl in plan_isodose(model, list(counts), "ketamine:3", 32, 8, formula="honest")}
    # by hand: 3·869 504 / 178 304 = 14.63 → 15 (ssri); 3·869 504 / 365 696 = 7.13 → 7 (neurosteroid)
    assert (by["ketamine"].epochs, by["ssri"].epochs, by["neurosteroid"].epochs) == (3, 15, 7)
    assert all(pl.budget == budget and pl.formula == "honest" for pl in by.values())
    assert by["ssri"].exact_epochs == pytest.approx(3 * 869_504 / 178_304)
    assert by["ssri"].honest_flops == t * 15 * (2 * f + 6 * counts["ssri"])
    assert by["ssri"].flops == 6 * counts["ssri"] * 32 * 8 * 15  # the study's cost of the honest plan
    # the study's formula on the same model: round(3·P_ket / P) = 99 (ssri), 10 (neurosteroid)
    study = {pl.mechanism: pl for pl in plan_isodose(model, list(counts), "ketamine:3", 32, 8)}
    assert (study["ketamine"].epochs, study["ssri"].epochs, study["neurosteroid"].epochs) == (3, 99, 10)
    assert study["ssri"].budget == train_flops(counts["ketamine"], 32, 8, 3)


@pytest.mark.parametrize("ref_epochs", [1, 3, 7])
@pytest.mark.parametrize("formula", ["study", "honest"])
def test_reference_epochs_unchanged_under_either_formula(formula, ref_epochs):
    from prunelab.recover.isodose import solve_isodose

    p = _tiny_counts()["neurosteroid"]
    sol = solve_isodose(formula, p, ref_epochs, p, 512, 500, base_flops_per_token=2.7e8, tokens_per_epoch=123_457)
    assert sol.epochs == ref_epochs and sol.exact_epochs == pytest.approx(ref_epochs) and not sol.clamped
    assert sol.formula == formula


def test_honest_solution_spends_the_budget_within_half_an_epoch():
    from prunelab.recover.isodose import honest_flops, solve_isodose

    f, tokens = 2.7e8, 200_000  # a padding-free epoch of real tokens: only the absolute budget depends on it
    for p in (3_584, 34_816, 118_784, 1_000_000):
        sol = solve_isodose("honest", 118_784, 3, p, 512, 500, base_flops_per_token=f, tokens_per_epoch=tokens)
        assert sol.budget == honest_flops(f, 118_784, 3 * tokens)
        assert abs(sol.honest_flops - sol.budget) <= honest_flops(f, p, tokens) / 2
        assert sol.epoch_cost == honest_flops(f, p, tokens)


def test_unknown_formula_and_missing_base_flops_are_one_line_errors():
    from prunelab.recover.isodose import check_formula, solve_isodose

    with pytest.raises(PrunelabError, match="unknown isodose formula 'fair'; known: study, honest"):
        check_formula("fair")
    with pytest.raises(PrunelabError, match="unknown isodose formula"):
        plan_isodose(tiny_model("llama"), ["ssri"], "ketamine:1", 32, 8, formula="fair")
    with pytest.raises(PrunelabError, match="forward FLOPs per token"):
        solve_isodose("honest", 100, 3, 10, 512, 500)


def test_recover_isodose_honest_trains_the_solved_epochs():
    """recover_isodose(formula="honest") trains the honest epochs and records the formula and its budget."""
    from prunelab.recover import recover_isodose
    from tests.tiny import tiny_tokenizer

    model = tiny_model("llama")
    records = [("### Instruction:\nsay ab\n\n### Response:\n", "ab ab")] * 4
    res = recover_isodose(model, tiny_tokenizer(), "neurosteroid", records, reference="ssri:5", seq_len=16,
                          formula="honest", batch_size=4, grad_accum=1, progress=False, merge=False)
    f = 2 * (4 * 7744 + 32) + 4 * 2 * 16 * 32 + 2 * 128 * 32  # F at L = 16
    p_ref, p = _tiny_counts()["ssri"], _tiny_counts()["neurosteroid"]
    exact = 5 * (2 * f + 6 * p_ref) / (2 * f + 6 * p)  # 5 · 170 112 / 357 504 = 2.38 → 2 (study: 0.51 → 1)
    assert res.isodose_formula == "honest" and res.epochs == 2 == round(exact)
    assert res.exact_epochs == pytest.approx(exact) and res.budget == 4 * 16 * (2 * f + 6 * p_ref) * 5
    assert res.honest_flops == 4 * 16 * 2 * (2 * f + 6 * p)  # the honest cost of what ran (padded: T = N·L·E)


def test_recover_isodose_honest_padding_free_budget_counts_real_tokens():
    from prunelab.recover import recover_isodose, tokenize_records
    from prunelab.recover.isodose import base_forward_flops_per_token, honest_flops
    from tests.tiny import tiny_tokenizer

    model, tok = tiny_model("llama"), tiny_tokenizer()
    records = [("### Instruction:\nsay ab\n\n### Response:\n", "ab"), ("### Instruction:\nx\n\n### Response:\n", "y")]
    tokens = sum(len(r["input_ids"]) for r in tokenize_records(tok, records, seq_len=64, pad_to_max=False))
    assert tokens < 2 * 64
    f = base_forward_flops_per_token(model, 64)
    res = recover_isodose(model, tok, "ssri", records, reference="ketamine:2", seq_len=64, pad_to_max=False,
                          formula="honest", batch_size=2, grad_accum=1, max_steps=1, progress=False, merge=False)
    assert res.budget == honest_flops(f, _tiny_counts()["ketamine"], 2 * tokens)
    assert res.exact_epochs == pytest.approx(res.budget / honest_flops(f, _tiny_counts()["ssri"], tokens))
