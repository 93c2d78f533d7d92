"""Width criteria: hand-computed values, shapes, determinism, Taylor = Σ|g·w|, OptiPFair parity."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from prunelab.models import adapter_for
from prunelab.prune.calibration_stats import collect_statistics
from prunelab.prune.criteria import CRITERIA, mlp_tensors
from prunelab.prune.width import compute_scores
from tests.tiny import tiny_model

CAL = torch.randint(3, 120, (6, 16), generator=torch.Generator().manual_seed(1))


def _set_neuron0(model):
    """Layer 0, neuron 0: gate row = [1, -3, 2, 0, …], up row = [0, 1, -1, 0, …] (H = 32)."""
    adapter = adapter_for(model)
    gate, up, _ = adapter.mlp_weights(adapter.layers(model)[0])
    with torch.no_grad():
        gate[0].zero_()
        up[0].zero_()
        gate[0, :3] = torch.tensor([1.0, -3.0, 2.0])
        up[0, :3] = torch.tensor([0.0, 1.0, -1.0])


@pytest.mark.parametrize("name, expected", [
    ("maw", (2 + 3) + (1 + 1)),              # max + |min| of gate and of up
    ("vow", 14 / 31 + 2 / 31),               # unbiased variance over H = 32 entries (mean 0)
    ("pon", 6 * 2),                          # ‖gate‖₁ · ‖up‖₁
    ("l2", math.sqrt(14) + math.sqrt(2)),    # ‖gate‖₂ + ‖up‖₂
])
def test_static_criteria_hand_computed(family, name, expected):
    model = tiny_model(family)
    _set_neuron0(model)
    scores = CRITERIA.get(name)(model)
    assert scores[0].mlp[0].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", [n for n in CRITERIA.names() if not CRITERIA.get(n).selects_in_repair])
def test_shapes_and_determinism(family, name):
    model = tiny_model(family)
    a, _ = compute_scores(model, name, CAL, seed=3, progress=False)
    b, _ = compute_scores(model, name, CAL, seed=3, progress=False)
    assert len(a) == 4
    for s, t in zip(a, b):
        assert s.mlp.shape == (48,) and s.heads.shape == (4,) and s.kv.shape == (2,)
        assert torch.isfinite(s.mlp).all() and torch.isfinite(s.heads).all() and torch.isfinite(s.kv).all()
        torch.testing.assert_close(s.mlp, t.mlp, rtol=1e-5, atol=0)  # same data → same scores
        torch.testing.assert_close(s.heads, t.heads, rtol=1e-5, atol=0)


def test_random_depends_on_seed():
    model = tiny_model("llama")
    a = CRITERIA.get("random")(model, None, 0)
    b = CRITERIA.get("random")(model, None, 1)
    assert not torch.equal(a[0].mlp, b[0].mlp)
    assert not torch.equal(a[0].mlp, a[1].mlp)  # layers get their own streams


def test_taylor_equals_manual_gradient_times_weight(family):
    """Σ_batches ∂L_b/∂W accumulated by hand, then Σ|g·w| over gate row, up row and down column of neuron j."""
    model = tiny_model(family)
    scores, _ = compute_scores(model, "taylor", CAL, batch_size=4, progress=False)
    ref = copy.deepcopy(model)
    for start in (0, 4):
        batch = CAL[start : start + 4]
        ref(input_ids=batch, labels=batch).loss.backward()
    adapter = adapter_for(ref)
    layer = adapter.layers(ref)[2]
    gate, up, down = mlp_tensors(adapter, layer, lambda m: (m.weight.grad * m.weight).abs().detach())
    expected = gate.sum(1) + up.sum(1) + down.sum(0)
    torch.testing.assert_close(scores[2].mlp, expected, rtol=1e-4, atol=1e-7)


def test_taylor_dead_neuron_scores_zero():
    """Hand example: a neuron with zero gate row and zero down column has g·w = 0 everywhere → score 0, ranked last."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    gate, _, down = adapter.mlp_weights(adapter.layers(model)[1])
    with torch.no_grad():
        gate[5].zero_()
        down[:, 5].zero_()
    scores, _ = compute_scores(model, "taylor", CAL, progress=False)
    assert scores[1].mlp[5].item() == 0.0
    assert int(torch.argmin(scores[1].mlp)) == 5


def test_calibration_leaves_model_unchanged():
    model = tiny_model("llama")
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    collect_statistics(model, CAL, activations=True, gradients=True, layer_similarity=True, progress=False)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_maw_matches_optipfair_static_and_hybrid():
    """Parity with the optipfair package (benchmark-only dependency: skipped when not installed)."""
    mlp_glu = pytest.importorskip("optipfair.pruning.mlp_glu")
    model = tiny_model("llama")
    adapter = adapter_for(model)
    stats = collect_statistics(model, CAL, activations=True, batch_size=2, progress=False)
    # their hooks on the same batches (accumulated per-batch L2 norms)
    handles = mlp_glu.setup_mlp_hooks_for_importance(model, torch.device("cpu"))
    try:
        mlp_glu.run_calibration_forward_passes(model, [{"input_ids": CAL[i : i + 2]} for i in range(0, 6, 2)], torch.device("cpu"),
                                               show_progress=False)
    finally:
        for h in handles:
            h.remove()
    theirs = mlp_glu.get_activation_norms()
    static = {n: CRITERIA.get(n)(model) for n in ("maw", "vow", "pon", "l2")}
    hybrid = CRITERIA.get("maw_hybrid")(model, stats)
    for i, layer in enumerate(adapter.layers(model)):
        g, u, d = (w.detach().float() for w in adapter.mlp_weights(layer))
        torch.testing.assert_close(stats.mlp_act_norms[i], theirs[i], rtol=1e-5, atol=1e-6)
        for n, fn in (("maw", mlp_glu.compute_neuron_pair_importance_maw), ("vow", mlp_glu.compute_neuron_pair_importance_vow),
                      ("pon", mlp_glu.compute_neuron_pair_importance_pon), ("l2", mlp_glu.compute_neuron_pair_importance_l2)):
            torch.testing.assert_close(static[n][i].mlp, fn(g, u), rtol=0, atol=0)
        torch.testing.assert_close(hybrid[i].mlp, mlp_glu.compute_neuron_pair_importance_maw_hybrid(g, u, d, theirs[i]),
                                   rtol=1e-5, atol=1e-6)


def test_criteria_chosen_in_the_repair_have_no_scores():
    from prunelab.errors import PrunelabError

    with pytest.raises(PrunelabError, match="chooses inside the repair"):
        compute_scores(tiny_model("llama"), "obs", CAL, progress=False)
