"""Task scoring on tiny models: MC acc/acc_norm vs a naive reference, generation parsing, LAMBADA rule,
left-padded batch == unbatched, perplexity windows, composite, item ids, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from prunelab.data import MCItem, load_lambada, split_lambada
from prunelab.errors import PrunelabError
from prunelab.evaluate import TASKS, evaluate
from prunelab.evaluate.generation import generate_greedy
from prunelab.evaluate.loglik import loglikelihood_reference
from prunelab.evaluate.perplexity import (leading_windows, merge_perplexity, perplexity, perplexity_of_ids,
                                         tokenize_text, window_batch, window_range_perplexity, windows)
from prunelab.evaluate.tasks._common import argmax_first, run_multiple_choice
from prunelab.evaluate.tasks.generative import arc_gen_prompt, first_word, lambada_match, parse_choice_letter
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", max_position_embeddings=1024)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


# ------------------------------------------------------------------------------------------------ MC scoring
def _items():
    return [
        MCItem("q1", "Question: sky color?\nAnswer:", [" blue", " green", " a long red answer"], 0),
        MCItem("q2", "Question: 2+2?\nAnswer:", [" 4", " five", " 22"], 2),
        MCItem("q3", "Question: pets?\nAnswer:", [" cat", " dog"], 1),
        MCItem("w1", "", [" went home.", " went home."], 1, contexts=["Ann beat Bo so Ann", "Ann beat Bo so Bo"]),
        MCItem("q4", "Is it? ", [" no", " yes"], 1),
    ]


def test_multiple_choice_equals_naive_reference(llama, tok):
    items = _items()
    res = run_multiple_choice("toy", items, llama, tok, None, 0, batch_size=2)
    acc = acc_norm = 0
    for it in items:
        ctxs = it.contexts or [it.context] * len(it.choices)
        lls = [loglikelihood_reference(llama, tok, c, x)[0] for c, x in zip(ctxs, it.choices)]
        acc += max(range(len(lls)), key=lambda i: (lls[i], -i)) == it.answer
        norm = [ll / len(x.lstrip(" ")) if x.startswith(" ") else ll / len(x) for ll, x in zip(lls, it.choices)]
        acc_norm += max(range(len(norm)), key=lambda i: (norm[i], -i)) == it.answer
    assert res.metrics["acc"] == pytest.approx(100 * acc / len(items))
    assert res.metrics["acc_norm"] == pytest.approx(100 * acc_norm / len(items))
    assert res.item_ids == [it.id for it in items] and res.n == 5 and res.primary == "acc"


def test_argmax_ties_go_first():
    assert argmax_first([1.0, 3.0, 3.0]) == 1 and argmax_first([-1.0]) == 0


# ------------------------------------------------------------------------------------------------ generation
@pytest.mark.parametrize("output, n, expected", [
    (" B. Paris", 4, 1), (" (C)", 4, 2), (" The answer is D", 4, 3), ("Because A", 4, 0),
    (" E", 4, None), (" none", 4, None), ("\nA\nB", 4, 0), (" Answer: b", 4, None), ("C.", 3, 2),
])
def test_parse_choice_letter(output, n, expected):
    assert parse_choice_letter(output, n) == expected


def test_arc_gen_prompt():
    assert arc_gen_prompt("Why?", [" x", " y"]) == "Question: Why?\nA. x\nB. y\nAnswer:"


@pytest.mark.parametrize("pred, target, ok", [
    ("dog", "dog", True), ("Dog", "dog", True), ("dogs", "dog", True), ("Harry's", "Harry", True),
    ("Har", "Harry", True), ("Ha", "Harry", False), ("cat", "dog", False), ("", "dog", False),
    ("dog.", "dog", True), ("Harr", "Harry", True), ("do", "dog", False),
])
def test_lambada_match_rule(pred, target, ok):
    assert lambada_match(pred, target) is ok


def test_first_word():
    assert first_word(" Harry, who was") == "Harry" and first_word('  "Yes!" she') == "Yes" and first_word(" ") == ""


def test_left_padded_batch_equals_unbatched(llama, tok):
    prompts = ["Question: a?\nAnswer:", "hi", "a much longer prompt about many things here", "x y z"]
    batched = generate_greedy(llama, tok, prompts, max_new_tokens=6, batch_size=4)
    single = [generate_greedy(llama, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(s, str) for s in batched)


# ------------------------------------------------------------------------------------------------ perplexity
def test_perplexity_windows_by_hand(llama):
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (150,))
    res = perplexity_of_ids(llama, ids, seq_len=64, max_windows=None, batch_size=2)
    assert res.windows == 3 and res.tokens == 63 + 63 + 21  # each window predicts all its tokens but its first
    nll = 0.0
    with torch.inference_mode():
        for s in range(0, 150, 64):
            w = ids[s:s + 64]
            logp = llama(input_ids=w[None]).logits[0, :-1].log_softmax(-1)
            nll -= logp.gather(1, w[1:, None]).sum().item()
    assert res.perplexity == pytest.approx(math.exp(nll / 147), rel=1e-5)
    sliding = perplexity_of_ids(llama, ids, seq_len=64, stride=32)
    assert sliding.tokens == 149  # overlapping windows: every token but the text's first, exactly once
    assert perplexity_of_ids(llama, ids, seq_len=64, max_windows=2).windows == 2


def test_leading_windows_are_the_evaluated_windows(tok):
    text = " ".join(f"word{i} is here." for i in range(200))
    ids = tokenize_text(tok, text)
    batch = leading_windows(tok, text, 3, seq_len=16)
    assert batch.shape == (3, 16)
    for j, (chunk, _) in enumerate(windows(ids, 16)[:3]):
        assert torch.equal(batch[j], chunk)  # the oracle calibration is exactly what the first windows score
    with pytest.raises(PrunelabError, match="full windows"):
        leading_windows(tok, text, ids.numel() // 16 + 1, seq_len=16)


def test_window_batch_is_the_named_evaluated_windows_and_disjoint_from_the_leading_ones(tok):
    text = " ".join(f"word{i} is here." for i in range(200))
    ids = tokenize_text(tok, text)
    wins = windows(ids, 16)
    held = window_batch(tok, text, 5, 3, seq_len=16)
    for j in range(3):
        assert torch.equal(held[j], wins[5 + j][0])
    lead = leading_windows(tok, text, 5, seq_len=16)
    assert not set(map(tuple, lead.tolist())) & set(map(tuple, held.tolist()))
    for first, n in ((-1, 2), (len(wins) - 1, 2), (0, 0)):
        with pytest.raises(PrunelabError, match="full windows"):
            window_batch(tok, text, first, n, seq_len=16)


def test_window_ranges_score_what_the_whole_text_scores_and_merge_to_its_perplexity(llama, tok):
    text = " ".join(f"word{i} is here." for i in range(120))
    whole = perplexity(llama, tok, text, seq_len=32)
    assert whole.window_tokens[-1] < 31  # a final partial window, so the tail range is the tricky one
    split = whole.windows // 2
    head = window_range_perplexity(llama, tok, text, 0, split, seq_len=32)
    tail = window_range_perplexity(llama, tok, text, split, None, seq_len=32)
    assert (head.windows, tail.windows) == (split, whole.windows - split)
    merged = merge_perplexity([head, tail])
    assert merged.window_tokens == whole.window_tokens
    assert merged.window_nll == pytest.approx(whole.window_nll, rel=1e-5)
    assert merged.perplexity == pytest.approx(whole.perplexity, rel=1e-5)
    assert merged.tokens == whole.tokens
    for first, stop in ((-1, 2), (3, 3), (0, whole.windows + 1)):
        with pytest.raises(PrunelabError, match="windows"):
            window_range_perplexity(llama, tok, text, first, stop, seq_len=32)


# ------------------------------------------------------------------------------------------------ tasks end to end
def test_tasks_end_to_end_deterministic(llama, tok):
    names = ["arc_easy", "arc_easy_gen", "lambada_gen", "lambada", "composite", "winogrande", "boolq"]
    a = evaluate(llama, tok, names, limit=4, seed=3, batch_size=3)
    b = evaluate(llama, tok, names, limit=4, seed=3, batch_size=2)
    for n in names:
        assert a.results[n].item_ids == b.results[n].item_ids
        assert a.results[n].metrics == pytest.approx(b.results[n].metrics, abs=1e-6, nan_ok=True)
        assert 0 <= a.score(n) <= 100
    assert a.results["arc_easy"].n == 4 and len(set(a.results["arc_easy"].item_ids)) == 4
    comp = a.results["composite"].metrics
    assert comp["composite"] == pytest.approx((a.score("arc_easy_gen") + a.score("lambada_gen")) / 2)
    c = evaluate(llama, tok, ["arc_easy"], limit=4, seed=4)
    assert c.results["arc_easy"].item_ids != a.results["arc_easy"].item_ids


def test_lambada_never_samples_calibration_pool(llama, tok):
    eval_pool, calib = split_lambada(load_lambada())
    calib_ids = {it.id for it in calib}
    res = evaluate(llama, tok, ["lambada"], limit=200, seed=0, batch_size=16).results["lambada"]
    assert not calib_ids & set(res.item_ids) and res.n == 200
    assert math.isfinite(res.metrics["ppl"])


def test_wikitext2_limit_is_windows(llama, tok):
    r = evaluate(llama, tok, ["wikitext2"], limit=2).results["wikitext2"]
    assert r.n == 2 and r.details["windows"] == 2 and r.metrics["ppl"] > 1 and r.primary == "ppl"


def test_bad_inputs(llama, tok):
    with pytest.raises(PrunelabError, match="unknown eval task 'nope'; known: .*arc_easy"):
        evaluate(llama, tok, ["arc_easy", "nope"])
    with pytest.raises(PrunelabError, match="limit must be a positive"):
        evaluate(llama, tok, ["arc_easy"], limit=0)
    with pytest.raises(PrunelabError, match="no eval task"):
        evaluate(llama, tok, [])
    with pytest.raises(PrunelabError, match="not evaluated"):
        evaluate(llama, tok, ["arc_easy"], limit=1).score("piqa")


def test_c4_offline_is_a_clear_error(llama, tok, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(PrunelabError, match="C4"):
        TASKS.get("c4")(llama, tok, 1, 0, 1)


def test_arc_easy_gen_chat_wraps_prompt_in_chat_template():
    from prunelab.errors import PrunelabError
    from prunelab.evaluate.tasks.generative import chat_wrap

    tok = tiny_tokenizer()
    with pytest.raises(PrunelabError, match="no chat template"):
        chat_wrap(tok, "Question: x\nAnswer:")
    tok.chat_template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>{% endif %}"
    assert chat_wrap(tok, "Q") == "<s>Q</s><s>"
