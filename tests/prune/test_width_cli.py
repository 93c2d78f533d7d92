"""`prunelab prune width` via CliRunner on a tiny model saved to disk (uniform, adaptive, ablation, errors)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import prunelab
from prunelab.cli import app
from prunelab.errors import PrunelabError
from prunelab.models import layer_shapes

runner = CliRunner()
X = torch.randint(3, 120, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def text_file(tmp_path):
    f = tmp_path / "calib.txt"
    f.write_text("\n\n".join(f"the quick brown fox number {i} jumps over the lazy dog." for i in range(60)))
    return f


def test_uniform_maw(saved_tiny, tmp_path):
    out, js = tmp_path / "out", tmp_path / "r.json"
    result = runner.invoke(app, ["prune", "width", str(saved_tiny), "--criterion", "maw", "--ratio", "0.25",
                                 "-o", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert "params" in result.stdout and "→" in result.stdout
    data = json.loads(js.read_text())
    assert data["widths_after"] == [36] * 4 and data["params_after"] < data["params_before"]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.intermediate_size == 36
    meta = json.loads((out / "prunelab.json").read_text())
    assert meta["criterion"] == "maw"


def test_adaptive_per_layer_roundtrip(saved_tiny, tmp_path, text_file):
    out = tmp_path / "ada"
    result = runner.invoke(app, ["prune", "width", str(saved_tiny), "--adaptive", "--amplitude", "0.2", "--steps", "2",
                                 "--ratio", "0.4", "--calibration", str(text_file), "--calib-samples", "4",
                                 "--calib-seq-len", "16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "sparsity_profile.png").exists()
    lm = prunelab.load(out)
    assert len(set(s["intermediate_size"] for s in layer_shapes(lm.model))) > 1  # per-layer widths
    with torch.no_grad():
        assert torch.isfinite(lm.model(input_ids=X).logits).all()


def test_ablation_table(saved_tiny, tmp_path, text_file, monkeypatch):
    import prunelab.data

    monkeypatch.setattr(prunelab.data, "load_wikitext2_text", lambda: text_file.read_text())
    js = tmp_path / "abl.json"
    result = runner.invoke(app, ["prune", "width", str(saved_tiny), "--adaptive", "--amplitude", "0,0.2", "--steps", "1",
                                 "--ratio", "0.3", "--calibration", str(text_file), "--calib-samples", "4",
                                 "--calib-seq-len", "16", "--ppl-windows", "2", "--heldout-samples", "2",
                                 "--criterion", "maw_hybrid", "--mlp-only", "--json", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    rows = data["rows"]
    assert [r["amplitude"] for r in rows] == [0.0, 0.2] and all(r["perplexity"] > 1 for r in rows)
    assert all(r["heldout_perplexity"] > 1 for r in rows) and data["heldout_tokens"] == 2 * 16
    best = min(rows, key=lambda r: r["heldout_perplexity"])["amplitude"]
    assert data["selected_amplitude"] == best and f"selected A = {best:g}" in result.output
    assert all(r["criterion"] == "maw_hybrid" for r in data["reports"])


def test_amplitude_list_with_output_saves_the_heldout_best(saved_tiny, tmp_path, text_file, monkeypatch):
    import prunelab.data
    from prunelab.cli.prune_width import AUTO_AMPLITUDES, parse_amplitudes

    assert parse_amplitudes("auto") == list(AUTO_AMPLITUDES)
    monkeypatch.setattr(prunelab.data, "load_wikitext2_text", lambda: text_file.read_text())
    out, js = tmp_path / "best", tmp_path / "best.json"
    result = runner.invoke(app, ["prune", "width", str(saved_tiny), "--adaptive", "--amplitude", "0,0.3", "--steps", "1",
                                 "--ratio", "0.3", "--calibration", str(text_file), "--calib-samples", "4",
                                 "--calib-seq-len", "16", "--ppl-windows", "1", "--heldout-samples", "2",
                                 "-o", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    rows = data["amplitude_selection"]["rows"]
    best = min(rows, key=lambda r: r["heldout_perplexity"])
    assert data["amplitude"] == best["amplitude"] and data["params_after"] == best["params"]
    lm = prunelab.load(out)
    assert sum(p.numel() for p in lm.model.parameters()) == best["params"]
    assert (out / "sparsity_profile.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--ratio", "1.5"], "ratio must be in [0, 1)"),
    (["--ratio", "0.2", "--criterion", "nope"], "unknown width criterion 'nope'"),
    (["--ratio", "0.2", "--heads-ratio", "0.25"], "GQA"),
    (["--ratio", "0.95", "--round-to", "8"], "0 MLP neurons"),
    (["--adaptive", "--amplitude", "x"], "--amplitude must be"),
    (["--adaptive"], "--adaptive needs --ratio"),
    (["--adaptive", "--ratio", "0.3", "--criterion", "maw_hybrid"], "--mlp-only"),
    (["--adaptive", "--ratio", "0.3", "--amplitude", "auto", "--heldout-samples", "0"], "held-out"),
])
def test_bad_input_nothing_written(saved_tiny, tmp_path, args, message):
    out = tmp_path / "o"
    result = runner.invoke(app, ["prune", "width", str(saved_tiny), "-o", str(out), *args])
    assert isinstance(result.exception, PrunelabError), result.output
    assert message in str(result.exception)
    assert not out.exists()
