"""GSM8K extraction, IFEval scoring (strict vs loose), TruthfulQA MC1/MC2, generation, and the tasks end to end
on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prunelab.errors import PrunelabError
from prunelab.evaluate import TASKS, evaluate
from prunelab.evaluate import generative_tasks as g
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def long_llama():
    # TruthfulQA answers and few-shot prompts are hundreds of characters (= tokens for the tiny tokenizer)
    return tiny_model("llama", max_position_embeddings=1024)


# ------------------------------------------------------------------------------------------------ GSM8K
@pytest.mark.parametrize("response, strict, flexible", [
    ("She sells 9 eggs, so 9 * 2 = 18 dollars.\n#### 18", "18", "18"),
    ("It costs $1,200.", "[invalid]", "$1,200."),
    ("First 3 + 4 = 7, then 7 * 10 = 70", "[invalid]", "70"),
    ("#### -5\nQuestion", "-5", "-5"),
    ("no number at all", "[invalid]", "[invalid]"),
    ("The answer is 42.\n#### 42.\nThen 7", "42.", "7"),
])
def test_gsm8k_extraction_matches_lm_eval_filters(response, strict, flexible):
    assert g.gsm8k_extract(response) == (strict, flexible)


@pytest.mark.parametrize("prediction, reference, ok", [
    ("18", "18", True), ("$1,200.", "1200", True), ("1,200", "1200", True), ("18.", "18", True),
    ("18.0", "18", False), ("[invalid]", "18", False), ("-5", "5", False),
])
def test_gsm8k_exact_match(prediction, reference, ok):
    assert g.gsm8k_match(prediction, reference) is ok


def test_gsm8k_prompt_layout():
    p = g.gsm8k_prompt("Q2?", [("Q1?", "A1\n#### 1")])
    assert p == "Question: Q1?\nAnswer: A1\n#### 1\n\nQuestion: Q2?\nAnswer:"
    assert g.gsm8k_prompt("Q?", []) == "Question: Q?\nAnswer:"


def test_cut_at_stop():
    assert g.cut_at_stop("12 apples\n\nQuestion: next", ["Question:", "</s>"]) == "12 apples\n\n"
    assert g.cut_at_stop("a</s>b Question: c", ["Question:", "</s>"]) == "a"
    assert g.cut_at_stop("nothing", ["Question:"]) == "nothing"


# ------------------------------------------------------------------------------------------------ IFEval
def test_ifeval_strict_vs_loose_hand_made():
    ids, kw = ["punctuation:no_comma"], [{}]
    assert g.ifeval_score("p", ids, kw, "no commas in here at all").strict == [True]
    # a comma only in the first line: strict fails, loose (first line removed) passes
    s = g.ifeval_score("p", ids, kw, "Sure, here it is:\nno commas in here at all")
    assert s.strict == [False] and s.loose == [True]
    both = g.ifeval_score("p", ids, kw, "a, b\nc, d\ne, f")
    assert both.strict == [False] and both.loose == [False]


def test_ifeval_markdown_stars_loose_only():
    ids = ["startend:end_checker"]
    kw = [{"end_phrase": "Any other questions?"}]
    s = g.ifeval_score("p", ids, kw, "Here is my answer. **Any other questions?**")
    assert s.strict == [False] and s.loose == [True]  # loose strips '*'


def test_ifeval_several_instructions_and_metrics():
    ids = ["punctuation:no_comma", "detectable_format:title", "length_constraints:number_sentences"]
    kw = [{}, {}, {"relation": "less than", "num_sentences": 3}]
    good = g.ifeval_score("p", ids, kw, "<<My Poem>>\nRoses are red. Violets are blue.")
    assert good.strict == [True, True, True]
    bad = g.ifeval_score("p", ids, kw, "Roses, red. Violets, blue. Sugar is sweet. And so are you.")
    assert bad.strict == [False, False, False]
    m = g.ifeval_metrics([good, bad, g.IFEvalScore(strict=[True, False], loose=[True, True])])
    assert m["prompt_level_strict_acc"] == pytest.approx(100 / 3)
    assert m["inst_level_strict_acc"] == pytest.approx(100 * 4 / 8)
    assert m["prompt_level_loose_acc"] == pytest.approx(200 / 3)
    assert m["inst_level_loose_acc"] == pytest.approx(100 * 5 / 8)
    with pytest.raises(PrunelabError):
        g.ifeval_metrics([])


def test_ifeval_language_check_is_deterministic():
    ids, kw = ["language:response_language"], [{"language": "en"}]
    text = "This is a plain English sentence about the weather today."
    assert all(g.ifeval_score("p", ids, kw, text).strict == [True] for _ in range(5))


# ------------------------------------------------------------------------------------------------ TruthfulQA
def _naive_mc2(lls, gold):
    """lm-eval's process_results_mc2, verbatim arithmetic (true answers first)."""
    split = list(gold).index(0)
    p_true, p_false = np.exp(np.array(lls[:split])), np.exp(np.array(lls[split:]))
    return float(sum(p_true / (sum(p_true) + sum(p_false))))


def test_mc2_equals_lm_eval_reference():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n_true, n_false = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        lls = list(rng.normal(-20, 8, n_true + n_false))
        gold = [1] * n_true + [0] * n_false
        assert g.mc2_score(lls, gold) == pytest.approx(_naive_mc2(lls, gold), rel=1e-9, abs=1e-12)


def test_mc2_labels_in_any_order_and_no_underflow():
    assert g.mc2_score([-1.0, -2.0, -3.0], [0, 1, 0]) == pytest.approx(
        math.exp(-2) / (math.exp(-1) + math.exp(-2) + math.exp(-3)))
    # exp(-1000) underflows to 0 in lm-eval's arithmetic (0/0); log-sum-exp gives the true value
    assert g.mc2_score([-1000.0, -1000.0 - math.log(3)], [1, 0]) == pytest.approx(0.75)
    with pytest.raises(PrunelabError):
        g.mc2_score([-1.0, -2.0], [1, 1])
    with pytest.raises(PrunelabError):
        g.mc2_score([-1.0], [1, 0])


def test_mc1():
    assert g.mc1_correct([-3.0, -5.0, -4.0], [1, 0, 0])
    assert not g.mc1_correct([-6.0, -5.0, -4.0], [1, 0, 0])


def test_truthfulqa_tasks_match_naive_loglik(long_llama):
    from prunelab.data import load_truthfulqa, seeded_sample
    from prunelab.evaluate.loglik import loglikelihood_reference

    tok = tiny_tokenizer()
    for kind in ("mc1", "mc2"):
        res = TASKS.get(f"truthfulqa_{kind}")(long_llama, tok, 2, 0, 4)
        items = seeded_sample(load_truthfulqa(kind), 2, 0)
        assert res.item_ids == [it.id for it in items] and res.n == 2
        scores = []
        for it in items:
            lls = [loglikelihood_reference(long_llama, tok, it.context, c)[0] for c in it.choices]
            scores.append(float(g.mc1_correct(lls, it.meta["gold"])) if kind == "mc1"
                          else g.mc2_score(lls, it.meta["gold"]))
        assert res.score == pytest.approx(100 * sum(scores) / 2, abs=1e-3)


# ------------------------------------------------------------------------------------------------ generation
def test_generate_until_batched_equals_single(long_llama):
    tok = tiny_tokenizer()
    prompts = ["Question: what is 2+2?\nAnswer:", "hi", "a much longer prompt about apples and pears."]
    batched = g.generate_until(long_llama, tok, prompts, max_new_tokens=6, batch_size=3)
    single = [g.generate_until(long_llama, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert all(len(x) <= 6 for x in batched)
    assert g.generate_until(long_llama, tok, prompts, max_new_tokens=6, batch_size=2) == batched  # deterministic


def test_generate_until_left_truncates_to_context():
    model, tok = tiny_model("llama"), tiny_tokenizer()  # 64-token context
    out = g.generate_until(model, tok, ["x" * 200], max_new_tokens=4)
    assert len(out) == 1


def test_generation_settings_validate_and_restore():
    before = g.SETTINGS.gsm8k_shots
    with g.generation_settings(gsm8k_shots=0, ifeval_max_new_tokens=7) as s:
        assert s.gsm8k_shots == 0 and g.SETTINGS.ifeval_max_new_tokens == 7
    assert g.SETTINGS.gsm8k_shots == before and g.SETTINGS.ifeval_max_new_tokens == 256
    for bad in ({"gsm8k_shots": -1}, {"ifeval_max_new_tokens": 0}, {"nope": 1}):
        with pytest.raises(PrunelabError):
            with g.generation_settings(**bad):
                pass


def test_chat_template_used_when_present():
    tok = tiny_tokenizer()
    assert g.apply_chat(tok, "hello") == ("hello", False)
    tok.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    assert g.apply_chat(tok, "hello") == ("<u>hello</u><a>", True)
    assert g.apply_chat(tok, "hello", enabled=False) == ("hello", False)


# ------------------------------------------------------------------------------------------------ tasks via evaluate()
def test_generative_tasks_through_evaluate(long_llama):
    tok = tiny_tokenizer()
    with g.generation_settings(ifeval_max_new_tokens=6, gsm8k_max_new_tokens=6, gsm8k_shots=1):
        report = evaluate(long_llama, tok, ["gsm8k", "ifeval"], limit=2, seed=0, batch_size=2)
        again = evaluate(long_llama, tok, ["gsm8k", "ifeval"], limit=2, seed=0, batch_size=2)
    gsm, ife = report.results["gsm8k"], report.results["ifeval"]
    assert gsm.n == 2 and gsm.primary == "exact_match_flexible" and 0 <= gsm.score <= 100
    assert gsm.details["shots"] == 1 and len(gsm.details["predictions"]) == 2
    assert ife.n == 2 and set(ife.metrics) == {"prompt_level_strict_acc", "inst_level_strict_acc",
                                               "prompt_level_loose_acc", "inst_level_loose_acc"}
    assert ife.details["chat_template"] is False and len(ife.details["responses"]) == 2
    # loose accuracy is an upper bound of strict
    assert ife.metrics["prompt_level_loose_acc"] >= ife.metrics["prompt_level_strict_acc"]
    assert report.scores() == again.scores()
    assert ife.details["responses"] == again.results["ifeval"].details["responses"]
