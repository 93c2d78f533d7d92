"""The log-likelihood engine: lm-eval tokenisation rules, shared-prefix KV reuse == naive reference."""

from __future__ import annotations

import random

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.evaluate.loglik import (encode_pair, loglikelihood_groups, loglikelihood_reference, max_length,
                                      prefix_token_id)
from tests.tiny import TINY_FAMILIES, tiny_model, tiny_tokenizer


def _groups(n=7, seed=0):
    rnd = random.Random(seed)
    words = ["cat", "dog", "the sun", "a bird flies", "blue", "red car", "xyz", "catalog"]
    groups = []
    for i in range(n):
        ctx = f"Question: what is thing {i} {'long ' * rnd.randint(0, 6)}?\nAnswer:"
        groups.append([(ctx, " " + rnd.choice(words)) for _ in range(rnd.randint(2, 5))])
    groups.append([("", " hello"), ("", " world")])  # empty context -> prefix token
    groups.append([("The cat sat on the _", " mat."), ("The dog sat on the _", " mat.")])  # WinoGrande-like
    groups.append([("abc ", "d")])  # single request, trailing space moved
    groups.append([("Same ctx", " cat"), ("Same ctx", " catalog")])  # choices sharing first tokens
    return groups


def test_encode_pair_follows_lm_eval():
    tok = tiny_tokenizer()
    ctx, cont = encode_pair(tok, "ab ", "c")
    assert tok.decode(ctx) == "ab" and tok.decode(cont) == " c"  # trailing space moves to the continuation
    ctx, cont = encode_pair(tok, "", " hi")
    assert ctx == [prefix_token_id(tok)] and tok.decode(cont) == " hi"
    whole = tok.encode("Question: x\nAnswer: yes")
    ctx, cont = encode_pair(tok, "Question: x\nAnswer:", " yes")
    assert ctx + cont == whole


@pytest.mark.parametrize("fam", TINY_FAMILIES)
def test_shared_prefix_equals_reference(fam):
    model, tok = tiny_model(fam, max_position_embeddings=256), tiny_tokenizer()
    groups = _groups()
    got = loglikelihood_groups(model, tok, groups, batch_size=3)
    for group, scores in zip(groups, got):
        for (c, x), (ll, greedy) in zip(group, scores):
            ref_ll, ref_greedy = loglikelihood_reference(model, tok, c, x)
            assert ll == pytest.approx(ref_ll, abs=1e-4)
            assert greedy == ref_greedy


def test_left_truncation_like_lm_eval():
    model, tok = tiny_model("llama", max_position_embeddings=32), tiny_tokenizer()
    assert max_length(model, tok) == 32
    long_ctx = "a very long context that exceeds the window " * 3
    groups = [[(long_ctx, " yes"), (long_ctx, " no")]]
    got = loglikelihood_groups(model, tok, groups, batch_size=2)
    for (c, x), (ll, _) in zip(groups[0], got[0]):
        assert ll == pytest.approx(loglikelihood_reference(model, tok, c, x)[0], abs=1e-4)
        # reference = lm-eval's (ctx + cont)[-(L+1):][:-1] window, scored by hand here
        ctx, cont = encode_pair(tok, c, x)
        seq = (ctx + cont)[-33:]
        with torch.inference_mode():
            logp = model(input_ids=torch.tensor([seq[:-1]])).logits[0].log_softmax(-1)
        hand = sum(logp[len(seq) - 1 - len(cont) + i, t].item() for i, t in enumerate(cont))
        assert ll == pytest.approx(hand, abs=1e-4)


def test_bad_inputs():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(PrunelabError, match="batch size"):
        loglikelihood_groups(model, tok, [[("a", " b")]], batch_size=0)
    with pytest.raises(PrunelabError, match="no tokens"):
        loglikelihood_groups(model, tok, [[("a", "")]])
