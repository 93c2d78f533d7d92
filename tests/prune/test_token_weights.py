"""Token weighting of the least-squares fits (``uniform`` | ``normalized``: 1/‖h‖² of the receiving stream)."""

from __future__ import annotations

import copy

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for
from prunelab.prune.depth_repair import compensate_and_remove
from prunelab.prune.repair import GramAccumulator, LayerPlan, repair_width, stream_weights
from prunelab.prune.width import prune_width
from tests.tiny import tiny_model

CAL = torch.randint(3, 120, (8, 16), generator=torch.Generator().manual_seed(0))
X = torch.randint(3, 120, (2, 12), generator=torch.Generator().manual_seed(1))


def test_normalized_weights_are_inverse_squared_norms_with_mean_one():
    h = torch.tensor([[[3.0, 4.0], [0.0, 1.0]], [[6.0, 8.0], [1.0, 0.0]]])  # norms 5, 1, 10, 1
    w = stream_weights(h, "normalized")
    raw = torch.tensor([[1 / 25, 1.0], [1 / 100, 1.0]], dtype=torch.float64)
    assert torch.allclose(w, raw / raw.mean())
    assert torch.equal(stream_weights(h, "uniform"), torch.ones(2, 2, dtype=torch.float64))


def test_weighted_gram_is_the_weighted_sum():
    g = torch.Generator().manual_seed(0)
    z, w = torch.randn(50, 6, generator=g), torch.rand(50, generator=g, dtype=torch.float64) + 0.1
    acc = GramAccumulator(6, "t", torch.device("cpu"))
    acc.add(z[:20], w[:20])
    acc.add(z[20:], w[20:])
    z64 = z.double()
    assert torch.allclose(acc.gram, (z64 * w[:, None]).T @ z64)
    assert torch.allclose(acc.sum, (z64 * w[:, None]).sum(0)) and acc.n == 50


@pytest.mark.parametrize("target", ["layer", "model"])
def test_normalized_repair_with_everything_kept_is_the_identity(target):
    model = tiny_model("llama")
    ref = copy.deepcopy(model)
    layers = list(adapter_for(model).layers(model))
    plans = [LayerPlan(list(range(48)), list(range(4))) for _ in layers]
    repair_width(model, CAL, plans, lambda i: layers[i], "ls", progress=False, target=target,
                 token_weights="normalized")
    with torch.no_grad():
        assert torch.allclose(model(X).logits, ref(X).logits, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma2", "phi3"])
def test_normalized_repair_lowers_its_own_error(family):
    report = prune_width(tiny_model(family), criterion="maw_hybrid", ratio=0.5, calibration=CAL, repair="ls",
                         progress=False, token_weights="normalized")
    assert all(p.error_after <= p.error_before + 1e-9 for p in report.repair.projections)


def test_weighting_changes_the_fit_when_one_token_dominates():
    """A stream with one huge token (an attention sink): uniform and normalized fits differ."""
    a = prune_width(tiny_model("llama"), criterion="maw_hybrid", ratio=0.5, calibration=CAL, repair="ls",
                    progress=False, token_weights="uniform")
    b = prune_width(tiny_model("llama"), criterion="maw_hybrid", ratio=0.5, calibration=CAL, repair="ls",
                    progress=False)  # the default: normalized
    assert a.kept_neurons == b.kept_neurons
    assert [p.error_after for p in a.repair.projections] != [p.error_after for p in b.repair.projections]


def test_unknown_weighting_refused_before_work():
    model = tiny_model("llama")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunelabError, match="unknown token weighting 'sink'"):
        prune_width(model, criterion="maw", ratio=0.5, calibration=CAL, repair="ls", token_weights="sink",
                    progress=False)
    with pytest.raises(PrunelabError, match="unknown token weighting"):
        compensate_and_remove(model, [2], CAL, "linear", token_weights="sink", progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method", ["linear", "scale"])
def test_normalized_depth_compensation_keeps_the_exact_merge(method):
    """The weighting changes T / α, not the merge: the folded model equals the dense one with the map applied."""
    dense = tiny_model("llama", num_hidden_layers=6)
    uni = compensate_and_remove(copy.deepcopy(dense), [3, 4], CAL, method, progress=False, token_weights="uniform")
    model = copy.deepcopy(dense)
    rep = compensate_and_remove(model, [3, 4], CAL, method, progress=False, token_weights="normalized")
    if method == "linear":
        assert not torch.allclose(rep.transforms[2], uni.transforms[2])
        # the merged down_proj is Tᵀ W_down of the dense anchor block
        want = rep.transforms[2].double().T @ dense.model.layers[2].mlp.down_proj.weight.double()
        assert torch.allclose(model.model.layers[2].mlp.down_proj.weight.double(), want, atol=1e-5)
    else:
        assert rep.runs[0].alpha != pytest.approx(uni.runs[0].alpha, abs=1e-9)
    with torch.no_grad():
        assert torch.isfinite(model(X).logits).all()
