"""`prunelab stress relapse|chronic` through typer's CliRunner on tiny models saved to disk."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import prunelab
from prunelab.cli import app
from prunelab.errors import PrunelabError
from prunelab.stress import decoder_linears

runner = CliRunner()


def test_relapse_cli_saves_exactly_pruned_model(saved_tiny, tmp_path):
    out, js = tmp_path / "relapsed", tmp_path / "relapse.json"
    result = runner.invoke(app, ["stress", "relapse", str(saved_tiny), "--fraction", "0.3", "-o", str(out),
                                 "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert "down_proj" in result.stdout and "30.0" in result.stdout
    data = json.loads(js.read_text())
    assert data["fraction"] == 0.3 and len(data["layers"]) == 4 * 7
    assert data["max_deviation"] <= 1e-3
    reloaded = prunelab.load(out).model
    original = prunelab.load(saved_tiny).model
    for name, lin in decoder_linears(reloaded).items():
        assert int((lin.weight == 0).sum()) == round(0.3 * lin.weight.numel()), name
    assert torch.equal(reloaded.model.embed_tokens.weight, original.model.embed_tokens.weight)
    assert json.loads((out / "prunelab.json").read_text())["stress"] == "relapse"


def test_relapse_cli_merges_a_peft_adapter_dir(saved_tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = prunelab.load(saved_tiny).model
    peft = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    peft.peft_config["default"].base_model_name_or_path = str(saved_tiny)
    peft.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "relapsed"
    result = runner.invoke(app, ["stress", "relapse", str(tmp_path / "adapter"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "adapter merged first" in result.stdout
    assert not any("lora" in k for k in prunelab.load(out).model.state_dict())


def test_chronic_cli_end_to_end_tiny(saved_tiny, tmp_path):
    """Real recover() maintenance + real evaluate() on a tiny model: the whole CLI path, in seconds."""
    out, js = tmp_path / "chronic", tmp_path / "chronic.json"
    result = runner.invoke(app, [
        "stress", "chronic", str(saved_tiny), "-m", "ssri", "--cycles", "2", "--step", "0.25",
        "--maintenance-epochs", "1", "--samples", "4", "--seq-len", "32", "--tasks", "arc_easy_gen",
        "--limit", "2", "-o", str(out), "--json", str(js),
    ])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.name != ".prunelab-output.json") == [  # + prunelab.atomic's manifest
        "chronic.csv", "chronic.json", "chronic.md", "chronic.png"]
    data = json.loads(js.read_text())
    assert [r["cycle"] for r in data["rows"]] == [0, 1, 2]
    for row in data["rows"][1:]:
        assert abs(row["sparsity"] - row["target_sparsity"]) <= 1e-3
        assert row["loss"] is not None and row["loss"] > 0
        assert 0 <= row["scores"]["arc_easy_gen"] <= 100
    assert "arc_easy_gen" in data["decline"]


@pytest.mark.parametrize("args, message", [
    (["relapse", "{m}", "--fraction", "0", "-o", "{o}"], "fraction"),
    (["relapse", "{m}", "--fraction", "1.0", "-o", "{o}"], "fraction"),
    (["relapse", "{m}", "--fraction", "-0.3", "-o", "{o}"], "fraction"),
    (["relapse", "{m}", "-o", "{o}", "--eval-tasks", "nope"], "nope"),
    (["chronic", "{m}", "-m", "ketamine", "--cycles", "0", "-o", "{o}"], "cycles"),
    (["chronic", "{m}", "-m", "ketamine", "--cycles", "10", "--step", "0.1", "-o", "{o}"], "100%"),
    (["chronic", "{m}", "-m", "ketamine", "--cycles", "2", "--step", "0.5", "-o", "{o}"], "100%"),
    (["chronic", "{m}", "-m", "lithium", "-o", "{o}"], "lithium"),
    (["chronic", "{m}", "-m", "ssri", "--samples", "0", "-o", "{o}"], "samples"),
])
def test_bad_input_is_one_prunelab_error_and_no_output(saved_tiny, tmp_path, args, message):
    out = tmp_path / "out"
    argv = ["stress", *[a.format(m=saved_tiny, o=out) for a in args]]
    result = runner.invoke(app, argv)
    assert isinstance(result.exception, PrunelabError), result.output
    assert message in str(result.exception)
    assert not out.exists()


def test_bad_fraction_exit_2_one_line(tmp_path):
    # The model is never loaded: the fraction is checked first, so a missing model dir is not the error.
    proc = subprocess.run([sys.executable, "-m", "prunelab", "stress", "relapse", str(tmp_path / "none"),
                           "--fraction", "1.5", "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "fraction" in lines[0]
