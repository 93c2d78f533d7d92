"""Every log-likelihood caller is served by the packed engine (issue 18), with unchanged numbers.

* the depth objective ``margin`` (:class:`prunelab.prune.depth_objectives.MarginObjective`) scores its choices
  on the engine's packed tree layout; its values and the ShortGPT block influence over its calibration text
  equal the pre-engine definition (each choice sequence padded into its own row), recomputed here
  independently, on every tiny family, for dense and block-removed models, cached, naive and stacked;
* ``evaluate`` — what ``prunelab eval``, the experiment runner's evaluate stage and the dichotomy battery call —
  reaches the packed engine (ARC-Easy, i.e. ``run_multiple_choice`` which every MC task shares; LAMBADA;
  TruthfulQA through the battery's evaluator), and ``use_engine("reference")`` switches each caller to the
  one-request-at-a-time path with the same per-item verdicts.
"""

from __future__ import annotations

import pytest
import torch

from prunelab.data.loaders import MCItem
from prunelab.evaluate import evaluate, loglik
from prunelab.evaluate.loglik import loglikelihood_groups, use_engine
from prunelab.prune.depth import BlockEvaluator, blocks_removed, build_objective
from tests.tiny import TINY_FAMILIES, tiny_model, tiny_tokenizer

SETS = [[], [0], [5], [2, 3], [0, 5], [1, 3, 4]]


def _items() -> list[MCItem]:
    long_ctx = "Question: " + "the sun rises over a quiet hill and a bird flies " * 2 + "?\nAnswer:"
    return [
        MCItem(id="a", context="Question: what is up?\nAnswer:", choices=[" sky", " ground", " the sea"], answer=0),
        MCItem(id="b", context="Question: two plus two?\nAnswer:", choices=[" four", " five", " four"], answer=1),
        MCItem(id="c", context="Pick one:", choices=[" x", " yy", " zzz", " w"], answer=2),
        MCItem(id="d", context="", choices=[" cat", " catalog"], answer=1, contexts=["The cat sat", "A dog ran"]),
        MCItem(id="e", context=long_ctx, choices=[" yes", " no thanks"], answer=0),  # > max_len: left-truncated
        MCItem(id="f", context="Same start", choices=[" cat", " catalog", " dog"], answer=0),
    ]


def _sequences(tok, items, max_len):
    """The margin objective's definition: per choice ``ids = (ctx + cont)[-max_len:]`` (separate tokenisation,
    no special tokens), the choice tokens ``ids[start:]`` with ``start = max(1, len(ids) − len(cont))``."""
    out = []
    for i, it in enumerate(items):
        for c, choice in enumerate(it.choices):
            ctx = tok(it.contexts[c] if it.contexts else it.context, add_special_tokens=False)["input_ids"]
            cont = tok(choice, add_special_tokens=False)["input_ids"]
            ids = (ctx + cont)[-max_len:]
            out.append((i, c, ids, max(1, len(ids) - len(cont))))
    return out


@torch.inference_mode()
def _margin_by_hand(model, tok, items, removed, max_len):
    """mean_items [max_{c≠y} ℓ(c) − ℓ(y)], ℓ = mean log p of the choice tokens; each sequence its own forward
    of the model with ``removed`` blocks taken out (the HF forward, no packing, no cache)."""
    ll = [[0.0] * len(it.choices) for it in items]
    with blocks_removed(model, removed):
        for i, c, ids, st in _sequences(tok, items, max_len):
            logp = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float().log_softmax(-1)
            ll[i][c] = sum(logp[p - 1, ids[p]].item() for p in range(st, len(ids))) / (len(ids) - st)
    margins = [max(v for c, v in enumerate(row) if c != it.answer) - row[it.answer] for it, row in zip(items, ll)]
    return sum(margins) / len(margins)


@torch.inference_mode()
def _influence_by_hand(model, tok, items, max_len):
    """ShortGPT ``BI_i = 1 − E_t cos(x_i,t, x_i+1,t)`` over every token of every choice sequence."""
    from prunelab.models.adapters import adapter_for

    layers = list(adapter_for(model).layers(model))
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [layer.register_forward_hook(
        lambda mod, args, kwargs, out, i=i: seen.__setitem__(
            i, ((args[0] if args else kwargs["hidden_states"])[0], (out[0] if isinstance(out, tuple) else out)[0])),
        with_kwargs=True) for i, layer in enumerate(layers)]
    num, den = [0.0] * len(layers), 0
    try:
        for _, _, ids, _ in _sequences(tok, items, max_len):
            model.model(input_ids=torch.tensor([ids]), use_cache=False)
            for i, (x, y) in seen.items():
                num[i] += float(torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).double().sum())
            den += len(ids)
    finally:
        for h in hooks:
            h.remove()
    return [1.0 - n / den for n in num]


@pytest.mark.parametrize("fam", TINY_FAMILIES)
@pytest.mark.parametrize("row_tokens", [256, 32])
def test_margin_objective_values_unchanged(fam, row_tokens, monkeypatch):
    """Cached, naive and stacked margin values == the per-sequence definition (dense and pruned), including an
    item longer than ``max_len`` (left-truncated), per-choice contexts and a duplicated choice. 32-token rows
    (budget 64) split the set into several forwards of two rows, some plain (see ``loglik._pack``)."""
    # 6 blocks so removed sets leave ≥ 1; the long item (> 40 tokens) also crosses Gemma2's 16-token window
    monkeypatch.setattr(loglik, "ROW_TOKENS", row_tokens)
    model, tok = tiny_model(fam, num_hidden_layers=6, max_position_embeddings=128), tiny_tokenizer()
    items, max_len = _items(), 40
    assert max(len(ids) for _, _, ids, _ in _sequences(tok, items, 10**6)) > max_len
    obj = build_objective(model, tok, "margin", items, batch_size=1 if row_tokens == 256 else 2, max_len=max_len)
    if row_tokens == 32:
        assert len(obj.batches) > 2 and any(b.position_ids is None for b in obj.batches)
        assert any(b.input_ids.shape[0] > 1 for b in obj.batches)
    expected = [_margin_by_hand(model, tok, items, s, max_len) for s in SETS]
    cached, naive = BlockEvaluator(model, obj), BlockEvaluator(model, obj, cached=False)
    assert [cached(s) for s in SETS] == pytest.approx(expected, abs=1e-5)
    assert [naive(s) for s in SETS] == pytest.approx(expected, abs=1e-5)
    assert BlockEvaluator(model, obj).evaluate_many(SETS) == pytest.approx(expected, abs=1e-5)
    assert cached.block_influence() == pytest.approx(_influence_by_hand(model, tok, items, max_len), abs=1e-5)


def test_margin_scores_are_the_engines():
    """Dense ``ℓ(c)·|c|`` of the margin objective == the evaluation engine's log-likelihood of the same pair (the
    tiny character tokeniser splits context and choice the same either way), and building it packs through
    :func:`loglik.packed_forwards`."""
    model, tok = tiny_model("qwen2", num_hidden_layers=4, max_position_embeddings=128), tiny_tokenizer()
    items = [it for it in _items() if it.id != "e"]  # no truncation: max_len and the model window differ
    calls = []
    real = loglik.packed_forwards
    loglik.packed_forwards = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        obj = build_objective(model, tok, "margin", items)
    finally:
        loglik.packed_forwards = real
    assert calls
    ev = BlockEvaluator(model, obj)
    ev._capture()
    with torch.inference_mode():
        ell = obj.choice_loglik(model, ev._cached_normed(frozenset()))
    groups = [[(it.contexts[c] if it.contexts else it.context, x) for c, x in enumerate(it.choices)] for it in items]
    engine = loglikelihood_groups(model, tok, groups)
    for it, row, scores in zip(items, ell, engine):
        n = [len(tok(x, add_special_tokens=False)["input_ids"]) for x in it.choices]
        assert [v * k for v, k in zip(row, n)] == pytest.approx([ll for ll, _ in scores], abs=1e-4)


def _spy(monkeypatch):
    """Count calls of the packed engine and of the one-request reference."""
    calls = {"packed": 0, "reference": 0}
    packed, reference = loglik.packed_forwards, loglik.loglikelihood_reference

    def spy_packed(*a, **k):
        calls["packed"] += 1
        return packed(*a, **k)

    def spy_reference(*a, **k):
        calls["reference"] += 1
        return reference(*a, **k)

    monkeypatch.setattr(loglik, "packed_forwards", spy_packed)
    monkeypatch.setattr(loglik, "loglikelihood_reference", spy_reference)
    return calls


def test_every_evaluation_caller_uses_the_engine(monkeypatch, tmp_path):
    """``evaluate``, the experiment runner's evaluate stage, the dichotomy battery's evaluator and ``prunelab
    eval`` all score log-likelihood tasks through the packed engine; ``use_engine("reference")`` reroutes every
    one of them to one request at a time, with the same per-item predictions."""
    import json

    from typer.testing import CliRunner

    from prunelab.cli import app
    from prunelab.experiments.stages import real_evaluate
    from prunelab.runs.config import EvalSpec
    from prunelab.studies.dichotomy.run import _library_evaluate
    from tests.tiny import save_tiny

    model, tok = tiny_model("llama", max_position_embeddings=1024), tiny_tokenizer()
    saved = save_tiny(tmp_path, max_position_embeddings=1024)
    spec = EvalSpec(tasks=["arc_easy", "lambada"], limits={"arc_easy": 3, "lambada": 2}, batch_size=2,
                    composite=["arc_easy", "lambada"])
    callers = {
        "evaluate": lambda: {t: r.outcomes for t, r in
                             evaluate(model, tok, ["arc_easy", "lambada"], limit=2, batch_size=2).results.items()},
        "stage": lambda: real_evaluate(model, tok, spec, spec.tasks).outcomes,
        "dichotomy": lambda: {"truthfulqa_mc2": _library_evaluate()(model, tok, "truthfulqa_mc2", 2, 0, 2).outcomes},
        "cli": lambda: _cli(CliRunner(), app, saved, tmp_path / "r.json", json),
    }
    calls = _spy(monkeypatch)
    for name, run in callers.items():
        calls.update(packed=0, reference=0)
        fast = run()
        assert calls["packed"] > 0 and calls["reference"] == 0, name
        with use_engine("reference"):
            slow = run()
        assert calls["reference"] > 0, name
        assert fast.keys() == slow.keys()
        for task in fast:
            assert [o.prediction for o in fast[task]] == [o.prediction for o in slow[task]], (name, task)
            assert [o.correct for o in fast[task]] == [o.correct for o in slow[task]], (name, task)


def _cli(runner, app, saved, out, json):
    from prunelab.evaluate.registry import ItemOutcome

    res = runner.invoke(app, ["eval", str(saved), "--tasks", "arc_easy,lambada", "--limit", "2", "--batch-size", "2",
                              "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())["results"]
    return {t: [ItemOutcome.from_dict(o) for o in r["outcomes"]] for t, r in data.items()}
