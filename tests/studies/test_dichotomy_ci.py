"""The dichotomy table's "each ratio vs dense" with CIs from per-item outcomes (fake battery, tiny model)."""

from __future__ import annotations

import csv
import math

import pytest
from scipy import stats as sps

from prunelab.evaluate.registry import ItemOutcome, TaskResult
from prunelab.models import adapter_for
from prunelab.report.comparisons import NO_DATA
from prunelab.studies import dichotomy as d
from tests.tiny import tiny_model, tiny_tokenizer

N = 50


def _width(model) -> int:
    a = adapter_for(model)
    return a.mlp_width(a.layers(model)[0])


def evaluate_with_outcomes(model, tokenizer, task, limit, seed, batch_size):
    """Accuracy falls with width (the first k of N items correct, nested); perplexity grows."""
    f = _width(model) / 48
    if task == "wikitext2":
        # 8 windows of 100 tokens, mean NLL log(10 / f) -> ppl = 10 / f
        nll = math.log(10 / f) * 100
        outs = [ItemOutcome(f"w{i}", nll=nll + (i % 3) - 1, tokens=100) for i in range(8)]
        ppl = math.exp(sum(o.nll for o in outs) / 800)
        return TaskResult(task, {"ppl": ppl}, "ppl", 8, [o.item_id for o in outs], 0.0, outcomes=outs)
    k = {"arc_challenge": round(10 + 30 * f), "piqa": 25}[task]  # piqa does not change with width
    outs = [ItemOutcome(f"{task}{i}", correct=1.0 if i < k else 0.0) for i in range(N)]
    return TaskResult(task, {"acc": 100 * k / N}, "acc", N, [o.item_id for o in outs], 0.0, outcomes=outs)


def _run(evaluate_fn=evaluate_with_outcomes):
    return d.run_dichotomy(tiny_model("llama"), tiny_tokenizer(), [1.0, 0.5], tasks=["arc_challenge", "piqa", "wikitext2"],
                           evaluate_fn=evaluate_fn, efficiency=False, model_name="tiny")


def test_each_ratio_vs_dense_with_ci():
    res = _run()
    assert [len(p.outcomes["arc_challenge"]) for p in res.points] == [N, N, N]
    t = d.vs_dense_table(res)
    assert [r[0] for r in t.rows] == ["1.000", "0.500"]
    half = dict(zip(t.columns, t.rows[1]))
    # e = 0.5 keeps 16/48 of the width: k = 10 + 30/3 = 20 vs dense 40 -> −40 pp, 20 discordant one way
    arc = half["arc_challenge"]
    assert arc.estimate == pytest.approx(-40.0) and arc.diff.p == pytest.approx(sps.binomtest(0, 20, 0.5).pvalue)
    assert arc.text().endswith("*") and not arc.within_noise
    # piqa: identical outcomes at every width -> [0, 0], p = 1, within noise, no mark
    piqa = half["piqa"]
    assert (piqa.diff.low, piqa.diff.high, piqa.diff.p) == (0.0, 0.0, 1.0) and not piqa.text().endswith("*")
    assert "piqa" in t.noise(t.rows[1])
    ppl = half["wikitext2"]
    assert ppl.diff.unit == "ratio" and ppl.estimate == pytest.approx(3.0, rel=1e-6)  # ppl 10/f: 30 vs 10
    assert "Minimum detectable difference" in t.markdown()


def test_outputs_carry_low_high_p(tmp_path):
    files = {f.name for f in d.write_outputs(_run(), tmp_path / "out")}
    assert {"vs_dense.md", "vs_dense.csv", "vs_dense.json"} <= files
    rows = list(csv.DictReader(open(tmp_path / "out" / "vs_dense.csv")))
    half = rows[1]
    assert float(half["arc_challenge low"]) < -40 < float(half["arc_challenge high"])
    assert float(half["arc_challenge p"]) < 0.05
    assert "Each ratio vs dense (95 % CI)" in (tmp_path / "out" / "table.md").read_text()


def test_evaluators_without_outcomes_say_no_ci():
    def bare(*a):
        r = evaluate_with_outcomes(*a)
        r.outcomes = []
        return r

    t = d.vs_dense_table(_run(bare))
    cell = dict(zip(t.columns, t.rows[1]))["arc_challenge"]
    assert not cell.has_ci and cell.estimate == pytest.approx(-40.0)
    assert NO_DATA in t.markdown()
