"""Width repair without retraining (FLAP bias, ridge least squares) on tiny models of every family."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from prunelab.cli import app
from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for
from prunelab.prune.adaptive import adapt_prune
from prunelab.prune.repair import (REPAIRS, GramAccumulator, LayerPlan, check_repair, repair_width,
                                   solve_repair)
from prunelab.prune.width import prune_width
from tests.tiny import save_tiny, tiny_model

runner = CliRunner()
CAL = torch.randint(3, 120, (8, 16), generator=torch.Generator().manual_seed(0))
X = torch.randint(3, 120, (2, 12), generator=torch.Generator().manual_seed(1))


def _mlp_inputs(model, layer_idx):
    """The MLP input of ``layer_idx`` on the calibration batch (as the repaired model computes it)."""
    adapter = adapter_for(model)
    mlp = adapter.layers(model)[layer_idx].get_submodule(adapter.proj_names["down"].rsplit(".", 1)[0])
    seen = []
    h = mlp.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(input_ids=CAL)
    finally:
        h.remove()
    return torch.cat([s.reshape(-1, s.shape[-1]) for s in seen])


def _mlp(model, i):
    adapter = adapter_for(model)
    return adapter.layers(model)[i].get_submodule(adapter.proj_names["down"].rsplit(".", 1)[0])


def test_solve_is_identity_when_nothing_is_removed():
    torch.manual_seed(0)
    w = torch.randn(6, 10)
    acc = GramAccumulator(10, "test", torch.device("cpu"))
    acc.add(torch.randn(40, 10) * 3 + 1)
    keep = torch.arange(10)
    for name in ("ls", "ls+bias", "bias"):
        w_new, bias, rec = solve_repair(w, None, acc, keep, REPAIRS.get(name), 0.01)
        assert torch.equal(w_new.float(), w)
        if bias is not None:
            assert torch.allclose(bias, torch.zeros(6, dtype=torch.float64), atol=1e-12)
        assert rec.error_before == pytest.approx(0.0, abs=1e-12) and rec.error_after == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("method, target", [("ls", "layer"), ("bias", "layer"), ("ls", "model"),
                                            ("ls+bias", "model"), ("ls", "layer+attn"), ("ls+bias", "layer+attn")])
def test_repair_with_everything_kept_leaves_logits_unchanged(method, target):
    model = tiny_model("llama")
    ref = copy.deepcopy(model)
    layers = list(adapter_for(model).layers(model))
    plans = [LayerPlan(list(range(48)), list(range(4))) for _ in layers]
    rep = repair_width(model, CAL, plans, lambda i: layers[i], method, progress=False, target=target)
    assert len(rep.projections) == 8 and rep.target == target
    with torch.no_grad():
        assert torch.allclose(model(X).logits, ref(X).logits, atol=1e-5)
    if method == "bias":
        down = adapter_for(model).module(adapter_for(model).layers(model)[0], "down")
        assert down.bias is not None and float(down.bias.detach().abs().max()) < 1e-5


def test_reconstruction_error_not_above_unrepaired(family):
    """The repaired MLP's error against the dense MLP, on the calibration inputs it really sees, is ≤ plain pruning's."""
    dense = tiny_model(family)
    kw = dict(criterion="maw", ratio=0.4, heads_ratio=0.5, calibration=CAL, progress=False)
    methods = ["ls", "ls+bias", "bias"] if family == "llama" else ["ls"]
    gains = []
    for method in methods:
        plain, fixed = copy.deepcopy(dense), copy.deepcopy(dense)
        prune_width(plain, **kw)
        rep = prune_width(fixed, repair=method, **kw)
        assert all(p.error_after <= p.error_before + 1e-9 for p in rep.repair.projections)
        for i in range(4):
            x = _mlp_inputs(fixed, i)
            with torch.no_grad():
                target = _mlp(dense, i)(x)
                e_plain = float((_mlp(plain, i)(x) - target).pow(2).sum())
                e_fixed = float((_mlp(fixed, i)(x) - target).pow(2).sum())
            assert e_fixed <= e_plain * (1 + 1e-5), (method, i, e_fixed, e_plain)
            gains.append(e_fixed / e_plain)
    assert min(gains) < 0.95  # the refit really changes something


def test_ls_bias_beats_bias_and_ls_on_calibration():
    dense = tiny_model("llama")
    errs = {}
    for method in ("bias", "ls", "ls+bias"):
        rep = prune_width(copy.deepcopy(dense), criterion="maw", ratio=0.5, calibration=CAL, repair=method,
                          progress=False).repair
        errs[method] = rep.projections[0].error_after  # layer 0 sees the same input in all three
    assert errs["ls+bias"] <= errs["ls"] + 1e-9 and errs["ls+bias"] <= errs["bias"] + 1e-9


def test_bias_model_reloads_with_plain_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM

    import prunelab

    model = tiny_model("llama")
    rep = prune_width(model, criterion="maw", ratio=0.4, heads_ratio=0.5, calibration=CAL, repair="ls+bias",
                      progress=False)
    assert rep.widths_after == [29] * 4
    prunelab.save(model, None, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["mlp_bias"] is True and cfg["attention_bias"] is True
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    layer = loaded.model.layers[0].requires_grad_(False)
    assert float(layer.mlp.down_proj.bias.abs().max()) > 0 and float(layer.self_attn.o_proj.bias.abs().max()) > 0
    assert float(layer.mlp.gate_proj.bias.abs().max()) == 0 and float(layer.self_attn.q_proj.bias.abs().max()) == 0
    with torch.no_grad():
        assert torch.equal(loaded(X).logits, model(X).logits)


def test_adaptive_repair_reloads_per_layer(tmp_path):
    import prunelab

    model = tiny_model("llama")
    plain = copy.deepcopy(model)
    kw = dict(ratio=0.4, amplitude=0.2, steps=2, calibration=CAL, prune_heads=False, criterion="maw_hybrid",
              progress=False)
    adapt_prune(plain, **kw)
    rep = adapt_prune(model, repair="bias", **kw)
    assert rep.repair is not None and rep.widths_after == [adapter_for(plain).mlp_width(la)
                                                           for la in adapter_for(plain).layers(plain)]
    assert len(set(rep.widths_after)) > 1  # per-layer widths: exercises the per_layer_config reload
    from tests.tiny import tiny_tokenizer

    prunelab.save(model, tiny_tokenizer(), tmp_path / "a")
    loaded = prunelab.load(tmp_path / "a", dtype="float32", device="cpu").model
    with torch.no_grad():
        assert torch.equal(loaded(X).logits, model(X).logits)
        assert not torch.allclose(plain(X).logits, model(X).logits)


@pytest.mark.parametrize("family_, method", [("qwen2", "bias"), ("phi3", "ls+bias"), ("mistral", "bias")])
def test_bias_refused_for_families_without_a_switch(family_, method):
    with pytest.raises(PrunelabError, match="cannot save"):
        prune_width(tiny_model(family_), criterion="maw", ratio=0.4, calibration=CAL, repair=method, progress=False)


def test_refusals_are_validated_before_any_change():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PrunelabError, match="ridge must be"):
        prune_width(model, criterion="maw", ratio=0.4, calibration=CAL, repair="ls", ridge=-1.0, progress=False)
    with pytest.raises(PrunelabError, match="at least 29 calibration tokens"):
        prune_width(model, criterion="maw", ratio=0.4, calibration=CAL[:1, :8], repair="ls", progress=False)
    with pytest.raises(PrunelabError, match="unknown repair method"):
        prune_width(model, criterion="maw", ratio=0.4, calibration=CAL, repair="magic", progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert check_repair(model, "none", -1.0, None, True, True) is REPAIRS.get("none")  # nothing to validate


@pytest.fixture
def nan_tiny(tmp_path):
    import prunelab
    from tests.tiny import tiny_tokenizer

    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].post_attention_layernorm.weight[0] = float("nan")
    path = tmp_path / "nan"
    prunelab.save(model, tiny_tokenizer(), path)
    return path


@pytest.mark.parametrize("args, message", [
    (["--repair", "ls", "--ridge", "-1"], "--ridge must be ≥ 0"),
    (["--repair", "ls", "--calib-samples", "1", "--calib-seq-len", "8"], "needs at least 29 calibration tokens"),
    (["--repair", "fix"], "unknown repair method 'fix'"),
    (["--repair", "ls", "--repair-target", "global"], "unknown repair target 'global'"),
])
def test_cli_refusals_write_nothing(saved_tiny, tmp_path, text_file_, args, message):
    out, js = tmp_path / "o", tmp_path / "o.json"
    result = runner.invoke(app, ["prune", "width", str(saved_tiny), "--ratio", "0.4", "--calibration",
                                 str(text_file_), "-o", str(out), "--json", str(js), *args])
    assert isinstance(result.exception, PrunelabError), result.output
    assert message in str(result.exception)
    assert not out.exists() and not js.exists()


def test_cli_nan_activations_one_line_exit_2(nan_tiny, tmp_path, text_file_):
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "prunelab", "prune", "width", str(nan_tiny), "--ratio", "0.4",
                           "--repair", "ls", "--calibration", str(text_file_), "--calib-samples", "4",
                           "--calib-seq-len", "16", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not finite" in lines[0], proc.stderr
    assert not out.exists()


def test_cli_ls_repair_end_to_end(saved_tiny, tmp_path, text_file_):
    out, js = tmp_path / "o", tmp_path / "o.json"
    result = runner.invoke(app, ["prune", "width", str(saved_tiny), "--ratio", "0.4", "--repair", "ls", "--ridge",
                                 "0.05", "--calibration", str(text_file_), "--calib-samples", "4",
                                 "--calib-seq-len", "16", "-o", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert "repair ls" in result.stdout
    data = json.loads(js.read_text())
    assert data["repair"]["method"] == "ls" and data["repair"]["ridge"] == 0.05
    assert len(data["repair"]["projections"]) == 4
    assert data["repair"]["target"] == "layer"


def test_cli_model_target_end_to_end(saved_tiny, tmp_path, text_file_):
    out, js = tmp_path / "o", tmp_path / "o.json"
    result = runner.invoke(app, ["prune", "width", str(saved_tiny), "--ratio", "0.4", "--repair", "ls+bias",
                                 "--repair-target", "model", "--calibration", str(text_file_), "--calib-samples", "4",
                                 "--calib-seq-len", "16", "-o", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert "target model" in result.stdout
    data = json.loads(js.read_text())
    assert data["repair"]["target"] == "model" and len(data["repair"]["projections"]) == 4
    assert all(p["error_after"] <= p["error_before"] + 1e-9 for p in data["repair"]["projections"])


@pytest.fixture
def text_file_(tmp_path):
    f = tmp_path / "calib.txt"
    f.write_text("\n\n".join(f"the quick brown fox number {i} jumps over the lazy dog." for i in range(60)))
    return f


@pytest.fixture
def saved_tiny(tmp_path):
    return save_tiny(tmp_path)


def test_spec_repair_field_keeps_old_hashes():
    from pydantic import ValidationError

    from prunelab.experiments.spec import WidthPruning

    plain = WidthPruning(ratio=0.4).model_dump()
    assert "repair" not in plain and "ridge" not in plain  # specs written before repair existed hash the same
    fixed = WidthPruning(ratio=0.4, repair="ls", ridge=0.5)
    assert fixed.model_dump()["repair"] == "ls" and fixed.model_dump()["ridge"] == 0.5 and fixed.name.endswith("+ls")
    with pytest.raises(ValidationError):
        WidthPruning(ratio=0.4, repair="magic")
    assert "repair_target" not in plain and "repair_target" not in fixed.model_dump()  # the default target: unchanged
    to_model = WidthPruning(ratio=0.4, repair="ls", repair_target="model")
    assert to_model.model_dump()["repair_target"] == "model" and to_model.name.endswith("+ls@model")
    with pytest.raises(ValidationError):
        WidthPruning(ratio=0.4, repair="ls", repair_target="global")
    # the token weighting: absent without a repair; present with one, so a repair stored before the weighting
    # existed (fitted uniformly, no field) never hashes like today's normalized default
    assert "token_weights" not in plain and fixed.model_dump()["token_weights"] == "normalized"
    uniform = WidthPruning(ratio=0.4, repair="ls", token_weights="uniform")
    assert uniform.model_dump()["token_weights"] == "uniform" and uniform.name.endswith("+ls~uniform")
    with pytest.raises(ValidationError):
        WidthPruning(ratio=0.4, repair="ls", token_weights="sink")
    with pytest.raises(ValidationError):
        WidthPruning(ratio=0.4, repair="ls", ridge=-1)


# ----------------------------------------------------------------------------------------------------------
# audit additions (issue 19): FLAP formula, attention refit per family, chunked Gram, reloads, CLI exit codes
# ----------------------------------------------------------------------------------------------------------
def test_flap_bias_is_the_removed_channels_mean_contribution():
    torch.manual_seed(0)
    w, b0 = torch.randn(6, 10), torch.randn(6)
    z = torch.randn(50, 10) * 2 + 0.5
    acc = GramAccumulator(10, "test", torch.device("cpu"))
    acc.add(z)
    keep = torch.tensor([0, 2, 3, 7, 9])
    removed = torch.tensor([1, 4, 5, 6, 8])
    w_new, bias, rec = solve_repair(w, b0, acc, keep, REPAIRS.get("bias"), None)
    assert torch.equal(w_new.float(), w[:, keep])  # FLAP leaves the kept columns alone
    want = b0.double() + w[:, removed].double() @ z[:, removed].double().mean(0)  # b₀ + W_R μ_R
    assert torch.allclose(bias, want, atol=1e-10)
    # the moment-based error equals the error measured on the data
    got = (z.double() @ w.double().T + b0.double()) - (z[:, keep].double() @ w_new.T + bias)
    ref = (z.double() @ w.double().T).pow(2).sum(1).mean()
    assert rec.error_after == pytest.approx(float(got.pow(2).sum(1).mean() / ref), rel=1e-8)


def test_gram_chunks_equal_one_pass(monkeypatch):
    import prunelab.prune.repair as rp

    z = torch.randn(37, 10, generator=torch.Generator().manual_seed(3))
    whole = GramAccumulator(10, "a", torch.device("cpu"))
    whole.add(z)
    monkeypatch.setattr(rp, "ROW_CHUNK_ELEMENTS", 40)  # 4 rows per float64 chunk
    chunked = GramAccumulator(10, "b", torch.device("cpu"))
    chunked.add(z)
    assert chunked.n == whole.n == 37
    assert torch.allclose(chunked.gram, whole.gram, atol=1e-12) and torch.allclose(chunked.sum, whole.sum, atol=1e-12)


def _attn(model, i):
    adapter = adapter_for(model)
    return adapter.layers(model)[i].get_submodule(adapter.proj_names["o"].rsplit(".", 1)[0])


def test_attention_reconstruction_error_not_above_unrepaired(family):
    """o_proj refit: the repaired attention's error against the dense attention, on the inputs it sees, ≤ plain's."""
    dense = tiny_model(family)
    kw = dict(criterion="maw", ratio=0.4, heads_ratio=0.5, calibration=CAL, progress=False)
    plain, fixed = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_width(plain, **kw)
    rep = prune_width(fixed, repair="ls", **kw)
    assert [p.projection for p in rep.repair.projections[:2]] == ["o", "down"]  # attention first, then the MLP
    gains = []
    for i in range(4):
        calls = []
        h = _attn(fixed, i).register_forward_pre_hook(lambda mod, a, k: calls.append((a, k)), with_kwargs=True)
        try:
            with torch.no_grad():
                fixed(input_ids=CAL, use_cache=False)  # no KV cache: the captured call is replayed
        finally:
            h.remove()
        (args, kwargs), = calls
        with torch.no_grad():
            target = _out_of(_attn(dense, i)(*args, **kwargs))
            e_plain = float((_out_of(_attn(plain, i)(*args, **kwargs)) - target).pow(2).sum())
            e_fixed = float((_out_of(_attn(fixed, i)(*args, **kwargs)) - target).pow(2).sum())
        assert e_fixed <= e_plain * (1 + 1e-5), (i, e_fixed, e_plain)
        gains.append(e_fixed / e_plain)
    assert min(gains) < 0.95


def _out_of(result):
    return result[0] if isinstance(result, tuple) else result


@pytest.mark.parametrize("family_, prune", [("llama", "mlp"), ("llama", "heads"), ("gemma2", "heads"),
                                            ("qwen3", "heads")])
def test_flap_bias_reloads_with_plain_from_pretrained(family_, prune, tmp_path):
    """``bias`` alone, on every family whose config has the needed switch: identical logits after a plain reload."""
    from transformers import AutoModelForCausalLM

    import prunelab

    model = tiny_model(family_)
    kw = dict(ratio=0.4) if prune == "mlp" else dict(heads_ratio=0.5)
    prune_width(model, criterion="maw", calibration=CAL, repair="bias", progress=False, **kw)
    prunelab.save(model, None, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg.get("mlp_bias" if prune == "mlp" else "attention_bias") is True
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    proj = adapter_for(loaded).module(adapter_for(loaded).layers(loaded)[0], "down" if prune == "mlp" else "o")
    assert float(proj.bias.detach().abs().max()) > 0
    with torch.no_grad():
        assert torch.equal(loaded(X).logits, model(X).logits)


def test_bias_refused_for_the_mlp_of_attention_bias_only_families():
    with pytest.raises(PrunelabError, match="no mlp_bias switch"):
        prune_width(tiny_model("gemma2"), criterion="maw", ratio=0.4, calibration=CAL, repair="bias", progress=False)


def test_ls_bias_needs_one_token_more():
    with pytest.raises(PrunelabError, match="at least 30 calibration tokens"):
        prune_width(tiny_model("llama"), criterion="maw", ratio=0.4, calibration=CAL[:1, :29], repair="ls+bias",
                    progress=False)


def _main(argv, capsys):
    from prunelab.cli import main

    capsys.readouterr()  # drop what the fixtures printed (e.g. the shard-writing bar of save_tiny)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.mark.parametrize("fam, args, message", [
    ("llama", ["--repair", "ls", "--ridge", "-0.5"], "--ridge must be ≥ 0"),
    ("llama", ["--repair", "ls", "--calib-samples", "1", "--calib-seq-len", "8"],
     "needs at least 29 calibration tokens"),
    ("qwen2", ["--repair", "bias", "--calib-samples", "4", "--calib-seq-len", "16"], "no mlp_bias switch"),
])
def test_cli_refusal_one_line_exit_2_nothing_written(fam, args, message, tmp_path, text_file_, capsys):
    model = save_tiny(tmp_path, fam)
    out, js = tmp_path / "o", tmp_path / "o.json"
    code, lines = _main(["prune", "width", str(model), "--ratio", "0.4", "--calibration", str(text_file_),
                         "-o", str(out), "--json", str(js), *args], capsys)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not out.exists() and not js.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt", "tiny"]  # no temporary sibling left either


def test_capture_runs_no_block_and_records_what_the_blocks_receive(family):
    """The block stand-ins of capture_layer_inputs see the embeddings and the kwargs a real forward passes each block
    (pre-hooks on the real blocks, as the capture did before), and no real block runs."""
    from prunelab.prune.repair import capture_layer_inputs

    model = tiny_model(family).eval()
    layers = adapter_for(model).layers(model)
    seen: list[tuple[int, torch.Tensor, dict]] = []
    handles = [layer.register_forward_pre_hook(
        lambda mod, args, kwargs, i=i: seen.append((i, args[0] if args else kwargs["hidden_states"], kwargs)),
        with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        states, kwargs = capture_layer_inputs(model, CAL, batch_size=4)
        assert seen == []  # the capture ran no real block
        with torch.no_grad():
            for start in range(0, CAL.shape[0], 4):
                adapter_for(model).decoder(model)(input_ids=CAL[start : start + 4], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    assert list(layers) == list(adapter_for(model).layers(model)) and len(states) == 2
    for b in range(2):
        ref = [s for s in seen[b * len(layers):(b + 1) * len(layers)]]
        assert torch.equal(states[b], ref[0][1])
        for i, (_, _, ref_kw) in enumerate(ref):
            got = kwargs[b][i]
            assert set(got) == {k for k in ref_kw if k != "hidden_states"}
            for k, v in got.items():
                r = ref_kw[k]
                if isinstance(v, torch.Tensor):
                    assert torch.equal(v, r), (family, i, k)
                elif isinstance(v, tuple):
                    assert all(torch.equal(a, c) for a, c in zip(v, r)), (family, i, k)
                else:
                    assert v == r, (family, i, k)
