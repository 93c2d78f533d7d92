"""Mechanism registry, per-family target mapping (Phi3 fused), YAML mechanisms and bad input."""

from __future__ import annotations

import pytest

from prunelab.errors import PrunelabError
from prunelab.recover import MECHANISMS, Mechanism, count_trainable_lora_params, get_mechanism, load_mechanisms_yaml
from tests.tiny import tiny_model


def test_study_mechanisms():
    k, s, n = (MECHANISMS.get(x) for x in ("ketamine", "ssri", "neurosteroid"))
    assert (k.r, k.alpha, k.targets, k.dropout, k.lr) == (64, 128, ("q", "k", "v", "o", "gate", "up", "down"), 0.05, 5e-5)
    assert (s.r, s.alpha, s.targets, s.dropout, s.lr) == (8, 16, ("q", "v"), 0.10, 1e-6)
    assert (n.r, n.alpha, n.targets, n.dropout, n.lr) == (32, 64, ("q", "v", "gate", "up"), 0.50, 5e-5)


@pytest.mark.parametrize(
    "family,mech,expected",
    [
        ("llama", "ssri", ["q_proj", "v_proj"]),
        ("qwen2", "neurosteroid", ["q_proj", "v_proj", "gate_proj", "up_proj"]),
        ("phi3", "ssri", ["qkv_proj"]),
        ("phi3", "neurosteroid", ["qkv_proj", "gate_up_proj"]),
        ("phi3", "ketamine", ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
        ("gemma2", "ketamine", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    ],
)
def test_target_modules_per_family(family, mech, expected):
    assert get_mechanism(mech).target_modules(tiny_model(family)) == expected


def test_phi3_fused_counted_once():
    model = tiny_model("phi3")
    # 4 layers; qkv_proj 32 → 32+2·16 = 64 rows; LoRA r8 once per layer even though q and v both map to it
    assert count_trainable_lora_params(model, "ssri") == 4 * 8 * (32 + 64)


def test_unknown_mechanism():
    with pytest.raises(PrunelabError, match="unknown recovery mechanism 'lsd'; known: ketamine, ssri, neurosteroid"):
        get_mechanism("lsd")


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(r=0), "rank r must be a positive integer"),
        (dict(r=-4), "rank r must be a positive integer"),
        (dict(r=2.5), "rank r must be a positive integer"),
        (dict(alpha=0), "alpha must be positive"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(lr=0), "learning rate must be positive"),
        (dict(targets=()), "no target projections"),
        (dict(targets=("q", "w1")), "unknown target projection"),
    ],
)
def test_bad_mechanism_fields(kw, msg):
    base = dict(name="x", r=4, alpha=8, targets=("q",), dropout=0.0, lr=1e-4)
    with pytest.raises(PrunelabError, match=msg):
        Mechanism(**{**base, **kw})


def test_target_absent_in_model():
    model = tiny_model("llama")
    del model.model.layers[1].mlp.gate_proj
    with pytest.raises(PrunelabError, match="target 'gate'.*does not exist in layer 1"):
        count_trainable_lora_params(model, "neurosteroid")


def test_yaml_mechanisms(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("mechanisms:\n  - {name: microdose_t, r: 4, alpha: 8, targets: [q, v], dropout: 0.1, lr: 1e-5}\n")
    (m,) = load_mechanisms_yaml(p)
    assert MECHANISMS.get("microdose_t") == m and m.r == 4 and m.targets == ("q", "v")
    load_mechanisms_yaml(p)  # identical re-registration is fine
    p.write_text("- {name: microdose_t, r: 2, alpha: 8, targets: q, dropout: 0.1, lr: 1e-5}\n")
    with pytest.raises(PrunelabError, match="different recipe"):
        load_mechanisms_yaml(p)


@pytest.mark.parametrize(
    "text,msg",
    [
        ("- {name: a, r: 4}\n", "missing alpha"),
        ("- {name: a, r: 0, alpha: 8, targets: [q], dropout: 0, lr: 1e-5}\n", "positive integer"),
        ("- {name: a, r: 4, alpha: 8, targets: [qq], dropout: 0, lr: 1e-5}\n", "unknown target"),
        ("- {name: a, r: 4, alpha: 8, targets: [q], dropout: 0, lr: 1e-5, rank: 3}\n", "unknown key"),
        ("[unclosed\n", "not valid YAML"),
        ("{}\n", "non-empty list"),
    ],
)
def test_bad_yaml(tmp_path, text, msg):
    p = tmp_path / "m.yaml"
    p.write_text(text)
    with pytest.raises(PrunelabError, match=msg):
        load_mechanisms_yaml(p, register=False)
