"""The ``model`` repair target: projections re-fitted toward the dense model's stream (tiny models, every family)."""

from __future__ import annotations

import copy

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for
from prunelab.prune.adaptive import adapt_prune
from prunelab.prune.repair import REPAIRS, LayerPlan, TargetAccumulator, check_repair, repair_width, solve_to_target
from prunelab.prune.width import prune_width
from tests.tiny import tiny_model

CAL = torch.randint(3, 120, (8, 16), generator=torch.Generator().manual_seed(0))
X = torch.randint(3, 120, (2, 12), generator=torch.Generator().manual_seed(1))


def _final_hidden(model, ids):
    with torch.no_grad():
        return adapter_for(model).decoder(model)(input_ids=ids, use_cache=False).last_hidden_state


def test_solve_to_target_recovers_an_exact_linear_target():
    """A target that is exactly ``W* z + b*`` is recovered by ls+bias with a vanishing ridge (error → 0)."""
    torch.manual_seed(0)
    z = torch.randn(400, 7) * 2 + 0.5
    w_star, b_star = torch.randn(5, 7), torch.randn(5)
    acc = TargetAccumulator(7, 5, "test", torch.device("cpu"))
    acc.add(z, z @ w_star.T + b_star)
    w, b, rec = solve_to_target(torch.zeros(5, 7), None, acc, REPAIRS.get("ls+bias"), 1e-12)
    assert torch.allclose(w.float(), w_star, atol=1e-5) and torch.allclose(b.float(), b_star, atol=1e-5)
    assert rec.error_after < 1e-10 < rec.error_before


def test_model_target_errors_not_above_unrepaired(family):
    dense = tiny_model(family)
    if family == "gemma2":
        with pytest.raises(PrunelabError, match="post-norm"):
            prune_width(copy.deepcopy(dense), criterion="maw", ratio=0.4, calibration=CAL, repair="ls",
                        repair_target="model", progress=False)
        return
    kw = dict(criterion="maw", ratio=0.4, heads_ratio=0.5, calibration=CAL, progress=False)
    plain, fixed = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_width(plain, **kw)
    rep = prune_width(fixed, repair="ls", repair_target="model", **kw)
    assert rep.repair.target == "model"
    assert all(p.error_after <= p.error_before + 1e-9 for p in rep.repair.projections)
    assert min(p.error_after / p.error_before for p in rep.repair.projections if p.error_before > 0) < 0.95
    # the last layer's output is fitted to the dense model's hidden state: closer to it than plain pruning on the
    # calibration tokens (before the final norm)
    d = _final_hidden(dense, CAL)
    adapter = adapter_for(dense)
    last = {}

    def grab(model):
        h = adapter.layers(model)[-1].register_forward_hook(lambda m, a, o: last.update(h=o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            adapter.decoder(model)(input_ids=CAL, use_cache=False)
        h.remove()
        return last["h"]

    target = grab(dense)
    assert float((grab(fixed) - target).pow(2).sum()) < float((grab(plain) - target).pow(2).sum())
    assert d.shape == target.shape


def test_adaptive_with_model_target_runs_and_keeps_widths():
    dense = tiny_model("llama")
    kw = dict(ratio=0.3, steps=2, calibration=CAL, progress=False)
    plain = adapt_prune(copy.deepcopy(dense), **kw)
    fixed = adapt_prune(copy.deepcopy(dense), repair="ls+bias", repair_target="model", **kw)
    assert fixed.repair is not None and fixed.repair.target == "model"
    assert fixed.widths_after == plain.widths_after and fixed.heads_after == plain.heads_after  # repair keeps shapes
    assert all(p.error_after <= p.error_before + 1e-9 for p in fixed.repair.projections)


def test_bad_target_is_refused_before_any_work():
    model = tiny_model("llama")
    with pytest.raises(PrunelabError, match="repair target"):
        check_repair(model, "ls", None, CAL, True, False, target="global")
    with pytest.raises(PrunelabError, match="repair target"):
        prune_width(model, criterion="maw", ratio=0.4, calibration=CAL, repair="ls", repair_target="dense",
                    progress=False)
