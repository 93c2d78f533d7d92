"""The packed tree-attention engine: same log-likelihoods as one request at a time, lm-eval's truncation."""

from __future__ import annotations

import random

import pytest

from prunelab.errors import PrunelabError
from prunelab.evaluate import loglik
from prunelab.evaluate.loglik import loglikelihood_groups, loglikelihood_reference, use_engine
from tests.tiny import TINY_FAMILIES, tiny_model, tiny_tokenizer


def _mixed_groups(n: int, seed: int, long: bool = False) -> list[list[tuple[str, str]]]:
    """ARC-, PIQA-, WinoGrande- and BoolQ-shaped items of varied lengths (so rows pack several trees)."""
    rnd = random.Random(seed)
    words = ["cat", "dog", "the sun rises", "a bird flies over the hill", "blue", "xyz", "catalog", "yes", "no"]
    groups = []
    for i in range(n):
        body = " ".join(rnd.choice(words) for _ in range(rnd.randint(1, 40 if long else 8)))
        kind = i % 4
        if kind == 0:  # shared context, short choices of different lengths
            groups.append([(f"Q{i}: {body}?\nA:", " " + rnd.choice(words)) for _ in range(rnd.randint(2, 5))])
        elif kind == 1:  # long choices
            groups.append([(f"Goal: {body}", " " + " ".join(rnd.choice(words) for _ in range(rnd.randint(1, 9))))
                           for _ in range(2)])
        elif kind == 2:  # partial scoring: one context per option, shared continuation
            groups.append([(f"{body} {w}", " is here.") for w in ("cat", "dog")])
        else:  # identical inputs (one-token choices) run once
            groups.append([(f"{body}\nAnswer:", " y"), (f"{body}\nAnswer:", " n")])
    return groups


def _assert_equal_to_reference(model, tok, groups, got, tol=1e-4):
    for group, scores in zip(groups, got):
        assert len(scores) == len(group)
        for (c, x), (ll, greedy) in zip(group, scores):
            ref_ll, ref_greedy = loglikelihood_reference(model, tok, c, x)
            assert ll == pytest.approx(ref_ll, rel=1e-6, abs=tol), (c, x)  # fp32 sums of ~100 tokens
            assert greedy == ref_greedy


@pytest.mark.parametrize("fam", TINY_FAMILIES)
def test_packing_equals_one_at_a_time(fam):
    # gemma2's tiny config slides a 16-token window over half its layers: the packed mask must apply it
    model, tok = tiny_model(fam, max_position_embeddings=512), tiny_tokenizer()
    groups = _mixed_groups(14, seed=len(fam))
    passage = "the sun rises over a long quiet hill and the bird flies " * 4  # > half a row: plain path
    groups += [[(passage + "\nAnswer:", " yes"), (passage + "\nAnswer:", " no")], [(passage[:150], " end")]]
    got = loglikelihood_groups(model, tok, groups, batch_size=1)  # 256-token forwards: several forwards
    _assert_equal_to_reference(model, tok, groups, got)


def test_wide_trees_and_many_rows(monkeypatch):
    """Trees longer than a row widen their forward; small rows force many forwards; results unchanged."""
    model, tok = tiny_model("llama", max_position_embeddings=1024), tiny_tokenizer()
    groups = _mixed_groups(10, seed=7, long=True)
    monkeypatch.setattr(loglik, "ROW_TOKENS", 64)
    monkeypatch.setattr(loglik, "HEAD_CHUNK", 7)  # LM-head chunking must not change sums
    assert max(len(c) for g in groups for c, _ in g) > 64
    got = loglikelihood_groups(model, tok, groups, batch_size=1)
    _assert_equal_to_reference(model, tok, groups, got)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packing_is_batch_invariant(family):
    """Batch size and prefix sharing change how items are packed, never a score or a greedy flag."""
    model, tok = tiny_model(family, max_position_embeddings=512), tiny_tokenizer()
    groups = _mixed_groups(20, seed=3)
    base = loglikelihood_groups(model, tok, groups, batch_size=1, share_prefix=False)
    for bs, share in [(1, True), (3, True), (32, True), (4, False)]:
        got = loglikelihood_groups(model, tok, groups, batch_size=bs, share_prefix=share)
        for a, b in zip(base, got):
            assert [x[0] for x in a] == pytest.approx([x[0] for x in b], abs=1e-4)
            assert [x[1] for x in a] == [x[1] for x in b]


def test_progress_counts_every_group_once():
    model, tok = tiny_model("llama", max_position_embeddings=512), tiny_tokenizer()
    groups = _mixed_groups(9, seed=1)
    seen = []
    loglikelihood_groups(model, tok, groups, batch_size=1, progress=seen.append)
    assert sum(seen) == len(groups)


@pytest.mark.parametrize("fam", TINY_FAMILIES)
def test_truncation_matches_lm_eval_hflm(fam):
    """An item longer than the context window is left-truncated exactly as lm-eval's HFLM truncates it, on every
    family (Gemma2's 16-token sliding window inside the 48-token one), packed beside an item that fits."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny_model(fam, max_position_embeddings=48, seed=4), tiny_tokenizer()
    long_ctx = "a very long context that overflows the small window of the model " * 2
    requests = [(long_ctx, " yes"), (long_ctx, " no thanks"), ("short one", " fits"), (long_ctx + "x", " z")]
    assert all(len(tok.encode(c + x)) > 48 for c, x in requests if c != "short one")
    ours = loglikelihood_groups(model, tok, [requests[:2], requests[2:]], batch_size=2)
    hflm = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    assert hflm.max_length == 48
    theirs = hflm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)],
                                disable_tqdm=True)
    flat = [s for g in ours for s in g]
    for (ll, greedy), (ll2, greedy2) in zip(flat, theirs):
        assert ll == pytest.approx(ll2, abs=1e-4)
        assert greedy == greedy2
    with use_engine("reference"):  # the reference path truncates the same way
        ref = loglikelihood_groups(model, tok, [requests], batch_size=2)[0]
    assert [x[0] for x in ref] == pytest.approx([x[0] for x in theirs], abs=1e-4)


def test_reference_engine_switch():
    model, tok = tiny_model("llama", max_position_embeddings=256), tiny_tokenizer()
    groups = _mixed_groups(5, seed=2)
    calls = []
    real = loglik.loglikelihood_reference
    with use_engine("reference"):
        loglik.loglikelihood_reference = lambda *a: calls.append(a) or real(*a)
        try:
            got = loglikelihood_groups(model, tok, groups)
        finally:
            loglik.loglikelihood_reference = real
    assert len(calls) == sum(len(g) for g in groups)
    _assert_equal_to_reference(model, tok, groups, got)
    with pytest.raises(PrunelabError, match="unknown log-likelihood engine"):
        with use_engine("fast"):
            pass


def test_lm_head_runs_only_on_scored_positions(monkeypatch):
    """The head sees exactly the continuation tokens (not the contexts, not the padding)."""
    model, tok = tiny_model("llama", max_position_embeddings=512), tiny_tokenizer()
    groups = _mixed_groups(8, seed=5)
    rows = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    try:
        loglikelihood_groups(model, tok, groups, batch_size=4)
    finally:
        handle.remove()
    from prunelab.evaluate.loglik import encode_pair

    n_cont = sum(len(encode_pair(tok, c, x)[1]) for g in groups for c, x in g)
    assert sum(rows) == n_cont


@pytest.mark.real_model
def test_real_model_arc_easy_parity_with_lm_eval():
    """SmolLM2-135M, ARC-Easy: the packed engine and lm-eval's own task give the same per-item verdicts."""
    import prunelab
    from prunelab.evaluate import evaluate
    from prunelab.evaluate.lmeval_bridge import lmeval_evaluate

    lm = prunelab.load("smollm2-135m")
    ours = evaluate(lm.model, lm.tokenizer, ["arc_easy"], limit=30, seed=0).results["arc_easy"]
    theirs = lmeval_evaluate(lm.model, lm.tokenizer, ["arc_easy"], limit=30, seed=0, batch_size=32,
                            engine="hflm").results["arc_easy"]
    assert ours.item_ids == theirs.item_ids
    assert [o.correct for o in ours.outcomes] == [o.correct for o in theirs.outcomes]
    assert ours.metrics["acc"] == theirs.metrics["acc"] and ours.metrics["acc_norm"] == theirs.metrics["acc_norm"]
    for u, v in zip(ours.details["loglikelihoods"], theirs.details["loglikelihoods"]):
        assert u == pytest.approx(v, abs=1e-3)
