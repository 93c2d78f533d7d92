"""`prunelab recover` via CliRunner; merge + save + reload of a per-layer pruned base gives identical logits."""

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
from prunelab.models.surgery import prune_mlp_neurons, sync_config
from prunelab.recover import count_trainable_lora_params, recover, train_flops
from tests.tiny import tiny_model, tiny_tokenizer

runner = CliRunner()


def per_layer_pruned(family: str = "llama"):
    model = tiny_model(family)
    for layer, keep in ((0, range(0, 48, 2)), (1, range(40)), (3, range(7, 19))):
        prune_mlp_neurons(model, layer, keep)
    sync_config(model)
    return model


@pytest.fixture
def saved_pruned(tmp_path):
    path = tmp_path / "pruned"
    prunelab.save(per_layer_pruned(), tiny_tokenizer(), path)
    return path


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_merge_save_reload_per_layer_base(tmp_path, family):
    src = tmp_path / "src"
    prunelab.save(per_layer_pruned(family), tiny_tokenizer(), src)
    lm = prunelab.load(src)
    assert [layer.mlp.down_proj.in_features for layer in lm.model.model.layers] == [24, 40, 48, 12]
    records = [("### Instruction:\nsay ab\n\n### Response:\n", "ab ab ab")] * 8
    out = tmp_path / "out"
    res = recover(lm.model, lm.tokenizer, "ketamine", records, epochs=2, seq_len=40, lr=1e-2, batch_size=4,
                  grad_accum=1, output_dir=out, progress=False)
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "recovery.json").exists()
    reloaded = prunelab.load(out)
    x = torch.tensor([list(range(3, 30))])
    with torch.no_grad():
        want = res.model.eval()(input_ids=x).logits
        got = reloaded.model(input_ids=x).logits
        base = prunelab.load(src).model(input_ids=x).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (want - base).abs().max() > 1e-3  # the merge changed the model
    saved = json.loads((out / "recovery.json").read_text())
    assert saved["mechanism"] == "ketamine" and saved["steps"] == res.steps


def test_cli_recover_isodose(saved_pruned, tmp_path):
    out, js = tmp_path / "rec", tmp_path / "r.json"
    result = runner.invoke(app, ["recover", str(saved_pruned), "--mechanism", "neurosteroid", "--isodose-ref",
                                 "ketamine:1", "--samples", "8", "--seq-len", "32", "-o", str(out),
                                 "--json", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    model = prunelab.load(saved_pruned).model
    p_ref = count_trainable_lora_params(model, "ketamine")
    p = count_trainable_lora_params(model, "neurosteroid")
    budget = train_flops(p_ref, 32, 8, 1)
    assert data["budget"] == budget and data["reference"] == "ketamine:1"
    assert data["epochs"] == round(budget / train_flops(p, 32, 8, 1)) >= 2
    assert data["flops"] == train_flops(p, 32, 8, data["epochs"])
    assert abs(data["flops"] - budget) <= train_flops(p, 32, 8, 1)
    assert "study 6·P·L·N·E" in result.output and "honest" in result.output
    assert prunelab.load(out).model.config.per_layer_config is not None


def test_cli_recover_honest_isodose(saved_pruned, tmp_path):
    """--isodose-formula honest: epochs solved on T·(2F + 6P); the JSON names the formula and both costs."""
    from prunelab.recover.isodose import base_forward_flops_per_token, honest_flops

    js = tmp_path / "r.json"
    result = runner.invoke(app, ["recover", str(saved_pruned), "-m", "neurosteroid", "--isodose-ref", "ssri:5",
                                 "--isodose-formula", "honest", "--samples", "4", "--seq-len", "16",
                                 "-o", str(tmp_path / "o"), "--json", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    model = prunelab.load(saved_pruned).model
    f = base_forward_flops_per_token(model, 16)
    p_ref, p = (count_trainable_lora_params(model, m) for m in ("ssri", "neurosteroid"))
    tokens = 4 * 16  # padded: N·L per epoch
    assert data["isodose_formula"] == "honest" and data["budget"] == honest_flops(f, p_ref, 5 * tokens)
    assert data["epochs"] == round(data["budget"] / honest_flops(f, p, tokens)) >= 1
    assert data["honest_flops"] == honest_flops(f, p, data["epochs"] * tokens)
    assert data["flops"] == train_flops(p, 16, 4, data["epochs"])
    assert "honest budget" in result.output


def test_cli_epochs_override_no_pad(saved_pruned, tmp_path):
    js = tmp_path / "r.json"
    result = runner.invoke(app, ["recover", str(saved_pruned), "-m", "ssri", "--epochs", "1", "--samples", "4",
                                 "--seq-len", "1024", "--no-pad", "--seed", "3", "-o", str(tmp_path / "o"),
                                 "--json", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    from prunelab.data import dolly_split
    from prunelab.recover import tokenize_records

    rows = tokenize_records(tiny_tokenizer(), dolly_split(4, 100, seed=3).train, 1024, pad_to_max=False)
    assert data["epochs"] == 1 and not data["padded"] and data["seed"] == 3
    assert data["tokens"] == sum(len(r["input_ids"]) for r in rows) < 4 * 1024


@pytest.mark.parametrize("args,msg", [
    (["-m", "prozac"], "unknown recovery mechanism 'prozac'"),
    (["--isodose-ref", "ketamine"], "MECHANISM:EPOCHS"),
    (["--isodose-ref", "lsd:3"], "unknown recovery mechanism 'lsd'"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--samples", "0"], "--samples must be"),
    (["-m", "ssri", "--isodose-ref", "ssri:0.1", "--strict", "--samples", "4"], "of one epoch"),
    (["--isodose-formula", "fair"], "unknown isodose formula 'fair'; known: study, honest"),
])
def test_cli_bad_input(saved_pruned, tmp_path, args, msg):
    out = tmp_path / "o"
    result = runner.invoke(app, ["recover", str(saved_pruned), "-o", str(out), *args])
    assert isinstance(result.exception, PrunelabError), result.output
    assert msg in str(result.exception)
    assert not out.exists()


def test_cli_bad_yaml_r0_exit_2(saved_pruned, tmp_path):
    y = tmp_path / "m.yaml"
    y.write_text("- {name: zero, r: 0, alpha: 1, targets: [q], dropout: 0, lr: 1e-4}\n")
    proc = subprocess.run([sys.executable, "-m", "prunelab", "recover", str(saved_pruned), "-o", str(tmp_path / "o"),
                           "--mechanisms-file", str(y), "-m", "zero"], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "rank r must be a positive integer" in lines[0]


def test_cli_budget_below_one_epoch_is_reported_and_clamped(saved_pruned, tmp_path):
    js = tmp_path / "r.json"
    result = runner.invoke(app, ["recover", str(saved_pruned), "-m", "ketamine", "--isodose-ref", "ssri:1",
                                 "--samples", "4", "--seq-len", "32", "-o", str(tmp_path / "o"), "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert "clamped to 1 epoch" in result.output and "of one epoch" in result.output
    data = json.loads(js.read_text())
    assert data["epochs"] == 1 and data["exact_epochs"] < 0.5 and data["flops"] > data["budget"]
