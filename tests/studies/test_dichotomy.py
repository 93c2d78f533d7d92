"""The dichotomy study: ratio validation, correlations, the pipeline end to end (fake battery and real tiny
tasks), absent data, outputs, determinism, and the CLI."""

from __future__ import annotations

import csv
import json
import math

import pytest
from scipy import stats
from typer.testing import CliRunner

import prunelab
from prunelab.errors import PrunelabError
from prunelab.evaluate.registry import TaskResult
from prunelab.models import adapter_for
from prunelab.studies import dichotomy as d
from tests.tiny import save_tiny, tiny_model, tiny_tokenizer

# tiny llama: hidden 32, GLU 48 -> own expansion ratio 1.5


def _width(model) -> int:
    a = adapter_for(model)
    return a.mlp_width(a.layers(model)[0])


def fake_evaluate(model, tokenizer, task, limit, seed, batch_size):
    """Scores that depend on the pruned width only: knowledge falls, truthfulness rises, ppl grows."""
    f = _width(model) / 48
    score = {"arc_challenge": 25 + 40 * f, "truthfulqa_mc2": 60 - 20 * f, "wikitext2": 10 / f,
             "ifeval": 30 - 5 * f * f, "gsm8k": 0.0, "hellaswag": 30 + 10 * f}[task]
    return TaskResult(task, {"acc": score, "other": 1.0}, "acc", limit or 0, [], 0.0)


def fake_efficiency(model, tokenizer):
    return {"params": sum(p.numel() for p in model.parameters()), "energy_j_per_token": "unavailable"}


FAKE_TASKS = ["arc_challenge", "truthfulqa_mc2", "wikitext2", "ifeval", "gsm8k"]


# ------------------------------------------------------------------------------------------------ ratios
def test_validate_ratios_dense_first_then_descending():
    plan = d.validate_expansion_ratios(tiny_model("llama"), [0.5, 1.2, 1.5, 1.0])
    assert plan.dense_ratio == 1.5 and plan.hidden_size == 32 and plan.dense_width == 48
    assert plan.points == [(1.5, 48), (1.2, 38), (1.0, 32), (0.5, 16)]  # 1.5 listed = the dense point
    assert d.validate_expansion_ratios(tiny_model("llama"), [1.0]).points == [(1.5, 48), (1.0, 32)]


@pytest.mark.parametrize("ratios, message", [
    ([2.0], "≥ the model's own 1.5"),
    ([1.6, 1.0], "≥ the model's own"),
    ([0.0], "must be a number > 0"),
    ([-1.0], "must be a number > 0"),
    ([float("nan")], "must be a number > 0"),
    ([0.01], "rounds to zero neurons"),
    ([1.0, 1.01], "both keep 32 neurons"),
    ([1.49], "no fewer than the dense 48"),
])
def test_validate_ratios_errors(ratios, message):
    with pytest.raises(PrunelabError, match=message):
        d.validate_expansion_ratios(tiny_model("llama"), ratios)


def test_round_to_matches_width_pruning_rule():
    from prunelab.prune.width import plan_widths

    for e in (0.3, 0.5, 0.77, 1.0, 1.2):
        for r in (1, 4, 8):
            expected = plan_widths([48] * 4, 32, None, e, r)[0] if d.kept_width(e, 32, r) > 0 else 0
            assert d.kept_width(e, 32, r) == expected
    with pytest.raises(PrunelabError, match="rounding to multiples of 8"):
        d.validate_expansion_ratios(tiny_model("llama"), [0.2], round_to=8)  # round(6.4)=6 -> 0


def test_parse_ratios():
    assert d.parse_ratios("4.0, 3.2,2.4") == [4.0, 3.2, 2.4]
    with pytest.raises(PrunelabError, match="not a number"):
        d.parse_ratios("2.4,abc")
    with pytest.raises(PrunelabError, match="no expansion ratio"):
        d.parse_ratios(" , ")


# ------------------------------------------------------------------------------------------------ correlations
def test_correlation_matrix_matches_scipy_and_flags_undefined():
    series = {"a": [1.0, 2.0, 3.0, 5.0], "b": [2.0, 1.0, 4.0, 3.0], "c": [7.0, 7.0, 7.0, 7.0],
              "d": [1.0, None, 2.0, 8.0]}
    pairs = {(c.a, c.b): c for c in d.correlation_matrix(series)}
    assert len(pairs) == 6
    ref = stats.pearsonr(series["a"], series["b"])
    assert pairs[("a", "b")].r == pytest.approx(ref.statistic) and pairs[("a", "b")].p == pytest.approx(ref.pvalue)
    assert pairs[("a", "c")].r is None and "constant" in pairs[("a", "c")].reason
    ad = stats.pearsonr([1.0, 3.0, 5.0], [1.0, 2.0, 8.0])  # the missing point is dropped pairwise
    assert pairs[("a", "d")].n == 3 and pairs[("a", "d")].r == pytest.approx(ad.statistic)
    short = d.correlation_matrix({"x": [1.0, 2.0], "y": [2.0, 1.0]})
    assert short[0].r is None and "at least 3" in short[0].reason


def test_study_correlation_reproduces_pearsonr_on_paper_like_series():
    # a knowledge series falling and a truthfulness series rising across 7 ratios: r < 0, p from scipy
    mmlu = [56.0, 54.1, 50.2, 45.0, 40.3, 33.9, 30.1]
    mc2 = [39.5, 40.1, 41.8, 41.0, 43.9, 44.2, 46.0]
    c = d.correlation_matrix({"mmlu": mmlu, "truthfulqa_mc2": mc2})[0]
    ref = stats.pearsonr(mmlu, mc2)
    assert c.r == pytest.approx(ref.statistic) and c.p == pytest.approx(ref.pvalue) and c.r < -0.9


# ------------------------------------------------------------------------------------------------ pipeline
def _run(**kw):
    args = dict(tasks=FAKE_TASKS, limit=3, evaluate_fn=fake_evaluate, efficiency_fn=fake_efficiency,
                model_name="tiny")
    args.update(kw)
    return d.run_dichotomy(tiny_model("llama"), tiny_tokenizer(), [1.2, 1.0, 0.5, 0.25], **args)


def test_pipeline_end_to_end_with_fake_battery(tmp_path):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    res = d.run_dichotomy(model, tiny_tokenizer(), [1.2, 1.0, 0.5, 0.25], tasks=FAKE_TASKS, limit=3,
                          evaluate_fn=fake_evaluate, efficiency_fn=fake_efficiency, model_name="tiny",
                          progress=lambda msg, done, total: seen.append((msg, done, total)))
    # the dense model is untouched: every ratio prunes a fresh copy
    assert all(v.equal(before[k]) for k, v in model.state_dict().items())
    assert res.ratios == [1.5, 1.2, 1.0, 0.5, 0.25]
    assert [p.intermediate_size for p in res.points] == [48, 38, 32, 16, 8]
    assert [p.dense for p in res.points] == [True, False, False, False, False]
    assert res.points[0].params > res.points[1].params > res.points[-1].params
    assert res.points[-1].efficiency == {"params": res.points[-1].params, "energy_j_per_token": "unavailable"}
    assert res.kinds == {"knowledge": ["arc_challenge"], "truthfulness": ["truthfulqa_mc2"],
                         "language": ["wikitext2"], "instruction": ["ifeval"], "math": ["gsm8k"]}
    # normalised to dense; perplexity inverted; a dense score of 0 has no relative scale
    assert res.normalised["arc_challenge"][0] == 1.0
    assert res.normalised["arc_challenge"][2] == pytest.approx((25 + 40 * 32 / 48) / 65)
    assert res.normalised["wikitext2"][3] == pytest.approx(16 / 48)
    assert res.normalised["gsm8k"] == [None] * 5
    # knowledge vs truthfulness: both linear in width with opposite signs -> r = -1
    c = res.correlation("arc_challenge", "truthfulqa_mc2")
    assert c.r == pytest.approx(-1.0) and c.n == 5
    assert res.correlation("knowledge", "truthfulness").r == pytest.approx(-1.0)
    assert res.correlation("arc_challenge", "gsm8k").r is None
    # progress: counts up to the total, each step announced
    assert seen[-1][2] == 5 * (len(FAKE_TASKS) + 1) + 4 and any("pruning to 8" in m for m, _, _ in seen)

    files = d.write_outputs(res, tmp_path / "out")
    names = {f.name for f in files}
    assert {"table.md", "table.csv", "table.json", "correlations.md", "correlations.csv", "correlation_matrix.csv",
            "correlation_pvalues.csv", "capabilities.png", "correlations.png", "efficiency.csv", "result.json"} <= names
    assert all(f.exists() for f in files) and not list(tmp_path.glob(".out.tmp-*"))
    rows = list(csv.DictReader(open(tmp_path / "out" / "table.csv")))
    assert [r["intermediate_size"] for r in rows] == ["48", "38", "32", "16", "8"]
    assert float(rows[1]["arc_challenge"]) == pytest.approx(25 + 40 * 38 / 48)
    matrix = list(csv.reader(open(tmp_path / "out" / "correlation_matrix.csv")))
    assert matrix[0][1:] == FAKE_TASKS and float(matrix[1][2]) == pytest.approx(-1.0)
    assert (tmp_path / "out" / "capabilities.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tmp_path / "out" / "result.json").read_text())
    assert data["points"][0]["dense"] is True and len(data["task_correlations"]) == 10


def test_pipeline_uses_real_maw_pruning():
    """Default prune_fn = prunelab.prune.width.prune_width(maw): the kept neurons are the top MAW scores."""
    from prunelab.prune.width import prune_width

    kept = {}

    def record(model, tokenizer, task, limit, seed, bs):
        kept[_width(model)] = model.model.layers[0].mlp.down_proj.weight.clone()
        return fake_evaluate(model, tokenizer, task, limit, seed, bs)

    base = tiny_model("llama")
    d.run_dichotomy(base, tiny_tokenizer(), [1.0], tasks=["arc_challenge"], limit=2, evaluate_fn=record,
                    efficiency=False)
    ref = tiny_model("llama")
    prune_width(ref, None, criterion="maw", expansion_ratio=1.0, progress=False)
    assert kept[32].equal(ref.model.layers[0].mlp.down_proj.weight)


def test_absent_data_is_reported_not_skipped(tmp_path, monkeypatch):
    from prunelab.data import paths

    root = tmp_path / "data"
    root.mkdir()
    shared = paths.data_root()
    for name in ("arc_challenge", "truthfulqa", "wikitext2", "ifeval"):  # no gsm8k
        (root / name).symlink_to(shared / name)
    monkeypatch.setattr(paths, "candidate_roots", lambda: [root])
    res = _run()
    assert set(res.absent) == {"gsm8k"} and "gsm8k" in res.absent["gsm8k"]
    assert all(p.scores["gsm8k"] is None for p in res.points) and "gsm8k" in res.tasks
    assert "gsm8k" not in res.normalised
    out = d.write_outputs(res, tmp_path / "out")
    assert out
    table = (tmp_path / "out" / "table.md").read_text()
    assert "**gsm8k: absent**" in table
    rows = list(csv.DictReader(open(tmp_path / "out" / "table.csv")))
    assert {r["gsm8k"] for r in rows} == {"absent"}


def test_rerun_is_identical(tmp_path):
    a, b = _run(), _run()
    d.write_outputs(a, tmp_path / "a")
    d.write_outputs(b, tmp_path / "b")
    for name in ("table.csv", "table.md", "table.json", "correlations.csv", "correlation_matrix.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_bad_inputs_fail_before_any_work():
    calls = []

    def spy(*a):
        calls.append(a)
        return fake_evaluate(*a)

    with pytest.raises(PrunelabError, match="≥ the model's own"):
        d.run_dichotomy(tiny_model("llama"), tiny_tokenizer(), [1.0, 3.0], tasks=["arc_challenge"], evaluate_fn=spy)
    with pytest.raises(PrunelabError, match="unknown eval task"):
        d.run_dichotomy(tiny_model("llama"), tiny_tokenizer(), [1.0], tasks=["nope"])
    with pytest.raises(PrunelabError, match="unknown width criterion"):
        d.run_dichotomy(tiny_model("llama"), tiny_tokenizer(), [1.0], tasks=["arc_challenge"], criterion="nope",
                        evaluate_fn=spy)
    with pytest.raises(PrunelabError, match="limit"):
        d.run_dichotomy(tiny_model("llama"), tiny_tokenizer(), [1.0], tasks=["arc_challenge"], limit=0,
                        evaluate_fn=spy)
    assert calls == []


def test_failed_run_leaves_no_output(tmp_path):
    res = _run(tasks=["arc_challenge", "ifeval"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    res.kind_series["bogus"] = [object()] * len(res.points)  # makes plotting fail half-way
    with pytest.raises(Exception):
        d.write_outputs(res, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# ------------------------------------------------------------------------------------------------ real tiny tasks
def test_pipeline_with_real_tasks_on_tiny_model():
    """The library's own evaluate + generative tasks on a tiny model with tiny limits (seconds)."""
    res = d.run_dichotomy(tiny_model("llama", max_position_embeddings=1024), tiny_tokenizer(), [1.0],
                          tasks=["arc_challenge", "truthfulqa_mc1", "ifeval", "gsm8k"], limit=2, efficiency=False,
                          generation={"ifeval_max_new_tokens": 4, "gsm8k_max_new_tokens": 4, "gsm8k_shots": 0})
    assert res.absent == {} and len(res.points) == 2
    for p in res.points:
        assert all(v is not None and 0 <= v <= 100 for v in p.scores.values())
        assert set(p.metrics["ifeval"]) >= {"prompt_level_strict_acc", "inst_level_loose_acc"}
    assert res.settings["gsm8k_shots"] == 0 and res.limits == dict.fromkeys(res.tasks, 2)


def test_pipeline_with_library_efficiency(tmp_path):
    res = d.run_dichotomy(tiny_model("llama"), tiny_tokenizer(), [1.0], tasks=["arc_challenge"], limit=2,
                          evaluate_fn=fake_evaluate, efficiency_kwargs={"new_tokens": 2, "batch_size": 2})
    dense, pruned = (p.efficiency for p in res.points)
    assert dense["params_total"] == res.points[0].params > pruned["params_total"] == res.points[1].params
    assert pruned["flops_per_token"] < dense["flops_per_token"] and pruned["latency_s"] > 0
    d.write_outputs(res, tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "efficiency.csv")))
    assert len(rows) == 2 and rows[0]["throughput_tok_s"]
    if dense["energy_j_per_token"] is None:
        assert rows[0]["energy_j_per_token"] == "unavailable"


# ------------------------------------------------------------------------------------------------ CLI
runner = CliRunner()


@pytest.fixture
def saved_tiny(tmp_path):
    return save_tiny(tmp_path, max_position_embeddings=1024)


@pytest.mark.parametrize("ratios, message", [
    ("2.0,1.0", "≥ the model's own 1.5"), ("0", "> 0"), ("0.01", "zero neurons"), ("1.0,x", "not a number"),
])
def test_cli_rejects_bad_ratios(saved_tiny, tmp_path, ratios, message):
    from prunelab.cli import app

    out = tmp_path / "out"
    result = runner.invoke(app, ["dichotomy", str(saved_tiny), "--expansion-ratios", ratios, "-o", str(out)])
    assert result.exit_code != 0 and isinstance(result.exception, PrunelabError)
    assert message in str(result.exception) and not out.exists()


def test_cli_runs_and_writes(saved_tiny, tmp_path, monkeypatch):
    from prunelab.cli import app

    from prunelab.studies.dichotomy import run

    monkeypatch.setattr(run, "_library_evaluate", lambda progress=None: fake_evaluate)
    out, js = tmp_path / "out", tmp_path / "r.json"
    result = runner.invoke(app, ["dichotomy", str(saved_tiny), "-e", "1.2,1.0,0.5", "-o", str(out), "--limit", "2",
                                 "--gen-limit", "1", "--tasks", "arc_challenge,truthfulqa_mc2,ifeval,gsm8k",
                                 "--no-efficiency", "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert "Kinds: knowledge: arc_challenge; truthfulness: truthfulqa_mc2" in result.stdout
    data = json.loads(js.read_text())
    assert [p["intermediate_size"] for p in data["points"]] == [48, 38, 32, 16]
    assert data["limits"] == {"arc_challenge": 2, "truthfulqa_mc2": 2, "ifeval": 1, "gsm8k": 1}
    assert (out / "correlations.png").exists() and (out / "table.csv").exists()
    assert not math.isnan(data["task_correlations"][0]["r"])


# ------------------------------------------------------------------------------------------------ real model
@pytest.mark.real_model
def test_real_smollm2_sweep_rejects_own_ratio_and_prunes():
    """SmolLM2-135M: own ratio 1536/576; 3.2 is rejected; one pruned point with two real tasks, chat-templated
    IFEval, deterministic on rerun."""
    lm = prunelab.load("smollm2-135m")
    with pytest.raises(PrunelabError, match="≥ the model's own 2.667"):
        d.validate_expansion_ratios(lm.model, [3.2, 2.0])
    kw = dict(tasks=["truthfulqa_mc1", "ifeval"], limit=2, efficiency=False,
              generation={"ifeval_max_new_tokens": 12})
    res = d.run_dichotomy(lm.model, lm.tokenizer, [1.6], **kw)
    assert [p.intermediate_size for p in res.points] == [1536, 922]
    assert res.points[0].params == 134_515_008 > res.points[1].params
    for p in res.points:
        assert all(0 <= v <= 100 for v in p.scores.values())
    again = d.run_dichotomy(lm.model, lm.tokenizer, [1.6], **kw)
    assert [p.scores for p in again.points] == [p.scores for p in res.points]
