"""Depth pruning on tiny models: cached == naive objective, removal round-trips, bad inputs."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from prunelab.data.loaders import MCItem
from prunelab.errors import PrunelabError
from prunelab.prune.depth import (
    SEARCHES,
    BlockEvaluator,
    build_objective,
    prune_depth,
    remove_layers,
    search_blocks,
)
from tests.tiny import tiny_model, tiny_tokenizer


def _tokens(n=5, length=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 100, (n, length), generator=g)


def _mc_items():
    return [
        MCItem(id="a", context="Question: what is up?\nAnswer:", choices=[" sky", " ground", " the sea"], answer=0),
        MCItem(id="b", context="Question: two plus two?\nAnswer:", choices=[" four", " five"], answer=0),
        MCItem(id="c", context="Pick one:", choices=[" x", " yy", " zzz", " w"], answer=2),
    ]


@pytest.mark.parametrize("objective", ["perplexity", "margin"])
def test_cached_equals_naive_and_real_pruned_model(family, objective):
    # seq 40 > Gemma2's tiny sliding window (16), so sliding and full masks both matter.
    model = tiny_model(family, num_hidden_layers=6)
    tok = tiny_tokenizer()
    calib = _tokens() if objective == "perplexity" else _mc_items()
    obj = build_objective(model, tok, objective, calib, batch_size=2)
    cached, naive = BlockEvaluator(model, obj), BlockEvaluator(model, obj, cached=False)
    sets = [[], [0], [5], [2, 3], [0, 5], [1, 3, 4], [2], [2, 4]]
    for s in sets:
        assert cached(s) == pytest.approx(naive(s), abs=1e-5)
    assert cached.cache_hits > 0 and cached.blocks_run < naive.blocks_run
    if objective == "perplexity":  # independent reference: a truly pruned copy's own HF loss
        for s in ([2, 3], [0, 5]):
            pruned = remove_layers(copy.deepcopy(model), s)
            with torch.no_grad():
                ref = pruned(calib, labels=calib).loss.item()
            assert cached(s) == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("objective", ["perplexity", "margin"])
def test_stacked_candidates_equal_one_at_a_time(family, objective):
    """evaluate_many (candidates stacked on the batch dim, lanes sharing prefixes) == one candidate per call,
    for padded multi-row batches (margin) and several calibration batches; a small token cap forces groups."""
    model = tiny_model(family, num_hidden_layers=6)
    calib = _tokens() if objective == "perplexity" else _mc_items()
    obj = build_objective(model, tiny_tokenizer(), objective, calib, batch_size=2)
    sets = [[1], [4], [2, 3], [0, 5], [1, 3, 4], [2], [2, 4], [5], [1], [2, 3], [], [3, 4, 5]]
    one = BlockEvaluator(model, obj, batch_tokens=0)
    expected = [one(s) for s in sets]
    for cap in (10**6, 2 * sum(b.input_ids.numel() for b in obj.batches)):
        ev = BlockEvaluator(model, obj, batch_tokens=cap)
        got = ev.evaluate_many(sets)
        assert got == pytest.approx(expected, abs=1e-5)
        assert ev.candidates == len({frozenset(s) for s in sets}) and ev.requests == len(sets)
        assert ev.blocks_run <= one.blocks_run  # shared lanes never run more blocks than one-at-a-time
        assert ev.evaluate_many([[4], [2, 3]]) == got[1:3]  # memoised


@pytest.mark.parametrize("top_k", [1, 40, 10_000])
def test_lower_bound_and_best_of_match_exhaustive_evaluation(family, top_k):
    """The perplexity bound never exceeds the exact value (loose with top_k=1; with a top_k beyond the tiny
    vocabulary it is the exact value), and best_of returns exactly the n best of an exhaustive evaluation while
    screening out candidates that provably lose."""
    model = tiny_model(family, num_hidden_layers=6)
    obj = build_objective(model, tiny_tokenizer(), "perplexity", _tokens(), batch_size=2)
    obj.support_top_k, obj.support_positions = top_k, 5  # several runs of positions per batch
    sets = [[i] for i in range(6)] + [[i, j] for i in range(6) for j in range(i + 1, 6)]
    exhaustive = BlockEvaluator(model, obj, screen=False)
    exact = {frozenset(s): v for s, v in zip(sets, exhaustive.evaluate_many(sets))}
    ev = BlockEvaluator(model, obj)
    ev._capture()
    for runs in obj.support:  # one vocabulary per run of positions, each holding its targets + top-k per position
        assert all(min(top_k, model.config.vocab_size) <= len(vocab) <= model.config.vocab_size for _, vocab, _ in runs)
    for s in sets:
        with torch.no_grad():
            normed = ev._cached_normed(frozenset(s))
            assert obj.lower_bound(model, normed) <= exact[frozenset(s)]
    for n in (1, 3, 7):
        ranked = sorted(exact, key=lambda s: (exact[s], tuple(sorted(s))))[:n]
        fresh = BlockEvaluator(model, obj)
        got = fresh.best_of(sets, n)
        assert [s for s, _ in got] == ranked
        assert [v for _, v in got] == pytest.approx([exact[s] for s in ranked], abs=1e-5)
        assert fresh.candidates == len(sets) and fresh.requests == len(sets)
        if n == 1 and top_k == 10_000:  # exact bound: some candidates never needed the full head
            assert fresh.screened > 0
    mc = build_objective(model, tiny_tokenizer(), "margin", _mc_items())  # no bound: plain exact evaluation
    ev = BlockEvaluator(model, mc)
    assert [s for s, _ in ev.best_of([[1], [2], [3]], 2)] == [
        s for s in sorted(map(frozenset, ([1], [2], [3])), key=lambda s: (BlockEvaluator(model, mc)(s), sorted(s)))][:2]
    assert ev.screened == 0


def test_cache_memory_bound_keeps_results_exact():
    model = tiny_model("llama", num_hidden_layers=6)
    obj = build_objective(model, tiny_tokenizer(), "perplexity", _tokens())
    one_state = 5 * 40 * 32 * 4
    small = BlockEvaluator(model, obj, cache_bytes=2 * one_state)
    naive = BlockEvaluator(model, obj, cached=False)
    for s in ([1], [3], [1, 4], [0, 2], [3, 5]):
        assert small(s) == pytest.approx(naive(s), abs=1e-5)
    assert small._used <= 2 * one_state


def test_margin_objective_definition():
    """margin = mean over items of max_{c≠y} ℓ(c) − ℓ(y), ℓ = mean log-prob of the choice tokens."""
    model = tiny_model("llama")
    tok = tiny_tokenizer()
    items = _mc_items()
    obj = build_objective(model, tok, "margin", items)
    value = BlockEvaluator(model, obj)([])
    margins = []
    with torch.no_grad():
        for it in items:
            ll = []
            for ch in it.choices:
                ctx = tok(it.context, add_special_tokens=False)["input_ids"]
                cont = tok(ch, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([ctx + cont])
                logp = model(ids).logits.log_softmax(-1)[0]
                ll.append(sum(logp[len(ctx) + t - 1, c].item() for t, c in enumerate(cont)) / len(cont))
            margins.append(max(v for c, v in enumerate(ll) if c != it.answer) - ll[it.answer])
    assert value == pytest.approx(sum(margins) / len(margins), abs=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "phi3"])
def test_depth_pruned_model_saves_reloads_and_generates_with_kv_cache(family, tmp_path):
    from transformers import AutoModelForCausalLM

    from prunelab.models import save

    model = tiny_model(family, num_hidden_layers=6)
    tok = tiny_tokenizer()
    res = prune_depth(model, tok, 2, "perplexity", "greedy", calibration=_tokens(3, 24), progress=False)
    assert len(model.model.layers) == 4 and model.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    save(model, tok, tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert reloaded.config.num_hidden_layers == 4
    if getattr(reloaded.config, "layer_types", None) is not None:
        orig = tiny_model(family, num_hidden_layers=6).config.layer_types
        assert reloaded.config.layer_types == [t for i, t in enumerate(orig) if i not in res.removed]
    ids = _tokens(1, 30, seed=3)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-5)
        kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
        with_cache = reloaded.generate(ids, use_cache=True, **kw)
        without = reloaded.generate(ids, use_cache=False, **kw)
    assert torch.equal(with_cache, without)


def test_search_blocks_on_tiny_model_is_consistent():
    model = tiny_model("llama", num_hidden_layers=6)
    tok = tiny_tokenizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for search in SEARCHES.names():
        opts = {"trials": 15} if search == "bo" else {}
        start = time.perf_counter()
        runs = [search_blocks(model, 2, "perplexity", search, calibration=_tokens(3, 16), seed=1,
                              options=opts, progress=False) for _ in range(2)]
        elapsed = time.perf_counter() - start  # both searches: each one's own clock must be inside this
        r = runs[0]
        assert r.removed == runs[1].removed and len(set(r.removed)) == 2
        assert r.mask == [i not in r.removed for i in range(6)]
        assert r.candidates >= 1 and 0 < r.seconds < elapsed
        naive = BlockEvaluator(model, build_objective(model, tok, "perplexity", _tokens(3, 16)), cached=False)
        assert r.objective_value == pytest.approx(naive(r.removed), abs=1e-5)
    assert len(model.model.layers) == 6  # searching never modifies the model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_greedy_cached_and_naive_pick_the_same_blocks():
    model = tiny_model("qwen2", num_hidden_layers=6)
    kw = dict(calibration=_tokens(4, 20), progress=False)
    a = search_blocks(model, 3, "perplexity", "beam", **kw)
    b = search_blocks(model, 3, "perplexity", "beam", cached=False, **kw)
    assert a.removed == b.removed and a.candidates == b.candidates
    assert a.stats["blocks_run"] < b.stats["blocks_run"]
    c = search_blocks(model, 3, "perplexity", "beam", batch_tokens=0, screen=False, **kw)  # one per call, exact
    assert c.removed == a.removed and c.objective_value == pytest.approx(a.objective_value, abs=1e-6)
    assert c.stats["batch_tokens"] == 0 and a.stats["batch_tokens"] > 0 and c.stats["screened"] == 0


@pytest.mark.parametrize("k", [0, -1, 4, 5])
def test_bad_budget(k):
    with pytest.raises(PrunelabError, match="block"):
        search_blocks(tiny_model("llama"), k, "perplexity", "greedy", calibration=_tokens(), progress=False)


def test_bad_names_and_empty_calibration():
    model = tiny_model("llama")
    with pytest.raises(PrunelabError, match="unknown depth search"):
        search_blocks(model, 1, "perplexity", "simulated-annealing", calibration=_tokens())
    with pytest.raises(PrunelabError, match="unknown depth objective"):
        search_blocks(model, 1, "accuracy", "greedy", calibration=_tokens())
    with pytest.raises(PrunelabError, match="empty calibration"):
        search_blocks(model, 1, "perplexity", "greedy", calibration=torch.zeros(0, 16, dtype=torch.long))
    with pytest.raises(PrunelabError, match="empty calibration"):
        search_blocks(model, 1, "margin", "greedy", calibration=[])
    with pytest.raises(PrunelabError, match="no option"):
        search_blocks(model, 1, "perplexity", "beam", calibration=_tokens(), options={"trials": 3})
