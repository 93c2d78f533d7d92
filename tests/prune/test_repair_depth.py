"""Depth compensation (ReplaceMe linear map merged into down_proj; Prune&Comp-style scale) on tiny models."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from prunelab.cli import app
from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for
from prunelab.models.surgery import remove_layers
from prunelab.prune.depth_repair import compensate_and_remove, removed_runs
from tests.tiny import save_tiny, tiny_model, tiny_tokenizer

runner = CliRunner()
CAL = torch.randint(3, 120, (8, 16), generator=torch.Generator().manual_seed(0))
X = torch.randint(3, 120, (2, 12), generator=torch.Generator().manual_seed(1))


def test_removed_runs():
    assert removed_runs([5, 1, 2, 7, 6]) == [(1, 2), (5, 7)]
    assert removed_runs([]) == []


def _explicit(dense, removed, transforms):
    """Plain removal, then the fitted maps applied explicitly to the anchors' MLP outputs (hooks)."""
    plain = copy.deepcopy(dense)
    remove_layers(plain, removed)
    kept = [i for i in range(len(adapter_for(dense).layers(dense))) if i not in set(removed)]
    for anchor, t in transforms.items():
        plain.model.layers[kept.index(anchor)].mlp.register_forward_hook(lambda mod, a, out, t=t: out @ t)
    return plain


@pytest.mark.parametrize("fam, extra", [("llama", {}), ("llama", {"mlp_bias": True}), ("qwen2", {}), ("qwen3", {}),
                                        ("mistral", {}), ("phi3", {})])
def test_linear_merge_equals_explicit_map_before_and_after_reload(fam, extra, tmp_path):
    import prunelab
    from transformers import AutoModelForCausalLM

    dense = tiny_model(fam, num_hidden_layers=6, **extra)
    if extra.get("mlp_bias"):  # a nonzero down_proj bias: the merge must map it too (b ← Tᵀ b)
        with torch.no_grad():
            for layer in dense.model.layers:
                layer.mlp.down_proj.bias.normal_(0, 0.5)
    model = copy.deepcopy(dense)
    removed = [2, 3, 5]
    rep = compensate_and_remove(model, removed, CAL, "linear", progress=False)
    assert sorted(rep.transforms) == [1, 4] and len(rep.runs) == 2
    assert all(r.error_after <= r.error_before + 1e-9 for r in rep.runs)
    assert not torch.allclose(rep.transforms[1], torch.eye(32), atol=1e-3)  # a real map, not the identity
    explicit = _explicit(dense, removed, rep.transforms)
    with torch.no_grad():
        want = explicit(X).logits
        assert torch.allclose(model(X).logits, want, atol=1e-4)
        assert not torch.allclose(_explicit(dense, removed, {})(X).logits, want, atol=1e-3)
    prunelab.save(model, tiny_tokenizer(), tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.num_hidden_layers == 3
    with torch.no_grad():
        assert torch.allclose(loaded(X).logits, want, atol=1e-4)


@pytest.mark.parametrize("fam", ["llama", "gemma2"])
def test_scale_fold_equals_scaling_the_stream(fam):
    dense = tiny_model(fam, num_hidden_layers=6)
    model = copy.deepcopy(dense)
    rep = compensate_and_remove(model, [2, 3], CAL, "scale", progress=False)
    (run,) = rep.runs
    assert run.alpha is not None and abs(run.alpha - 1) > 1e-3
    plain = copy.deepcopy(dense)
    remove_layers(plain, [2, 3])
    # the stream entering the first block after the run, multiplied by α, then the unmodified rest
    plain.model.layers[2].register_forward_pre_hook(
        lambda mod, args, kwargs: ((args[0] * run.alpha,) + args[1:], kwargs) if args else
        (args, {**kwargs, "hidden_states": kwargs["hidden_states"] * run.alpha}), with_kwargs=True)
    with torch.no_grad():
        got, want = model(X).logits, plain(X).logits
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3), (got - want).abs().max()


def test_scale_restores_the_magnitude():
    dense = tiny_model("llama", num_hidden_layers=6)
    rep = compensate_and_remove(copy.deepcopy(dense), [1, 2, 3], CAL, "scale", progress=False)
    assert rep.runs[0].alpha > 1.0  # removing blocks shrinks the residual stream on this model


def test_refusals():
    with pytest.raises(PrunelabError, match="starts at block 0"):
        compensate_and_remove(tiny_model("llama", num_hidden_layers=6), [0, 1], CAL, "linear", progress=False)
    with pytest.raises(PrunelabError, match="post_feedforward_layernorm"):
        compensate_and_remove(tiny_model("gemma2", num_hidden_layers=6), [2], CAL, "linear", progress=False)
    with pytest.raises(PrunelabError, match="ridge must be"):
        compensate_and_remove(tiny_model("llama", num_hidden_layers=6), [2], CAL, "linear", ridge=-0.1,
                              progress=False)
    with pytest.raises(PrunelabError, match="at least 32 calibration tokens"):
        compensate_and_remove(tiny_model("llama", num_hidden_layers=6), [2], CAL[:1, :8], "linear", progress=False)
    m = tiny_model("llama", num_hidden_layers=6)
    with torch.no_grad():
        m.model.layers[1].post_attention_layernorm.weight[0] = float("nan")
    with pytest.raises(PrunelabError, match="not finite"):
        compensate_and_remove(m, [3], CAL, "linear", progress=False)


@pytest.fixture
def saved6(tmp_path):
    return save_tiny(tmp_path, num_hidden_layers=6)


def test_cli_compensate_linear(saved6, tmp_path):
    out, js = tmp_path / "o", tmp_path / "o.json"
    result = runner.invoke(app, ["prune", "depth", str(saved6), "-k", "2", "--search", "one-shot", "--compensate",
                                 "scale", "--calib-samples", "4", "--calib-seq-len", "16", "-o", str(out),
                                 "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert "compensation scale" in result.stdout
    data = json.loads(js.read_text())
    assert data["stats"]["compensation"]["method"] == "scale"


@pytest.mark.parametrize("args, message", [
    (["--compensate", "linear", "--ridge", "-1"], "--ridge must be ≥ 0"),
    (["--compensate", "quadratic"], "unknown depth compensation"),
])
def test_cli_compensate_refusals_write_nothing(saved6, tmp_path, args, message):
    out = tmp_path / "never"
    with pytest.raises(PrunelabError, match=message):
        runner.invoke(app, ["prune", "depth", str(saved6), "-k", "1", *args, "-o", str(out)], catch_exceptions=False)
    assert not out.exists()


@pytest.mark.parametrize("method", ["linear", "scale"])
def test_compensated_search_scores_the_compensated_model_and_restores_weights(method):
    from prunelab.prune.depth import search_blocks
    from prunelab.prune.block_evaluator import BlockEvaluator
    from prunelab.prune.depth_objectives import PerplexityObjective

    model = tiny_model("llama", num_hidden_layers=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = search_blocks(model, 2, "perplexity", "greedy", calibration=CAL, compensate=method, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res.stats["compensate"] == method and (method == "scale" or 0 not in res.removed)
    work = copy.deepcopy(model)
    compensate_and_remove(work, res.removed, CAL, method, progress=False)
    direct = BlockEvaluator(work, PerplexityObjective(CAL), cached=False)([])
    assert res.objective_value == pytest.approx(direct, rel=1e-5)
    # k = 1 greedy is exhaustive: the compensated choice is the best *after compensation*, the plain one need not be
    comp1 = search_blocks(model, 1, "perplexity", "greedy", calibration=CAL, compensate=method, progress=False)
    plain1 = search_blocks(model, 1, "perplexity", "greedy", calibration=CAL, progress=False)
    if method == "linear" and 0 in plain1.removed:
        return  # linear cannot compensate block 0 (the compensated search scores it +inf)
    work = copy.deepcopy(model)
    compensate_and_remove(work, plain1.removed, CAL, method, progress=False)
    assert comp1.objective_value <= BlockEvaluator(work, PerplexityObjective(CAL), cached=False)([]) + 1e-6


def test_compensated_search_refusals():
    from prunelab.prune.depth import search_blocks

    model = tiny_model("llama", num_hidden_layers=6)
    with pytest.raises(PrunelabError, match="supports one-shot"):
        search_blocks(model, 2, "perplexity", "bo", calibration=CAL, compensate="scale", progress=False)


def test_linear_merge_equals_a_hand_written_forward():
    """The literal statement: dense prefix, the anchor block with ``h_mid + MLP(norm(h_mid)) · T``, the rest."""
    dense = tiny_model("llama", num_hidden_layers=6)
    model = copy.deepcopy(dense)
    rep = compensate_and_remove(model, [3, 4], CAL, "linear", progress=False)
    t = rep.transforms[2]
    m = dense.model
    with torch.no_grad():
        h = m.embed_tokens(X)
        pos = torch.arange(X.shape[1]).unsqueeze(0)
        pe = m.rotary_emb(h, pos)
        mask = torch.full((X.shape[1], X.shape[1]), float("-inf")).triu(1)[None, None]
        for i in (0, 1, 2, 5):
            layer = m.layers[i]
            mid = h + layer.self_attn(layer.input_layernorm(h), position_embeddings=pe, attention_mask=mask)[0]
            mlp = layer.mlp(layer.post_attention_layernorm(mid))
            h = mid + (mlp @ t if i == 2 else mlp)
        want = dense.lm_head(m.norm(h))
        assert torch.allclose(model(X).logits, want, atol=1e-4)


@pytest.mark.parametrize("fam", ["llama", "gemma2"])
def test_scale_reloads_with_plain_from_pretrained(fam, tmp_path):
    import prunelab
    from transformers import AutoModelForCausalLM

    model = tiny_model(fam, num_hidden_layers=6)
    compensate_and_remove(model, [2, 3], CAL, "scale", progress=False)
    prunelab.save(model, tiny_tokenizer(), tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.num_hidden_layers == 4
    assert not any("scale" in k for k in loaded.state_dict())  # folded: no new parameter
    with torch.no_grad():
        assert torch.equal(loaded(X).logits, model(X).logits)


def _main(argv, capsys):
    from prunelab.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_cli_linear_refusals_one_line_exit_2_nothing_written(saved6, tmp_path, capsys, monkeypatch):
    import prunelab.prune.depth as depth

    real = depth.search_blocks
    chosen: list[list[int]] = []

    def search_picking_block_0(*args, **kwargs):  # a random tiny model has no reliably removable block 0
        res = real(*args, **kwargs)
        res.removed = [0]
        chosen.append(res.removed)
        return res

    gemma = save_tiny(tmp_path / "g", "gemma2", num_hidden_layers=6)
    common = ["-k", "1", "--search", "one-shot", "--compensate", "linear", "--calib-samples", "4",
              "--calib-seq-len", "16"]
    for model, message in ((gemma, "post_feedforward_layernorm"), (saved6, "starts at block 0")):
        if model == saved6:
            monkeypatch.setattr(depth, "search_blocks", search_picking_block_0)
        out, js = tmp_path / "o", tmp_path / "o.json"
        code, lines = _main(["prune", "depth", str(model), *common, "-o", str(out), "--json", str(js)], capsys)
        assert code == 2 and len(lines) == 1 and message in lines[0], lines
        assert not out.exists() and not js.exists()
    assert chosen == [[0]]  # Gemma2 was refused before its search ran
    code, lines = _main(["prune", "depth", str(gemma), "-k", "1", "--compensate", "scale", "--ridge", "-1", "-o",
                         str(tmp_path / "o")], capsys)
    assert code == 2 and lines == ["error: --ridge must be ≥ 0, got -1.0"]


@pytest.mark.parametrize("fam, extra", [("llama", {}), ("llama", {"mlp_bias": True}), ("qwen2", {}), ("phi3", {})])
def test_refit_contains_linear_and_reloads(fam, extra, tmp_path):
    """refit re-fits every kept down_proj from the first removed run on toward the dense stream: at each anchor its
    stream error is ≤ linear's (without a bias, linear's Tᵀ·W is one feasible refit), every fit is ≤ its unrefitted
    error, blocks
    before the first run are untouched, and the saved model reloads with plain from_pretrained."""
    import prunelab
    from transformers import AutoModelForCausalLM

    dense = tiny_model(fam, num_hidden_layers=6, **extra)
    if extra.get("mlp_bias"):  # a nonzero bias must stay where it is (it is not re-fitted)
        with torch.no_grad():
            for layer in dense.model.layers:
                layer.mlp.down_proj.bias.normal_(0, 0.5)
    removed = [2, 3, 5]
    lin, fit = copy.deepcopy(dense), copy.deepcopy(dense)
    rep_lin = compensate_and_remove(lin, removed, CAL, "linear", ridge=0.0, progress=False)
    rep = compensate_and_remove(fit, removed, CAL, "refit", ridge=0.0, progress=False)
    assert [(r.first, r.last, r.anchor) for r in rep.runs] == [(2, 3, 1), (5, 5, 4)]
    assert [r.layer for r in rep.refits] == [1, 4]  # kept blocks 0, 1, 4 → only 1 (anchor) and 4 (anchor) re-fit
    assert all(r.error_after <= r.error_before + 1e-9 for r in rep.refits)
    if not extra.get("mlp_bias"):  # linear also maps the bias (b ← Tᵀb), which refit keeps: no containment then
        assert rep.runs[0].error_after <= rep_lin.runs[0].error_after * (1 + 1e-4) + 1e-9
    assert rep.runs[0].error_after < rep.runs[0].error_before * 0.99  # the fit changes something
    down = adapter_for(dense).module
    assert torch.equal(down(fit.model.layers[0], "down").weight, down(dense.model.layers[0], "down").weight)
    if extra.get("mlp_bias"):
        assert torch.equal(fit.model.layers[1].mlp.down_proj.bias, dense.model.layers[1].mlp.down_proj.bias)
    prunelab.save(fit, tiny_tokenizer(), tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(X).logits, fit(X).logits, atol=1e-5)


def test_refit_equals_least_squares_on_the_compensated_models_own_activations():
    """Each re-fitted down_proj is the least-squares solution on the activations the compensated model itself
    computes (hooks on a real forward with the removed blocks skipped), against the dense stream at the same point:
    for the anchor (block 1, target after removed block 2) and for the next kept block (3, whose input is already the
    compensated stream) — so the stream the fit tracks internally is the model's real one."""
    from prunelab.prune.block_evaluator import blocks_removed
    from prunelab.prune.depth_repair import fold_compensation

    dense = tiny_model("llama", num_hidden_layers=6)
    model = copy.deepcopy(dense)
    fold_compensation(model, [2], CAL, "refit", ridge=0.0, token_weights="uniform", progress=False)
    with torch.no_grad():
        d_states = dense(CAL, output_hidden_states=True).hidden_states  # d_states[j + 1]: after dense block j
        for block, target in ((1, d_states[3]), (3, d_states[4])):
            seen = {}
            layer = model.model.layers[block]
            h1 = layer.mlp.down_proj.register_forward_hook(lambda m, a, o: seen.update(z=a[0], y=o))
            h2 = layer.register_forward_hook(lambda m, a, o: seen.update(out=o[0] if isinstance(o, tuple) else o))
            with blocks_removed(model, {2}):
                model(CAL, use_cache=False)
            h1.remove()
            h2.remove()
            z = seen["z"].reshape(-1, 48).double()
            want = (target - (seen["out"] - seen["y"])).reshape(-1, 32).double()
            w_ls = torch.linalg.lstsq(z, want).solution.T
            assert torch.allclose(layer.mlp.down_proj.weight.double(), w_ls, atol=2e-3), block


@pytest.mark.parametrize("method", ["refit", "refit+attn"])
def test_refit_refusals(method):
    with pytest.raises(PrunelabError, match="post_feedforward_layernorm"):
        compensate_and_remove(tiny_model("gemma2", num_hidden_layers=6), [2], CAL, method, progress=False)
    with pytest.raises(PrunelabError, match="at least 48 calibration tokens"):
        compensate_and_remove(tiny_model("llama", num_hidden_layers=6), [2], CAL[:1, :8], method, ridge=0,
                              progress=False)
    model = tiny_model("llama", num_hidden_layers=6)
    rep = compensate_and_remove(model, [0, 1], CAL, method, progress=False)  # no anchor needed: later blocks fit
    assert rep.runs == [] and sorted({r.layer for r in rep.refits}) == [2, 3, 4, 5]
    assert {r.projection for r in rep.refits} == ({"down"} if method == "refit" else {"down", "o"})


def test_scale_of_a_later_run_is_measured_against_the_true_dense_stream():
    """With two runs, the second α compares the compensated stream with the *dense* model's stream at that point:
    Σ w‖D‖² / Σ w‖α₁ P‖² with D from the untouched model and P from the folded model (blocks skipped). The dense
    pass must not go through blocks whose contributions were already divided by α₁."""
    from prunelab.prune.block_evaluator import blocks_removed
    from prunelab.prune.depth_repair import fold_compensation
    from prunelab.prune.repair import stream_weights

    dense = tiny_model("llama", num_hidden_layers=6)
    model = copy.deepcopy(dense)
    rep = fold_compensation(model, [1, 3], CAL, "scale", progress=False)
    a1, a2 = (r.alpha for r in rep.runs)
    assert abs(a1 - 1) > 1e-3 and abs(a2 - 1) > 1e-3
    with torch.no_grad():
        d = dense(CAL, output_hidden_states=True, use_cache=False).hidden_states[4].double()  # after dense block 3
        with blocks_removed(model, {1, 3}):
            p = model(CAL, output_hidden_states=True, use_cache=False).hidden_states[2].double()  # after kept block 2
    w = stream_weights(d, "normalized")
    want = float((w * d.pow(2).sum(-1)).sum() / (w * (a1 * p).pow(2).sum(-1)).sum()) ** 0.5
    assert a2 == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("fam, extra", [("llama", {}), ("llama", {"attention_bias": True}), ("qwen2", {}),
                                        ("mistral", {}), ("phi3", {})])
def test_refit_attn_refits_o_proj_after_the_first_run_and_reloads(fam, extra, tmp_path):
    """refit+attn: o_proj re-fitted in every kept block whose input is the compensated stream (after the first
    run), each fit ≤ its unrefitted error, down_proj re-fitted as in refit; blocks before the first run untouched;
    the calibration stream error at each run's end ≤ refit's; reloads with plain from_pretrained."""
    import prunelab
    from transformers import AutoModelForCausalLM

    dense = tiny_model(fam, num_hidden_layers=6, **extra)
    removed = [2, 3, 5]
    plain, both = copy.deepcopy(dense), copy.deepcopy(dense)
    rep_plain = compensate_and_remove(plain, removed, CAL, "refit", ridge=0.0, progress=False)
    rep = compensate_and_remove(both, removed, CAL, "refit+attn", ridge=0.0, progress=False)
    assert [(r.layer, r.projection) for r in rep.refits] == [(1, "down"), (4, "o"), (4, "down")]
    assert all(r.error_after <= r.error_before + 1e-9 for r in rep.refits)
    assert rep.refits[1].error_after < rep.refits[1].error_before * 0.99  # the o_proj fit changes something
    assert rep.runs[0].error_after == pytest.approx(rep_plain.runs[0].error_after, rel=1e-6)  # same anchor fit
    assert rep.runs[1].error_after <= rep_plain.runs[1].error_after * (1 + 1e-4)
    o = adapter_for(dense).module
    for b in (0, 1):
        assert torch.equal(o(both.model.layers[b], "o").weight, o(dense.model.layers[b], "o").weight)
    prunelab.save(both, tiny_tokenizer(), tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(X).logits, both(X).logits, atol=1e-5)


def test_refit_attn_runs_no_more_mlp_passes_than_refit():
    """The o_proj fit's inputs come from a forward stopped before o_proj: the MLP is never run for nothing."""
    calls = {}
    for method in ("refit", "refit+attn"):
        model = tiny_model("llama", num_hidden_layers=6)
        count = [0]
        hooks = [layer.mlp.register_forward_hook(lambda m, a, o: count.__setitem__(0, count[0] + 1))
                 for layer in model.model.layers]
        rep = compensate_and_remove(model, [2], CAL, method, progress=False)
        for h in hooks:
            h.remove()
        calls[method] = count[0]
        assert rep.refits
    assert calls["refit+attn"] == calls["refit"]


def test_refit_attn_o_proj_is_least_squares_on_the_compensated_models_own_activations():
    """The re-fitted o_proj of block 3 (after removed block 2) is the least-squares map from its input on the
    compensated model's own forward to the dense model's stream after block 3's attention, minus the block input."""
    from prunelab.prune.block_evaluator import blocks_removed
    from prunelab.prune.depth_repair import fold_compensation

    dense = tiny_model("llama", num_hidden_layers=6)
    model = copy.deepcopy(dense)
    fold_compensation(model, [2], CAL, "refit+attn", ridge=0.0, token_weights="uniform", progress=False)
    with torch.no_grad():
        want_mid = {}
        h = dense.model.layers[3].self_attn.o_proj.register_forward_hook(lambda m, a, o: want_mid.update(o=o))
        h0 = dense.model.layers[3].register_forward_pre_hook(
            lambda m, a, kw: want_mid.update(x=kw.get("hidden_states", a[0] if a else None)), with_kwargs=True)
        dense(CAL, use_cache=False)
        h.remove()
        h0.remove()
        target = want_mid["x"] + want_mid["o"]
        seen = {}
        layer = model.model.layers[3]
        h1 = layer.self_attn.o_proj.register_forward_hook(lambda m, a, o: seen.update(a=a[0]))
        h2 = layer.register_forward_pre_hook(
            lambda m, a, kw: seen.update(x=kw.get("hidden_states", a[0] if a else None)), with_kwargs=True)
        with blocks_removed(model, {2}):
            model(CAL, use_cache=False)
        h1.remove()
        h2.remove()
    a = seen["a"].reshape(-1, seen["a"].shape[-1]).double()
    want = (target - seen["x"]).reshape(-1, 32).double()
    w_ls = torch.linalg.lstsq(a, want).solution.T
    assert torch.allclose(layer.self_attn.o_proj.weight.double(), w_ls, atol=2e-3)

