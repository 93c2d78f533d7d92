"""CLI: `info`, `perplexity` and error handling (one line, exit 2) on tiny models saved to disk."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from prunelab.cli import app

runner = CliRunner()


def test_info_json(saved_tiny):
    result = runner.invoke(app, ["info", str(saved_tiny), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["num_layers"] == 4 and data["hidden_size"] == 32 and data["intermediate_size"] == 48
    assert data["num_heads"] == [4] * 4 and data["num_kv_heads"] == [2] * 4


def test_perplexity_on_text_file(saved_tiny, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "ppl.json"
    result = runner.invoke(app, ["perplexity", str(saved_tiny), "--text", str(text), "--seq-len", "64",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["perplexity"] > 1 and data["windows"] >= 2


@pytest.mark.parametrize("args, message", [
    (["info", "/no/such/dir"], "not found"),
    (["perplexity", "/no/such/dir"], "not found"),
])
def test_bad_input_one_line_exit_2(args, message):
    proc = subprocess.run([sys.executable, "-m", "prunelab", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error:")


def test_not_a_model_dir_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "prunelab", "info", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not a model directory" in proc.stderr
