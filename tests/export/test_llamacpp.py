"""Exported GGUF files run in real llama.cpp (llama-cpp-python) with prunelab's logits and greedy tokens.

Tolerance (f32 files, f32 KV cache): llama.cpp and PyTorch sum in different orders and llama.cpp's
SiLU/exp/softmax kernels are not bit-exact, so logits agree to ``max |Δ| ≤ 1e-4 + 2e-5 · max |logit|``
(SmolLM2: ≈ 6.6e-4; measured 0.4–1.2e-4 on the dense, 40 % MAW and 7-blocks-removed models). Greedy tokens must be
identical; the only allowed exception is a step where prunelab's own top-2 logits are closer than that
tolerance (a genuine tie that float rounding may break either way), after which the sequences legitimately part.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp")

from prunelab.export.gguf import export_gguf  # noqa: E402
from prunelab.export.llamacpp import greedy, logits, open_gguf, perplexity_of_ids  # noqa: E402
from tests.export._helpers import per_layer_pruned, tiny_bpe_tokenizer, tiny_llama  # noqa: E402

LOGIT_ATOL, LOGIT_RTOL = 1e-4, 2e-5
N_NEW = 32


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _hf_greedy(model, ids, n):
    """Plain argmax decoding with the KV cache (no ``generate``: its logits processors, e.g. min_new_tokens
    suppressing EOS, would change the choice llama.cpp's raw argmax is compared with)."""
    out = []
    with torch.no_grad():
        res = model(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            tok = int(res.logits[0, -1].argmax())
            out.append(tok)
            res = model(torch.tensor([[tok]]), past_key_values=res.past_key_values, use_cache=True)
    return out


def _tol(ref: np.ndarray) -> float:
    return LOGIT_ATOL + LOGIT_RTOL * float(np.abs(ref).max())


def assert_same_logits(model, llm, ids):
    ref, got = _hf_logits(model, ids), logits(llm, ids)
    diff = float(np.abs(ref - got).max())
    assert diff <= _tol(ref), f"max |Δlogit| {diff:.3g} > {_tol(ref):.3g} (max |logit| {np.abs(ref).max():.3g})"
    return diff


def assert_same_greedy(model, llm, ids, n=N_NEW):
    ours = _hf_greedy(model, ids, n)
    theirs, _ = greedy(llm, ids, n)
    if ours == theirs:
        return True
    t = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    row = _hf_logits(model, ids + ours[:t])[-1]
    top2 = np.sort(row)[-2:]
    margin = float(top2[1] - top2[0])
    assert margin <= _tol(row), (f"greedy tokens differ at step {t} ({ours[t]} vs {theirs[t]}) although prunelab's "
                                 f"top-2 margin {margin:.3g} exceeds the logit tolerance {_tol(row):.3g}")
    return False


# ---------------------------------------------------------------------------------------------- tiny
PROMPT = [1, 40, 50, 60, 70, 80, 90, 100, 110, 120]


@pytest.mark.parametrize("layout", ["uniform", "per-layer"])
def test_tiny_model_runs_in_llama_cpp_with_the_same_logits_and_tokens(tmp_path, layout):
    model = tiny_llama() if layout == "uniform" else per_layer_pruned(tiny_llama())
    rep = export_gguf(model, tiny_bpe_tokenizer(), tmp_path / "m.gguf", tokenizer_pre_name="gpt-2")
    assert rep.architecture == ("llama" if layout == "uniform" else "deci")
    llm = open_gguf(rep.path, n_ctx=64)
    assert llm.n_vocab() == 300
    assert_same_logits(model, llm, PROMPT)
    assert_same_greedy(model, llm, PROMPT, n=N_NEW)


def test_tiny_q8_0_file_runs_close_to_f32(tmp_path):
    model = per_layer_pruned(tiny_llama())
    rep = export_gguf(model, tiny_bpe_tokenizer(), tmp_path / "m.gguf", outtype="q8_0", tokenizer_pre_name="gpt-2")
    got = logits(open_gguf(rep.path, n_ctx=64), PROMPT)
    ref = _hf_logits(model, PROMPT)
    # 8-bit weights: a few percent of the logit range, far below the spread of a random model's logits
    assert float(np.abs(got - ref).max()) <= 0.05 * float(np.abs(ref).max())


def test_llama_cpp_tokenizes_like_the_hf_tokenizer(tmp_path):
    tok = tiny_bpe_tokenizer()
    rep = export_gguf(tiny_llama(), tok, tmp_path / "m.gguf", tokenizer_pre_name="gpt-2")
    llm = open_gguf(rep.path, n_ctx=64)
    text = "the lazy fox, pruned: 42 heads!"
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text)
    assert llm.token_bos() == tok.bos_token_id and llm.token_eos() == tok.eos_token_id


# ---------------------------------------------------------------------------------------------- SmolLM2
def _smollm2(kind: str):
    import prunelab
    from prunelab.models import remove_layers

    lm = prunelab.load("smollm2-135m", dtype="float32")
    model = lm.model
    if kind == "maw40":
        from prunelab.prune.width import prune_width

        prune_width(model, criterion="maw", ratio=0.4, progress=False)
    elif kind == "adaptive":
        # real Adapt-Pruner (per-layer widths and heads), sized for a test: 2 steps, 8 × 64 calibration tokens
        from prunelab.prune.adaptive import adapt_prune

        adapt_prune(model, lm.tokenizer, ratio=0.2, steps=2, calibration_samples=8, calibration_seq_len=64,
                    progress=False)
    elif kind == "7-blocks":
        remove_layers(model, [3, 8, 13, 17, 21, 24, 27])
    return model, lm.tokenizer


SMOL_PROMPT = "The capital of France is Paris. The capital of Germany is"


@pytest.mark.real_model
@pytest.mark.parametrize("kind", ["dense", "maw40", "adaptive", "7-blocks"])
def test_smollm2_runs_in_llama_cpp_with_the_same_logits_and_tokens(tmp_path, kind):
    model, tok = _smollm2(kind)
    rep = export_gguf(model, tok, tmp_path / "m.gguf")
    assert rep.architecture == ("deci" if kind == "adaptive" else "llama") and rep.tokenizer_pre == "smollm"
    llm = open_gguf(rep.path, n_ctx=128)
    ids = tok.encode(SMOL_PROMPT)
    if kind == "dense":  # the carried-over tokenizer splits text exactly like the HF one
        text = "In 2024, 1,234 models were pruned -- 40% of them twice.\n<|im_start|>user"
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text)
    diff = assert_same_logits(model, llm, ids)
    assert assert_same_greedy(model, llm, ids), "greedy sequences parted at a near-tie"
    print(f"{kind}: max |Δlogit| {diff:.2e}, greedy {N_NEW} tokens identical")  # shown with pytest -s


@pytest.mark.real_model
def test_smollm2_wikitext2_perplexity_agrees_within_one_percent(tmp_path):
    """Same windows, same token ids: llama.cpp's perplexity within 1 % of prunelab's (f32; a few windows here,
    the whole test split in ``benchmarks/llamacpp_speed.py --ppl``)."""
    from prunelab.data import load_wikitext2_text
    from prunelab.evaluate.perplexity import perplexity_of_ids as ours, tokenize_text

    model, tok = _smollm2("adaptive")
    ids = tokenize_text(tok, load_wikitext2_text())
    ref = ours(model, ids, seq_len=256, max_windows=4)
    llm = open_gguf(export_gguf(model, tok, tmp_path / "m.gguf").path, n_ctx=256)
    got = perplexity_of_ids(llm, ids, seq_len=256, max_windows=4)
    assert got.tokens == ref.tokens and got.windows == ref.windows
    assert abs(got.perplexity / ref.perplexity - 1) < 0.01, (got.perplexity, ref.perplexity)
    q8 = perplexity_of_ids(open_gguf(export_gguf(model, tok, tmp_path / "q8.gguf", outtype="q8_0").path, n_ctx=256),
                           ids, seq_len=256, max_windows=4)
    print(f"WikiText-2 ppl ({ref.windows}×256 tokens): prunelab {ref.perplexity:.4f}, llama.cpp f32 "
          f"{got.perplexity:.4f} ({100 * (got.perplexity / ref.perplexity - 1):+.4f} %), q8_0 {q8.perplexity:.4f}")
