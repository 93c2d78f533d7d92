"""`prunelab prune depth` and `prunelab depth-study` on a tiny model saved to disk."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from prunelab.cli import app
from prunelab.errors import PrunelabError
from tests.tiny import save_tiny

runner = CliRunner()


@pytest.fixture
def saved_tiny(tmp_path):
    return save_tiny(tmp_path, num_hidden_layers=6)


def test_prune_depth_cli_writes_a_smaller_reloadable_model(saved_tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    out, js = tmp_path / "pruned", tmp_path / "r.json"
    result = runner.invoke(app, ["prune", "depth", str(saved_tiny), "--remove", "2", "--search", "beam",
                                 "--calib-samples", "2", "--calib-seq-len", "16", "-o", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert len(data["removed"]) == 2 and data["n_blocks"] == 6 and data["candidates"] > 6
    m = AutoModelForCausalLM.from_pretrained(out)
    assert m.config.num_hidden_layers == 4
    meta = json.loads((out / "prunelab.json").read_text())
    assert meta["depth_pruning"]["removed"] == data["removed"]


def test_prune_depth_margin_objective(saved_tiny, tmp_path):
    out = tmp_path / "pm"
    result = runner.invoke(app, ["prune", "depth", str(saved_tiny), "-k", "1", "--objective", "margin",
                                 "--search", "one-shot", "--calib-samples", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--remove", "6"], "cannot remove 6 of 6 blocks"),
    (["--remove", "0"], "at least 1 block"),
    (["--remove", "1", "--search", "annealing"], "unknown depth search"),
    (["--remove", "1", "--objective", "bleu"], "unknown depth objective"),
    (["--remove", "1", "--calib-samples", "0"], "empty calibration set"),
])
def test_prune_depth_bad_input_raises_and_writes_nothing(saved_tiny, tmp_path, args, message):
    out = tmp_path / "never"
    with pytest.raises(PrunelabError, match=message):
        runner.invoke(app, ["prune", "depth", str(saved_tiny), *args, "-o", str(out)], catch_exceptions=False)
    assert not out.exists()


def test_prune_depth_bad_input_is_one_line_exit_2(saved_tiny, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "prunelab", "prune", "depth", str(saved_tiny), "--remove", "6",
                           "-o", str(tmp_path / "never")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot remove 6 of 6 blocks" in lines[0], proc.stderr
    assert not (tmp_path / "never").exists()


def test_empty_calibration_text_file(saved_tiny, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(PrunelabError):
        runner.invoke(app, ["prune", "depth", str(saved_tiny), "-k", "1", "--calib-source", str(empty),
                            "-o", str(tmp_path / "o")], catch_exceptions=False)
    assert not (tmp_path / "o").exists()


def test_depth_study_cli_writes_tables_and_figures(saved_tiny, tmp_path):
    out = tmp_path / "study"
    result = runner.invoke(app, [
        "depth-study", str(saved_tiny), "--remove", "1,2", "--objectives", "perplexity,margin",
        "--searches", "one-shot,greedy,fast-block-select,bo", "--search-opt", "bo.trials=5",
        "--search-opt", "bo.n_startup=2", "--calib-samples", "2", "--calib-seq-len", "16", "--margin-items", "3",
        "--eval-limit", "3", "--ppl-windows", "1", "-o", str(out), "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    for name in ("accuracy", "perplexity", "time_vs_accuracy"):
        md = (out / f"{name}.md").read_text()
        assert md.startswith(f"**{saved_tiny}") and "\n| k | objective | search |" in md
        rows = list(csv.DictReader((out / f"{name}.csv").open()))
        assert len(rows) == (1 if name != "time_vs_accuracy" else 0) + 2 * 2 * 4
    for fig in ("masks_perplexity.png", "masks_margin.png", "rank_scatter.png"):
        assert (out / fig).stat().st_size > 1000
    data = json.loads((out / "results.json").read_text())
    assert set(data["spearman"]) == {"k=1", "k=2"}
    acc = list(csv.DictReader((out / "accuracy.csv").open()))
    assert all(0.0 <= float(r["arc_easy"]) <= 100.0 for r in acc)
    assert acc[0]["search"] == "dense"


def test_depth_study_bad_budget_writes_nothing(saved_tiny, tmp_path):
    out = tmp_path / "study"
    with pytest.raises(PrunelabError, match="cannot remove 6 of 6"):
        runner.invoke(app, ["depth-study", str(saved_tiny), "--remove", "1,6", "-o", str(out)],
                      catch_exceptions=False)
    assert not out.exists()
