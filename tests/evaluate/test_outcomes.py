"""Per-item outcomes: every task's reported metric is recomputed exactly from its ``TaskResult.outcomes``
(tiny random model, a few real items per task), outcomes name the scored items, and ``prunelab eval --json``
carries them."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from prunelab.evaluate import ItemOutcome, evaluate
from prunelab.evaluate import generative_tasks as g
from tests.tiny import save_tiny, tiny_model, tiny_tokenizer

ACCURACY_TASKS = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "winogrande", "mmlu", "mmlu_5shot",
                  "truthfulqa_mc1", "truthfulqa_mc2", "arc_easy_gen", "arc_easy_gen_chat", "lambada_gen", "lambada",
                  "gsm8k", "ifeval"]
CHAT = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>{% endif %}"


@pytest.fixture(scope="module")
def report():
    model = tiny_model("llama", max_position_embeddings=1024, seed=3)
    tok = tiny_tokenizer()
    tok.chat_template = CHAT  # for arc_easy_gen_chat
    with g.generation_settings(ifeval_max_new_tokens=8, gsm8k_max_new_tokens=8, gsm8k_shots=1):
        return evaluate(model, tok, ACCURACY_TASKS + ["composite"], limit=5, seed=2, batch_size=4)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("task", ACCURACY_TASKS)
def test_primary_metric_is_the_mean_of_outcomes(report, task):
    res = report.results[task]
    assert [o.item_id for o in res.outcomes] == res.item_ids and len(res.outcomes) == res.n == 5
    assert len(set(res.item_ids)) == res.n  # (hash, phase, task, item_id) is the store's key
    correct = [o.correct for o in res.outcomes]
    assert all(c is not None for c in correct)
    assert _close(100.0 * sum(correct) / len(correct), res.metrics[res.primary]), (task, correct, res.metrics)


def test_what_each_kind_of_task_keeps(report):
    r = report.results
    # multiple choice: per-choice log-likelihoods, prediction = argmax (HellaSwag: of the length-normalised)
    for o, lls in zip(r["arc_easy"].outcomes, r["arc_easy"].details["loglikelihoods"]):
        assert o.logliks == tuple(lls) and o.prediction == str(lls.index(max(lls)))
        assert o.correct in (0.0, 1.0)
    assert [int(o.prediction) for o in r["arc_easy"].outcomes] == r["arc_easy"].details["predictions"]
    # MC2 is a probability mass, recomputed from the stored log-likelihoods with its own gold labels
    from prunelab.data import load_truthfulqa

    gold = {it.id: it.meta["gold"] for it in load_truthfulqa("mc2")}
    for o in r["truthfulqa_mc2"].outcomes:
        assert 0.0 <= o.correct <= 1.0 and _close(o.correct, g.mc2_score(o.logliks, gold[o.item_id]))
    # generation: the parsed prediction
    assert [o.prediction for o in r["lambada_gen"].outcomes] == r["lambada_gen"].details["predictions"]
    assert [None if p is None else int(p) for p in (o.prediction for o in r["arc_easy_gen"].outcomes)] \
        == r["arc_easy_gen"].details["predictions"]
    assert [o.prediction for o in r["gsm8k"].outcomes] == [p["flexible"] for p in r["gsm8k"].details["predictions"]]
    # lambada (log-likelihood): its perplexity over passages from the stored target log-likelihoods
    lam = r["lambada"]
    assert _close(math.exp(-sum(o.logliks[0] for o in lam.outcomes) / lam.n), lam.metrics["ppl"])
    # IFEval: per-instruction verdicts give the instruction-level metrics too
    ife = r["ifeval"]
    for mode, field in (("strict", "verdicts"), ("loose", "verdicts_loose")):
        flat = [v for o in ife.outcomes for v in getattr(o, field)]
        assert _close(100.0 * sum(flat) / len(flat), ife.metrics[f"inst_level_{mode}_acc"])
        prompt = [all(getattr(o, field)) for o in ife.outcomes]
        assert _close(100.0 * sum(prompt) / len(prompt), ife.metrics[f"prompt_level_{mode}_acc"])


def test_perplexity_from_window_outcomes():
    from prunelab.data import load_wikitext2_text
    from prunelab.evaluate.tasks.perplexity_tasks import _ppl_task

    # the wikitext2 task's own code on the text's first 5 windows (tokenising all of it takes ~15 s)
    model = tiny_model("llama", max_position_embeddings=1024, seed=3)
    res = _ppl_task("wikitext2", load_wikitext2_text()[:6000], model, tiny_tokenizer(), 5, 4)
    assert len(res.outcomes) == res.n == 5 and [o.item_id for o in res.outcomes] == res.item_ids
    nll = sum(o.nll for o in res.outcomes)
    tokens = sum(o.tokens for o in res.outcomes)
    assert tokens == res.metrics["tokens"] == 5 * 511  # full 512-token windows predict 511 tokens each
    assert _close(math.exp(nll / tokens), res.metrics["ppl"])
    assert len({o.nll for o in res.outcomes}) == 5  # per-window values, not one total repeated


def test_composite_has_no_items_but_its_parts_are_kept():
    model = tiny_model("llama", max_position_embeddings=1024, seed=3)
    rep = evaluate(model, tiny_tokenizer(), ["composite"], limit=4, seed=1, batch_size=4)
    comp = rep.results["composite"]
    assert comp.outcomes == [] and set(rep.dependencies) == {"arc_easy_gen", "lambada_gen"}
    parts = [100.0 * sum(o.correct for o in rep.dependencies[t].outcomes) / 4 for t in ("arc_easy_gen", "lambada_gen")]
    assert _close(sum(parts) / 2, comp.score)
    both = evaluate(model, tiny_tokenizer(), ["arc_easy_gen", "composite"], limit=4, seed=1, batch_size=4)
    assert set(both.dependencies) == {"lambada_gen"}  # a requested part is a result, not a dependency


def test_item_outcome_dict_round_trip():
    full = ItemOutcome("x", correct=0.25, prediction="2", logliks=(-1.5, -0.25, float("-inf")), nll=3.0, tokens=7,
                       verdicts=(True, False), verdicts_loose=(True, True))
    assert ItemOutcome.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    assert ItemOutcome("y", correct=1.0).to_dict() == {"item_id": "y", "correct": 1.0}
    assert ItemOutcome.from_dict({"item_id": "z", "nll": 1.0, "future_field": 3}) == ItemOutcome("z", nll=1.0)


def test_eval_json_carries_outcomes(tmp_path):
    from prunelab.cli import app

    model_dir = save_tiny(tmp_path / "m", max_position_embeddings=1024)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["eval", str(model_dir), "--tasks", "arc_easy,composite", "--limit", "3",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    arc = data["results"]["arc_easy"]
    assert [o["item_id"] for o in arc["outcomes"]] == arc["item_ids"]
    assert all(set(o) == {"item_id", "correct", "prediction", "logliks"} for o in arc["outcomes"])
    assert 100.0 * sum(o["correct"] for o in arc["outcomes"]) / 3 == pytest.approx(arc["metrics"]["acc"], abs=1e-9)
    assert data["results"]["composite"]["outcomes"] == []
    assert {t: len(d["outcomes"]) for t, d in data["dependencies"].items()} == {"arc_easy_gen": 3, "lambada_gen": 3}
    back = [ItemOutcome.from_dict(o) for o in arc["outcomes"]]
    assert all(isinstance(o.logliks, tuple) for o in back)
