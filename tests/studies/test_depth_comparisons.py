"""The depth study's comparison table: each search vs the best, each objective vs the other, with CIs."""

from __future__ import annotations

import csv
import json

import pytest

from prunelab.evaluate.registry import ItemOutcome
from prunelab.prune.depth import SearchResult
from prunelab.studies.depth import DepthStudy, StudyRow, comparison_table, run_depth_study, write_study
from prunelab.report.comparisons import NO_DATA
from tests.tiny import tiny_model, tiny_tokenizer

N = 100


def _acc(k: int) -> list[ItemOutcome]:
    return [ItemOutcome(f"q{i}", correct=1.0 if i < k else 0.0) for i in range(N)]


def _ppl(scale: float) -> list[ItemOutcome]:
    return [ItemOutcome(f"w{i}", nll=scale * (100.0 + 3 * (i % 5)), tokens=50) for i in range(12)]


def _row(k, objective, search, correct, scale, removed, keep_outcomes=True):
    res = SearchResult(search, objective, k, 6, removed, [i not in removed for i in range(6)], 1.0, 1.0, 3, 0.1)
    outs = {"arc_easy": _acc(correct), "wikitext2": _ppl(scale)} if keep_outcomes else {}
    import math

    ppl = math.exp(sum(o.nll for o in _ppl(scale)) / (12 * 50))
    return StudyRow(k, objective, search, res, {"arc_easy": float(correct)}, {"wikitext2": ppl}, outs)


def _study(keep_outcomes=True) -> DepthStudy:
    rows = [
        StudyRow(0, "-", "dense", None, {"arc_easy": 50.0}, {"wikitext2": 10.0}, {}),
        # perplexity objective: greedy is best (40 %); one-shot removes the same blocks as greedy (identical model)
        _row(1, "perplexity", "greedy", 40, 1.0, [2], keep_outcomes),
        _row(1, "perplexity", "one-shot", 40, 1.0, [2], keep_outcomes),
        _row(1, "perplexity", "bo", 30, 1.1, [4], keep_outcomes),
        # margin objective
        _row(1, "margin", "greedy", 38, 1.05, [3], keep_outcomes),
        _row(1, "margin", "one-shot", 25, 1.2, [5], keep_outcomes),
        _row(1, "margin", "bo", 38, 1.05, [3], keep_outcomes),
    ]
    return DepthStudy("tiny", [1], ["perplexity", "margin"], ["greedy", "one-shot", "bo"], ["arc_easy"],
                      ["wikitext2"], {}, rows)


def _find(table, comparison, objective, search):
    return next(r for r in table.rows if r[1] == comparison and r[2] == objective and r[3] == search)


def test_each_search_vs_the_best_and_each_objective_vs_the_other():
    t = comparison_table(_study())
    bo = _find(t, "search vs best", "perplexity", "bo")
    assert bo[4] == "greedy (best)"
    acc, ppl = bo[5], bo[6]
    # 30 % vs 40 %: ten items only greedy gets right -> −10 pp, McNemar p = 2·0.5^10
    assert acc.estimate == pytest.approx(-10.0) and acc.diff.p == pytest.approx(2 * 0.5 ** 10) and acc.text().endswith("*")
    assert ppl.diff.unit == "ratio" and ppl.estimate > 1.0
    same = _find(t, "search vs best", "perplexity", "one-shot")[5]  # identical masks -> identical outcomes
    assert (same.diff.low, same.diff.high, same.diff.p) == (0.0, 0.0, 1.0) and not same.text().endswith("*")
    assert "accuracy" in t.noise(_find(t, "search vs best", "perplexity", "one-shot"))
    mg = _find(t, "objective vs objective", "margin", "greedy")
    assert mg[4] == "perplexity objective" and mg[5].estimate == pytest.approx(-2.0) and mg[5].within_noise
    md = t.markdown()
    assert "Minimum detectable difference" in md and "Within noise" in md


def test_no_outcomes_prints_no_ci():
    t = comparison_table(_study(keep_outcomes=False))
    cell = _find(t, "search vs best", "perplexity", "bo")[5]
    assert not cell.has_ci and cell.estimate == pytest.approx(-10.0)
    assert NO_DATA in t.markdown()


def test_write_study_writes_the_comparison_files(tmp_path):
    write_study(_study(), tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "comparisons.csv").open()))
    bo = next(r for r in rows if r["search"] == "bo" and r["objective"] == "perplexity")
    assert float(bo["Δ avg accuracy (pp) low"]) < -10.0 < float(bo["Δ avg accuracy (pp) high"])
    assert float(bo["Δ avg accuracy (pp) p"]) < 0.05
    data = json.loads((tmp_path / "out" / "comparisons.json").read_text())
    assert "csv_columns" in data and data["records"]
    assert (tmp_path / "out" / "comparisons.md").read_text().startswith("**tiny:")


def test_write_study_reuses_tables_it_is_given(tmp_path, monkeypatch):
    """The CLI builds the tables once, prints one and writes them all: the comparison bootstraps run once."""
    from prunelab.studies.depth import outputs, study_table_objects

    study = _study()
    tables = study_table_objects(study)
    monkeypatch.setattr(outputs, "comparison_table", lambda s: pytest.fail("comparisons built a second time"))
    write_study(study, tmp_path / "out", tables)
    assert (tmp_path / "out" / "comparisons.md").read_text() == tables["comparisons"].markdown()


def test_run_depth_study_keeps_per_item_outcomes():
    """The real evaluation path: every row carries TaskResult.outcomes, so the CIs need no re-evaluation.
    (Accuracy only: WikiText-2 re-tokenises the whole corpus per evaluation, seconds each on a tiny model.)"""
    model, tok = tiny_model("llama", num_hidden_layers=4), tiny_tokenizer()
    study = run_depth_study(model, tok, [1], ["perplexity"], ["one-shot"], acc_tasks=["arc_easy"], ppl_tasks=[],
                            eval_limit=4, calibration_options={"perplexity": {"n_samples": 2, "seq_len": 16}})
    assert len(study.rows) == 2
    for r in study.rows:
        assert [o.item_id for o in r.outcomes["arc_easy"]] == [o.item_id for o in study.rows[0].outcomes["arc_easy"]]
        assert 100 * sum(o.correct for o in r.outcomes["arc_easy"]) / 4 == pytest.approx(r.accuracy["arc_easy"])
