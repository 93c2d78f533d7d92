"""Adapt-Accel: keep ratios, data shares, one WSD schedule across phases, end-to-end on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.recover.accel import (
    accel,
    data_shares,
    mlp_params,
    phase_keep_ratio,
    split_data,
    trainer_steps,
    wsd_lr,
    wsd_scheduler,
)
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.mark.parametrize("n,phases", [(500, 1), (500, 4), (500, 20), (100, 3), (64, 5), (6, 3)])
def test_shares_sum_and_grow(n, phases):
    shares = data_shares(n, phases)
    assert sum(shares) == n and len(shares) == phases
    exact = [n * 2 * (i + 1) / (phases * (phases + 1)) for i in range(phases)]
    assert all(abs(s - e) < 1 for s, e in zip(shares, exact))
    assert shares == sorted(shares)


def test_shares_too_few():
    with pytest.raises(PrunelabError, match="too few"):
        data_shares(2, 3)


def test_split_disjoint_and_seeded():
    recs = list(range(100))
    parts = split_data(recs, 4, seed=1)
    flat = [r for p in parts for r in p]
    assert sorted(flat) == recs and [len(p) for p in parts] == data_shares(100, 4)
    assert split_data(recs, 4, seed=1) == parts != split_data(recs, 4, seed=2)


def test_keep_ratio():
    assert phase_keep_ratio(300, 125, 20) == pytest.approx((125 / 300) ** (1 / 20))
    assert phase_keep_ratio(300, 125, 20) == pytest.approx(0.957, abs=1e-3)  # the paper's ≈95.7 %
    assert phase_keep_ratio(1.0, 0.6, 3) ** 3 == pytest.approx(0.6)
    with pytest.raises(PrunelabError):
        phase_keep_ratio(1.0, 0.6, 0)


def test_wsd_shape():
    total = 200
    lrs = [wsd_lr(s, total) for s in range(total)]
    w, d = math.ceil(0.05 * total), math.ceil(0.10 * total)
    assert lrs[0] == pytest.approx(2e-5 / w) and lrs[w - 1] == pytest.approx(2e-5)
    assert all(a < b for a, b in zip(lrs[:w], lrs[1:w]))          # linear warm-up
    assert all(x == 2e-5 for x in lrs[w : total - d])               # stable
    assert all(a > b for a, b in zip(lrs[total - d :], lrs[total - d + 1 :]))  # decay
    assert lrs[-1] == pytest.approx(2e-6)
    assert lrs[total - d] == pytest.approx(2e-5 - 1.8e-5 / d)


def test_wsd_scheduler_continues_across_phases():
    total, got = 30, []
    for offset, steps in ((0, 5), (5, 10), (15, 15)):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=2e-5)
        sched = wsd_scheduler(opt, offset, total)
        for _ in range(steps):
            got.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    assert got == pytest.approx([wsd_lr(s, total) for s in range(total)])


def halve_by_magnitude(model, tokenizer, target_widths):
    """Local test pruner: keep the neurons with the largest down-projection column norms."""
    from prunelab.models import adapter_for
    from prunelab.models.surgery import prune_mlp_neurons, sync_config

    adapter = adapter_for(model)
    for i, layer in enumerate(adapter.layers(model)):
        _, _, down = adapter.mlp_weights(layer)
        keep = torch.topk(down.norm(dim=0), target_widths[i]).indices
        prune_mlp_neurons(model, i, keep)
    sync_config(model)


RECORDS = [(f"### Instruction:\nrepeat {w}\n\n### Response:\n", f"{w} {w}") for w in "abcdefghijklmnopqrstu"]


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_accel_tiny_end_to_end(mode, tmp_path):
    import prunelab

    model, tok = tiny_model("llama"), tiny_tokenizer()
    mlp0 = mlp_params(model)
    res = accel(model, tok, RECORDS, target_ratio=0.5, phases=3, mode=mode, prune_step=halve_by_magnitude,
                seq_len=48, batch_size=2, grad_accum=2, output_dir=tmp_path / "out", progress=False,
                max_lr=1e-3, min_lr=1e-4)
    assert res.shares == [3, 7, 11] and sum(res.shares) == len(RECORDS)
    keep = 0.5 ** (1 / 3)
    assert res.keep_ratio == pytest.approx(keep)
    assert [p.widths_after[0] for p in res.phase_results] == [round(48 * keep ** (i + 1)) for i in range(3)] == [38, 30, 24]
    assert res.mlp_params_after == pytest.approx(0.5 * mlp0, rel=0.01)
    steps = [trainer_steps(s, 2, 2) for s in res.shares]
    assert [p.steps for p in res.phase_results] == steps and res.total_steps == sum(steps)
    logged = [h["lr"] for h in res.loss_history]
    assert logged == pytest.approx([wsd_lr(s, res.total_steps, 1e-3, 1e-4) for s in range(res.total_steps)])
    assert logged[-1] == pytest.approx(1e-4)
    assert res.tokens == 21 * 48 and res.honest_flops > 0
    reloaded = prunelab.load(tmp_path / "out").model
    x = torch.tensor([list(range(3, 20))])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, res.model(input_ids=x).logits, rtol=0, atol=1e-5)
    assert not any("lora" in n for n, _ in res.model.named_parameters())


def test_accel_with_width_pruner():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    res = accel(model, tok, RECORDS, target_ratio=0.4, phases=2, criterion="taylor", calibration_samples=4,
                calibration_seq_len=16, seq_len=48, batch_size=4, grad_accum=1, progress=False)
    k = 0.6 ** 0.5
    assert [p.widths_after for p in res.phase_results] == [[round(48 * k)] * 4, [round(48 * 0.6)] * 4]


@pytest.mark.parametrize("kw,msg", [
    (dict(target_ratio=0), "target ratio"),
    (dict(target_ratio=1.0), "target ratio"),
    (dict(phases=0), "at least one phase"),
    (dict(mode="half"), "mode must be"),
    (dict(mechanism="lsd"), "unknown recovery mechanism"),
    (dict(pruner="magic"), "unknown pruner"),
    (dict(criterion="nope"), "unknown width criterion"),
    (dict(phases=10), "too few"),
])
def test_accel_bad_input(kw, msg):
    model = tiny_model("llama")
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(PrunelabError, match=msg):
        accel(model, tiny_tokenizer(), RECORDS, **{"phases": 2, **kw}, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_cli_accel(tmp_path):
    import json

    from typer.testing import CliRunner

    import prunelab
    from prunelab.cli import app

    src = tmp_path / "tiny"
    prunelab.save(tiny_model("llama"), tiny_tokenizer(), src)
    js = tmp_path / "a.json"
    result = CliRunner().invoke(app, ["accel", str(src), "--target-ratio", "0.5", "--phases", "2", "--samples", "6",
                                      "--seq-len", "48", "--criterion", "l2", "--mode", "full", "--batch-size", "2",
                                      "--grad-accum", "1", "-o", str(tmp_path / "out"), "--json", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["shares"] == [2, 4] and data["total_steps"] == 1 + 2
    assert [p["widths_after"][0] for p in data["phase_results"]] == [round(48 * 0.5 ** 0.5), 24]
    assert prunelab.load(tmp_path / "out").model.model.layers[0].mlp.down_proj.in_features == 24
    assert "phase 1" in result.output


@pytest.mark.parametrize("args,msg", [
    (["--target-ratio", "1.5"], "--target-ratio must be in"),
    (["--phases", "0"], "at least one phase"),
    (["--mode", "half"], "--mode must be"),
    (["--pruner", "magic"], "unknown pruner"),
    (["-c", "nope"], "unknown width criterion"),
    (["--samples", "2", "--phases", "3"], "too few"),
])
def test_cli_accel_bad_input(tmp_path, args, msg):
    from typer.testing import CliRunner

    from prunelab.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["accel", "/no/such/model", "-o", str(out), *args])
    assert isinstance(result.exception, PrunelabError) and msg in str(result.exception), result.output
    assert not out.exists()


def test_accel_with_adaptive_pruner():
    """Adapt-Pruner phases: sizes are decoder-block params; the end size is (1 − ratio) of the start."""
    from prunelab.recover.accel import block_params

    model, tok = tiny_model("llama"), tiny_tokenizer()
    start = block_params(model)
    res = accel(model, tok, RECORDS, target_ratio=0.3, phases=2, pruner="adaptive", calibration_samples=4,
                calibration_seq_len=16, seq_len=48, batch_size=4, grad_accum=2, progress=False)
    assert res.size_measure == "block_params" and res.size_before == start
    assert res.achieved_size_ratio == pytest.approx(0.7, abs=0.05)
    assert res.phase_results[0].size_after == pytest.approx(start * 0.7 ** 0.5, rel=0.05)
