"""recover(): loss goes down, merge equals the PEFT model, tokens/FLOPs bookkeeping, NaN handling."""

from __future__ import annotations

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.recover import count_trainable_lora_params, recover, tokenize_records, train_flops
from tests.tiny import tiny_model, tiny_tokenizer

RECORDS = [(f"### Instruction:\nrepeat {w}\n\n### Response:\n", f"{w} {w} {w}") for w in
           ("cat", "dog", "bird", "fish", "cow", "pig", "hen", "fox")] * 2


def test_tokenize_padding_and_labels():
    tok = tiny_tokenizer()
    rows = tokenize_records(tok, RECORDS[:2], seq_len=64, pad_to_max=True)
    assert all(len(r["input_ids"]) == 64 for r in rows)
    n_real = sum(rows[0]["attention_mask"])
    assert rows[0]["labels"][:n_real] == rows[0]["input_ids"][:n_real]
    assert set(rows[0]["labels"][n_real:]) == {-100}
    assert rows[0]["input_ids"][n_real - 1] == tok.eos_token_id
    resp = tokenize_records(tok, RECORDS[:1], seq_len=64, pad_to_max=False, loss_on="response")[0]
    assert len(resp["input_ids"]) == n_real
    n_prompt = len(tok(RECORDS[0][0])["input_ids"])
    assert set(resp["labels"][:n_prompt]) == {-100} and -100 not in resp["labels"][n_prompt:]
    short = tokenize_records(tok, RECORDS[:1], seq_len=8)[0]
    assert len(short["input_ids"]) == 8 and sum(short["attention_mask"]) == 8


def test_recover_reduces_loss_and_counts():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    res = recover(model, tok, "ketamine", RECORDS, epochs=6, seq_len=32, lr=3e-3, batch_size=4, grad_accum=1,
                  progress=False)
    losses = [h["loss"] for h in res.loss_history]
    assert res.steps == 6 * 4 and len(losses) == res.steps
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3
    p = count_trainable_lora_params(tiny_model("llama"), "ketamine")
    assert res.trainable_params == p
    assert res.tokens == 16 * 32 * 6
    assert res.flops == train_flops(p, 32, 16, 6)
    assert res.honest_flops == res.tokens * (2 * res.base_flops_per_token + 6 * p)
    assert res.model is model and type(model).__name__ == "LlamaForCausalLM"  # merged in place
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_no_padding_counts_real_tokens():
    tok = tiny_tokenizer()
    res = recover(tiny_model("llama"), tok, "ssri", RECORDS, epochs=1, seq_len=80, pad_to_max=False,
                  progress=False)
    real = sum(len(r["input_ids"]) for r in tokenize_records(tok, RECORDS, 80, pad_to_max=False))
    assert res.tokens == real < 16 * 80
    assert not res.padded


def test_merge_matches_unmerged_logits():
    tok = tiny_tokenizer()
    model = tiny_model("qwen2")
    res = recover(model, tok, "neurosteroid", RECORDS, epochs=1, seq_len=32, lr=1e-2, merge=False,
                  progress=False, batch_size=4, grad_accum=1)
    x = torch.tensor([tok("### Instruction:\nrepeat cat")["input_ids"]])
    with torch.no_grad():
        before = res.model(input_ids=x).logits
        merged = res.model.merge_and_unload()
        after = merged(input_ids=x).logits
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-4)


def test_nan_loss_stops_and_keeps_last_good(tmp_path):
    from transformers import TrainerCallback

    class PoisonAt3(TrainerCallback):
        """Poisons one LoRA weight just before optimizer step 3 (the guard has already snapshotted; the last
        weights with a finite loss are those after step 1, which produced step 2's loss)."""

        def __init__(self, model):
            self.model = model

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 2:
                with torch.no_grad():
                    next(p for n, p in self.model.named_parameters() if "lora_A" in n).fill_(float("nan"))

    model, tok = tiny_model("llama"), tiny_tokenizer()
    holder = {}

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            holder["poison"].model = model

    poison = PoisonAt3(None)
    holder["poison"] = poison
    out = tmp_path / "out"
    with pytest.raises(PrunelabError, match=r"became NaN/inf at step 3.*after step 1.*saved to") as info:
        recover(model, tok, "ketamine", RECORDS, epochs=3, seq_len=32, lr=1e-3, batch_size=4, grad_accum=1,
                output_dir=out, callbacks=[Capture(), poison], progress=False)
    assert not out.exists()  # no half-written output
    last_good = tmp_path / "out.last_good"
    assert (last_good / "adapter_config.json").exists()
    peft_model = info.value.model
    assert all(torch.isfinite(p).all() for n, p in peft_model.named_parameters() if "lora" in n)
    from safetensors.torch import load_file

    saved = load_file(str(last_good / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_huge_lr_nan():
    # lr=1e30: one Adam step moves a LoRA weight by ~1e30, so the next product (~1e60) overflows fp32 for certain.
    # (lr=1e12 only saturated the tiny model: its gradients went to exactly 0 and nothing became NaN.)
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(PrunelabError, match="NaN/inf"):
        recover(model, tok, "ketamine", RECORDS * 4, epochs=5, seq_len=32, lr=1e30, batch_size=4, grad_accum=1,
                progress=False)


def test_bad_inputs():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(PrunelabError, match="unknown recovery mechanism"):
        recover(model, tok, "prozac", RECORDS, epochs=1, progress=False)
    with pytest.raises(PrunelabError, match="epochs must be positive"):
        recover(model, tok, "ssri", RECORDS, epochs=0, progress=False)
    with pytest.raises(PrunelabError, match="no training records"):
        recover(model, tok, "ssri", [], epochs=1, progress=False)
    assert not any("lora" in n for n, _ in model.named_parameters())  # validated before wrapping


@pytest.mark.parametrize("family", ["llama", "gemma2", "phi3"])
def test_padding_free_batches_equal_padded_loss(family):
    """Packed rows (position ids restart per sample) must give the same loss as padded rows: no cross-talk."""
    from prunelab.recover.training_data import collator

    model, tok = tiny_model(family), tiny_tokenizer()
    recs = [(f"### Instruction:\nsay {w}\n\n### Response:\n", w * k) for w, k in (("ab", 1), ("xyz", 5), ("q", 9))]
    padded = collator(True)(tokenize_records(tok, recs, seq_len=64, pad_to_max=True))
    packed = collator(False)(tokenize_records(tok, recs, seq_len=64, pad_to_max=False))
    assert packed["input_ids"].shape[0] == 1 and packed["input_ids"].shape[1] < 3 * 64
    with torch.no_grad():
        a = model(**padded).loss
        b = model(**packed, use_cache=False).loss  # run_trainer disables the cache (see there)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_training_disables_cache_for_packed_batches():
    """A training step on packed data sees use_cache=False (else the packed mask is skipped)."""
    from transformers import TrainerCallback

    seen = []

    class Spy(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kw):
            seen.append(model.config.use_cache)

    model = tiny_model("llama")
    recover(model, tiny_tokenizer(), "ssri", RECORDS[:4], epochs=1, seq_len=80, pad_to_max=False,
            callbacks=[Spy()], progress=False)
    assert seen and not any(seen)
    assert model.config.use_cache is True
