"""Relapse on the real SmolLM2-135M: 210 linear layers, each exactly 30% pruned; embeddings (tied lm_head) intact."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.real_model
def test_relapse_real_smollm2_exact_per_layer():
    import prunelab
    from prunelab.stress import relapse

    lm = prunelab.load("smollm2-135m")
    emb = lm.model.model.embed_tokens.weight.detach().clone()
    rep = relapse(lm.model, 0.3)
    assert len(rep.layers) == 30 * 7
    for l in rep.layers:
        assert l.zeros_after - l.zeros_before == round(0.3 * (l.numel - l.zeros_before)), l.name
    assert rep.max_deviation <= 1e-3
    assert torch.equal(lm.model.model.embed_tokens.weight, emb)
    assert lm.model.lm_head.weight.data_ptr() == lm.model.model.embed_tokens.weight.data_ptr()
    # still a working language model after losing 30% of its smallest decoder weights
    ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.isfinite(lm.model(ids).logits).all()
