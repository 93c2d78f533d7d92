"""Real SmolLM2-135M: the study's parameter counts (19.5M ketamine vs 0.46M SSRI) and one LoRA step + merge."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    import prunelab

    return prunelab.load("smollm2-135m")


def test_counts_match_peft_and_hint(smollm2):
    from peft import get_peft_model

    from prunelab.recover import count_trainable_lora_params, get_mechanism
    from prunelab.recover.train import lora_config

    counts = {m: count_trainable_lora_params(smollm2.model, m) for m in ("ketamine", "ssri", "neurosteroid")}
    assert counts["ketamine"] == 30 * 64 * (2 * 1152 + 2 * 768 + 3 * (576 + 1536)) == 19_537_920
    assert counts["ssri"] == 30 * 8 * (1152 + 768) == 460_800
    import copy

    m = copy.deepcopy(smollm2.model)
    peft_model = get_peft_model(m, lora_config(m, get_mechanism("neurosteroid")))
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == counts["neurosteroid"]


def test_one_step_recover_and_merge(smollm2):
    import copy

    from prunelab.data import dolly_split
    from prunelab.recover import recover

    model = copy.deepcopy(smollm2.model)
    records = dolly_split(n_train=8, n_held_out=0, seed=0).train  # 2 steps: step 1 is warm-up at lr 0
    x = torch.tensor([smollm2.tokenizer("### Instruction:\nName a colour.\n\n### Response:\n")["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=x).logits
    res = recover(model, smollm2.tokenizer, "ketamine", records, epochs=1, seq_len=32, lr=1e-3, grad_accum=1,
                  progress=False)
    assert res.steps == 2 and res.tokens == 8 * 32 and res.trainable_params == 19_537_920
    assert res.honest_flops > res.flops  # the frozen base dominates
    with torch.no_grad():
        after = res.model(input_ids=x).logits
    assert torch.isfinite(after).all() and (after - before).abs().max() > 1e-4
