"""prunelab's own scoring equals lm-evaluation-harness's on the same items and model (through the bridge)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunelab.evaluate import evaluate
from prunelab.evaluate.lmeval_bridge import BRIDGE_TASKS, lmeval_evaluate, sample_indices
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model():
    # ARC contexts are ~100-300 characters = tokens for the character-level tiny tokenizer
    return tiny_model("llama", max_position_embeddings=1024, seed=1)


@pytest.mark.parametrize("names", [["arc_easy"], ["winogrande", "lambada"]])
def test_prunelab_equals_lm_eval(model, names):
    tok = tiny_tokenizer()
    ours = evaluate(model, tok, names, limit=8, seed=5, batch_size=4)
    theirs = lmeval_evaluate(model, tok, names, limit=8, seed=5, batch_size=4)
    for name in names:
        a, b = ours.results[name], theirs.results[name]
        assert a.item_ids == b.item_ids and b.n == 8
        for metric, value in b.metrics.items():
            key = "ppl" if metric == "perplexity" else metric
            assert a.metrics[key] == pytest.approx(value, rel=1e-4), (name, metric)  # acc/acc_norm: identical
        ours_ll = a.details["loglikelihoods"]
        ours_ll = [[x] for x in ours_ll] if name == "lambada" else ours_ll
        for u, v in zip(ours_ll, b.details["loglikelihoods"], strict=True):
            assert u == pytest.approx(v, abs=1e-3)
        # per-item outcomes: lm-eval's own per-sample verdicts, item for item the same as ours
        assert [o.item_id for o in b.outcomes] == a.item_ids
        assert [o.correct for o in b.outcomes] == [o.correct for o in a.outcomes]
        assert 100.0 * sum(o.correct for o in b.outcomes) / b.n == pytest.approx(b.metrics[b.primary], abs=1e-9)
    if "arc_easy" in names:
        r = ours.results["arc_easy"].metrics, theirs.results["arc_easy"].metrics
        assert r[0]["acc"] == r[1]["acc"] and r[0]["acc_norm"] == r[1]["acc_norm"]


def test_same_items_as_prunelab_sample():
    from prunelab.data import load_arc, seeded_sample

    idx = sample_indices("arc_easy", 7, 2)
    items = load_arc("easy")
    assert [items[i].id for i in idx] == [it.id for it in seeded_sample(items, 7, 2)]
    assert set(BRIDGE_TASKS) >= {"arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "winogrande"}


def test_bridge_runs_a_per_layer_pruned_model():
    """Non-uniform widths (one layer's MLP pruned, another removed) go through HFLM and still agree."""
    from prunelab.models.surgery import prune_mlp_neurons, remove_layers

    model = tiny_model("llama", max_position_embeddings=1024, seed=2)
    prune_mlp_neurons(model, 1, list(range(0, 48, 3)))
    remove_layers(model, [3])
    tok = tiny_tokenizer()
    ours = evaluate(model, tok, ["piqa"], limit=5, seed=0).results["piqa"]
    theirs = lmeval_evaluate(model, tok, ["piqa"], limit=5, seed=0).results["piqa"]
    assert ours.metrics["acc"] == theirs.metrics["acc"] and ours.metrics["acc_norm"] == theirs.metrics["acc_norm"]
    assert ours.item_ids == theirs.item_ids


@pytest.fixture(scope="module")
def battery_lmeval(model):
    from prunelab.evaluate.lmeval_bridge import COMMONSENSE

    return lmeval_evaluate(model, tiny_tokenizer(), COMMONSENSE, limit=6, seed=3, batch_size=8)


@pytest.mark.parametrize("engine", ["packed", "reference"])
def test_every_battery_task_equals_lm_eval_item_for_item(model, battery_lmeval, engine):
    """Both log-likelihood paths (the packed fast path and one-request-at-a-time) reproduce lm-eval's own
    task definitions per item: same log-likelihoods, same verdicts, on ARC-e/c, HellaSwag, PIQA, BoolQ, WinoGrande."""
    from prunelab.evaluate.lmeval_bridge import COMMONSENSE
    from prunelab.evaluate.loglik import use_engine

    with use_engine(engine):
        ours = evaluate(model, tiny_tokenizer(), COMMONSENSE, limit=6, seed=3, batch_size=2)
    _assert_item_for_item(ours, battery_lmeval, COMMONSENSE, 6)


def _assert_item_for_item(ours, theirs, names, n):
    for name in names:
        a, b = ours.results[name], theirs.results[name]
        assert a.item_ids == b.item_ids and b.n == n, name
        for u, v in zip(a.details["loglikelihoods"], b.details["loglikelihoods"], strict=True):
            assert u == pytest.approx(v, abs=1e-3), name
        assert [o.correct for o in a.outcomes] == [o.correct for o in b.outcomes], name
        for metric, value in b.metrics.items():
            assert a.metrics[metric] == value, (name, metric)


@pytest.fixture(scope="module")
def mmlu_lmeval(model):
    return lmeval_evaluate(model, tiny_tokenizer(), ["mmlu"], limit=6, seed=3, batch_size=8)


@pytest.mark.parametrize("engine", ["packed", "reference"])
def test_mmlu_equals_lm_eval_item_for_item(model, mmlu_lmeval, engine):
    """prunelab's 0-shot MMLU and the bridge's single all-subjects config over lm-eval's mmlu default template
    (subject description rendered per row) agree per item: log-likelihoods, verdicts, acc."""
    from prunelab.evaluate.loglik import use_engine

    with use_engine(engine):
        ours = evaluate(model, tiny_tokenizer(), ["mmlu"], limit=6, seed=3, batch_size=2)
    assert set(mmlu_lmeval.results["mmlu"].metrics) == {"acc"}  # lm-eval's mmlu reports acc only
    _assert_item_for_item(ours, mmlu_lmeval, ["mmlu"], 6)


def test_mmlu_bridge_prompt_is_lm_eval_subject_template():
    """The one json-backed config renders exactly lm-eval's per-subject ``mmlu_<subject>`` prompt (description
    from the installed subject YAML) and prunelab's item, on rows from several subjects."""
    import lm_eval
    import yaml
    from lm_eval.tasks import TaskManager, get_task_dict

    from prunelab.data import load_mmlu
    from prunelab.evaluate.lmeval_bridge import task_configs

    subjects = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    items = load_mmlu(0)
    with task_configs(["mmlu"]) as tmp:
        task = get_task_dict(["prunelab_mmlu"], TaskManager(include_path=str(tmp)))["prunelab_mmlu"]
        docs = task.test_docs()
        for i in sample_indices("mmlu", 12, 0):
            doc, it = docs[i], items[i]
            cfg = yaml.safe_load((subjects / f"mmlu_{doc['subject']}.yaml").read_text())
            assert task.fewshot_context(doc, 0) == cfg["description"] + task.doc_to_text(doc) == it.context
            assert [task.config.target_delimiter + c for c in task.doc_to_choice(doc)] == it.choices
            assert task.doc_to_target(doc) == it.answer
