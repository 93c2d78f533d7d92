"""prunelab's own scoring equals lm-evaluation-harness's on the same items and model (through the bridge), and
the bridge's packed engine (``PackedHFLM``) equals lm-eval's own ``HFLM`` scoring item for item."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunelab.errors import PrunelabError
from prunelab.evaluate import evaluate, loglik
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
    theirs = lmeval_evaluate(model, tok, names, limit=8, seed=5, batch_size=4, engine="hflm")
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
    theirs = lmeval_evaluate(model, tok, ["piqa"], limit=5, seed=0, engine="hflm").results["piqa"]
    assert ours.metrics["acc"] == theirs.metrics["acc"] and ours.metrics["acc_norm"] == theirs.metrics["acc_norm"]
    assert ours.item_ids == theirs.item_ids


@pytest.fixture(scope="module")
def hflm_all(model):
    """Every bridge task (all log-likelihood requests) through lm-eval's own ``HFLM``: 6 items, seed 3."""
    return lmeval_evaluate(model, tiny_tokenizer(), list(BRIDGE_TASKS), limit=6, seed=3, batch_size=8,
                           engine="hflm")


@pytest.fixture(scope="module")
def battery_lmeval(hflm_all):
    return hflm_all


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
def mmlu_lmeval(hflm_all):
    return hflm_all


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


# ------------------------------------------------------------------------------------------------ packed engine
@pytest.fixture(scope="module")
def packed_all(model):
    """The same run as ``hflm_all`` on the packed engine, counting the requests the engine scored."""
    scored = []
    real = loglik.loglikelihood_groups

    def spy(model, tokenizer, groups, **kwargs):
        scored.append(sum(len(g) for g in groups))
        return real(model, tokenizer, groups, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loglik, "loglikelihood_groups", spy)
        report = lmeval_evaluate(model, tiny_tokenizer(), list(BRIDGE_TASKS), limit=6, seed=3, batch_size=2)
    return report, scored


@pytest.mark.parametrize("name", list(BRIDGE_TASKS))
def test_packed_bridge_equals_hflm_bridge(packed_all, hflm_all, name):
    """Every bridge task on the packed engine: lm-eval's per-item verdicts and metrics, per-choice
    log-likelihoods to 1e-4 (relative 1e-6 for the sums of hundreds of character-level tokens, ~ -700, where
    float32 summation order alone moves the fourth decimal), against the same run on lm-eval's own HFLM."""
    packed, _ = packed_all
    a, b = packed.results[name], hflm_all.results[name]
    assert a.item_ids == b.item_ids and a.n == b.n == 6
    assert a.details["doc_ids"] == b.details["doc_ids"]
    assert [o.item_id for o in a.outcomes] == [o.item_id for o in b.outcomes] == a.item_ids
    assert [o.correct for o in a.outcomes] == [o.correct for o in b.outcomes], name
    for u, v in zip(a.details["loglikelihoods"], b.details["loglikelihoods"], strict=True):
        assert len(u) == len(v) and u == pytest.approx(v, abs=1e-4, rel=1e-6), name
    assert set(a.metrics) == set(b.metrics)
    for metric, value in b.metrics.items():
        if metric == "perplexity":
            assert a.metrics[metric] == pytest.approx(value, rel=1e-4), name
        else:
            assert a.metrics[metric] == value, (name, metric)


def test_packed_bridge_scores_every_request_on_the_engine(packed_all):
    packed, scored = packed_all
    n_requests = sum(len(ll) for r in packed.results.values() for ll in r.details["loglikelihoods"])
    assert scored and sum(scored) == n_requests


def _tokenizer(bos: bool):
    """The tiny tokenizer, optionally adding a BOS to every encoding (as Llama's does)."""
    from tokenizers import processors

    tok = tiny_tokenizer()
    if bos:
        tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        assert tok.encode("ab")[0] == 1 and tok.encode("ab", add_special_tokens=False)[0] != 1
    return tok


def _instances(requests):
    from lm_eval.api.instance import Instance

    return [Instance("loglikelihood", {}, (ctx, cont), idx=i, metadata=(task, doc, 1))
            for i, (task, doc, ctx, cont) in enumerate(requests)]


@pytest.mark.parametrize("bos", [False, True])
def test_packed_hflm_keeps_request_order(model, monkeypatch, bos):
    """Interleaved requests of several documents (and of none, and with an empty context): answers in the
    original order, equal to HFLM's; documents grouped in first-appearance order; each answer cached."""
    from lm_eval.models.huggingface import HFLM

    from prunelab.evaluate.lmeval_engine import PackedHFLM

    tok = _tokenizer(bos)
    requests = [("t", 0, "Question: what is up?\nAnswer:", " sky"),
                ("t", 1, "Pick one of these:", " x"),
                ("t", 0, "Question: what is up?\nAnswer:", " the ground"),
                ("w", 0, "The cat sat on the", " mat."),  # WinoGrande-like: two contexts, one document
                ("t", 1, "Pick one of these:", " yy"),
                ("", None, "Free text ", "end"),  # no document: grouped by its context
                ("", None, "", " hello"),  # empty context: lm-eval's prefix-token rule, on the engine
                ("w", 0, "The dog sat on the", " mat."),
                ("t", 0, "Question: what is up?\nAnswer:", " sea")]
    want = HFLM(pretrained=model, tokenizer=tok, batch_size=3).loglikelihood(_instances(requests),
                                                                              disable_tqdm=True)
    groups_seen = []
    real = loglik.loglikelihood_groups

    def spy(model, tokenizer, groups, **kwargs):
        groups_seen.append([list(g) for g in groups])
        return real(model, tokenizer, groups, **kwargs)

    monkeypatch.setattr(loglik, "loglikelihood_groups", spy)
    lm = PackedHFLM(pretrained=model, tokenizer=tok, batch_size=3)
    cached = []

    class Hook:
        def add_partial(self, attr, req, res):
            cached.append((attr, tuple(req), res))

    lm.set_cache_hook(Hook())
    got = lm.loglikelihood(_instances(requests), disable_tqdm=True)
    assert len(got) == len(want)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(got, want, strict=True):
        assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
    assert groups_seen == [[[r[2:] for r in requests if r[:2] == key]
                            for key in [("t", 0), ("t", 1), ("w", 0)]] + [[("Free text ", "end")], [("", " hello")]]]
    assert sorted(cached, key=repr) == sorted(
        [("loglikelihood", r[2:], a) for r, a in zip(requests, got)], key=repr)


def test_bad_engine_is_one_line_error(model):
    with pytest.raises(PrunelabError, match="unknown lm-eval bridge engine 'vllm'; known: packed, hflm") as err:
        lmeval_evaluate(model, tiny_tokenizer(), ["arc_easy"], limit=2, engine="vllm")
    assert "\n" not in str(err.value)


def test_packed_hflm_refuses_options_it_does_not_reproduce(model):
    from prunelab.evaluate.lmeval_engine import PackedHFLM

    with pytest.raises(PrunelabError, match="max_length 64"):
        PackedHFLM(pretrained=model, tokenizer=tiny_tokenizer(), batch_size=2, max_length=64)


@pytest.mark.parametrize("bos", [False, True])
def test_empty_context_encoding_equals_lm_eval(model, bos):
    """``encode_pair`` with an empty context = lm-eval 0.4.13's ``TemplateLM.loglikelihood`` rule, including a
    continuation that itself starts with the prefix token."""
    from lm_eval.models.huggingface import HFLM

    tok = _tokenizer(bos)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1)
    seen = []
    lm._loglikelihood_tokens = lambda reqs, disable_tqdm=False: seen.extend(reqs) or [(0.0, True)] * len(reqs)
    prefix = tok.decode([loglik.prefix_token_id(tok)])
    for cont in (" hello", "world", prefix + " again"):
        seen.clear()
        lm.loglikelihood(_instances([("t", 0, "", cont)]), disable_tqdm=True)
        (_, ctx_enc, cont_enc), = seen
        assert loglik.encode_pair(tok, "", cont) == (list(ctx_enc), list(cont_enc)), cont
