"""Width-pruning criteria: one score per coupled group per layer (low = prune first).

Groups of decoder layer ``l`` (hidden size H, head_dim d):

* **GLU neuron j**: row j of ``W_gate`` and ``W_up`` ([I,H]) and column j of ``W_down`` ([H,I]).
* **query head h**: rows ``h·d … (h+1)·d`` of ``W_q`` and the same columns of ``W_o``.
* **KV group g**: rows ``g·d … (g+1)·d`` of ``W_k`` and ``W_v`` (removed only with all its query heads).

Static criteria, MLP part — exactly OptiPFair 0.4.2 (``optipfair/pruning/mlp_glu.py``), computed in fp32:

* ``maw`` (OptiPFair "MAW"/PPM): ``max_k G_jk + |min_k G_jk| + max_k U_jk + |min_k U_jk|``.
* ``vow``: ``var(G_j·) + var(U_j·)`` (unbiased variance, ``torch.var`` default).
* ``pon``: ``‖G_j·‖₁ · ‖U_j·‖₁``.
* ``l2``: ``‖G_j·‖₂ + ‖U_j·‖₂`` (OptiPFair's "L2").

Data-calibrated ("hybrid") variants, with ``r`` the criterion's per-row statistic (PPM for maw, variance for
vow, L1 norm for pon, L2 norm for l2) and ``X_d`` the accumulated down-proj input norms
(:mod:`prunelab.prune.calibration_stats`)::

    score_j = ( r(G_j·)/max r(G) + r(U_j·)/max r(U) + r(D_·j)/max r(D) ) · ‖X_d^j‖

For ``maw_hybrid`` this is OptiPFair's ``compute_neuron_pair_importance_maw_hybrid`` (with its 1e-8 guards);
OptiPFair offers the data-driven mode for PPM only, so ``vow_hybrid``/``pon_hybrid``/``l2_hybrid`` are
prunelab's extension of the same recipe.

``taylor`` (first-order, LLM-Pruner / Adapt-Pruner eq. 10): ``Σ_{w ∈ group} |∂L/∂w · w|`` with the gradient of the
next-token NLL accumulated over the calibration batches (biases of the group included).

``random``: i.i.d. uniform scores from a generator seeded with ``(seed, layer)``.

Attention heads (OptiPFair prunes MLPs only, so these are prunelab's analogues): static criteria apply ``r`` to the
head's flattened q block and o block and combine them like gate/up (sum, or product for ``pon``); KV groups use the
k and v blocks. Hybrid heads use the q and o blocks, normalised by their layer max, times the head's o_proj-input
activation norm; hybrid KV groups use k and v times the sum of their query heads' activation norms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.models.adapters import FamilyAdapter, adapter_for
from prunelab.prune.calibration_stats import CalibrationStats
from prunelab.registry import Registry


@dataclass
class LayerScores:
    """Scores of one decoder layer's groups: ``mlp[I]``, ``heads[num_heads]``, ``kv[num_kv_heads]``."""

    mlp: torch.Tensor
    heads: torch.Tensor
    kv: torch.Tensor


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: ``fn(model, stats, seed, heads) -> list[LayerScores]``; ``needs`` ⊆ {activations,
    gradients}. With ``heads=False`` only MLP scores are computed (head/KV scores are zeros)."""

    name: str
    fn: Callable[[nn.Module, CalibrationStats | None, int, bool], list[LayerScores]]
    needs: frozenset[str]
    description: str
    #: chosen layer by layer inside the sequential repair from each layer's own Gram matrix (``obs``), so there
    #: are no scores up front: only :func:`prunelab.prune.width.prune_width` with an ``ls`` repair can use it
    selects_in_repair: bool = False

    @property
    def needs_data(self) -> bool:
        return bool(self.needs)

    def __call__(self, model: nn.Module, stats: CalibrationStats | None = None, seed: int = 0,
                 heads: bool = True) -> list[LayerScores]:
        return self.fn(model, stats, seed, heads)


CRITERIA: Registry[Criterion] = Registry("width criterion")


# ----------------------------------------------------------------------------------------------------------
# logical views of a layer's tensors (weights, or per-element saliency of the same shape)
# ----------------------------------------------------------------------------------------------------------
def mlp_tensors(adapter: FamilyAdapter, layer: nn.Module, get: Callable[[nn.Linear], torch.Tensor]):
    """``(gate [I,H], up [I,H], down [H,I])`` of ``get(module)`` (fused Phi3 gate_up split like the weights)."""
    down = get(adapter.module(layer, "down"))
    if adapter.fused_gate_up:
        fused = get(adapter.module(layer, "gate"))
        width = down.shape[1]
        return fused[:width], fused[width:], down
    return get(adapter.module(layer, "gate")), get(adapter.module(layer, "up")), down


def attention_tensors(adapter: FamilyAdapter, layer: nn.Module, get: Callable[[nn.Linear], torch.Tensor]):
    """``(q [nq·d,·], k, v, o [H,nq·d])`` of ``get(module)``; works for biases too (1-D, o bias ignored)."""
    o = get(adapter.module(layer, "o"))
    if adapter.fused_qkv:
        lay = adapter.head_layout(layer)
        fused = get(adapter.module(layer, "q"))
        nq, nkv = lay.num_heads * lay.head_dim, lay.num_kv_heads * lay.head_dim
        if fused is None:
            return None, None, None, o
        return fused[:nq], fused[nq : nq + nkv], fused[nq + nkv :], o
    return get(adapter.module(layer, "q")), get(adapter.module(layer, "k")), get(adapter.module(layer, "v")), o


def _weight(m: nn.Linear) -> torch.Tensor:
    return m.weight.detach().float()


def _bias(m: nn.Linear) -> torch.Tensor | None:
    return None if m.bias is None else m.bias.detach().float()


def head_blocks(w: torch.Tensor, n: int, rows: bool = True) -> torch.Tensor:
    """``[n, d·H]``: head ``h``'s rows (``rows=True``, q/k/v) or columns (o) flattened."""
    if rows:
        return w.reshape(n, -1)
    return w.reshape(w.shape[0], n, -1).permute(1, 0, 2).reshape(n, -1)


# ----------------------------------------------------------------------------------------------------------
# per-row statistics (OptiPFair's definitions, row-wise along ``dim``)
# ----------------------------------------------------------------------------------------------------------
def ppm(w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Peak-to-peak magnitude ``max + |min|`` (OptiPFair's MAW); one ``aminmax`` pass gives the same values."""
    lo, hi = torch.aminmax(w, dim=dim)
    return hi + torch.abs(lo)


def variance(w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return torch.var(w, dim=dim)


def l1(w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return torch.norm(w, p=1, dim=dim)


def l2norm(w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return torch.norm(w, p=2, dim=dim)


STATISTICS = {"maw": ppm, "vow": variance, "pon": l1, "l2": l2norm}


def _combine(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a * b if name == "pon" else a + b


def _static(name: str) -> Callable:
    r = STATISTICS[name]

    def fn(model: nn.Module, stats: CalibrationStats | None = None, seed: int = 0,
           heads: bool = True) -> list[LayerScores]:
        adapter = adapter_for(model)
        out = []
        for layer in adapter.layers(model):
            gate, up, _ = mlp_tensors(adapter, layer, _weight)
            lay = adapter.head_layout(layer)
            if not heads:
                out.append(_mlp_only(_combine(name, r(gate, 1), r(up, 1)), lay))
                continue
            q, k, v, o = attention_tensors(adapter, layer, _weight)
            out.append(
                LayerScores(
                    mlp=_combine(name, r(gate, 1), r(up, 1)),
                    heads=_combine(name, r(head_blocks(q, lay.num_heads), 1),
                                   r(head_blocks(o, lay.num_heads, rows=False), 1)),
                    kv=_combine(name, r(head_blocks(k, lay.num_kv_heads), 1), r(head_blocks(v, lay.num_kv_heads), 1)),
                )
            )
        return out

    return fn


def _mlp_only(mlp: torch.Tensor, lay) -> LayerScores:
    """MLP scores with zero head/KV scores (callers that keep every head skip the attention statistics)."""
    return LayerScores(mlp=mlp, heads=torch.zeros(lay.num_heads), kv=torch.zeros(lay.num_kv_heads))


def _normed(x: torch.Tensor) -> torch.Tensor:
    return x / (x.max() + 1e-8)  # OptiPFair's normalisation of each component to [0, 1]


def _hybrid(name: str) -> Callable:
    r = STATISTICS[name]

    def fn(model: nn.Module, stats: CalibrationStats | None = None, seed: int = 0,
           heads: bool = True) -> list[LayerScores]:
        adapter = adapter_for(model)
        out = []
        for i, layer in enumerate(adapter.layers(model)):
            gate, up, down = mlp_tensors(adapter, layer, _weight)
            lay = adapter.head_layout(layer)
            q, k, v, o = attention_tensors(adapter, layer, _weight)
            x_d = stats.mlp_act_norms[i].float().to(gate.device)
            x_h = stats.head_act_norms[i].float().to(gate.device)
            structural = _normed(r(gate, 1)) + _normed(r(up, 1)) + _normed(r(down, 0))
            if not heads:
                out.append(_mlp_only(structural * x_d, lay))
                continue
            head_struct = _normed(r(head_blocks(q, lay.num_heads), 1)) + _normed(
                r(head_blocks(o, lay.num_heads, rows=False), 1))
            kv_struct = _normed(r(head_blocks(k, lay.num_kv_heads), 1)) + _normed(r(head_blocks(v, lay.num_kv_heads), 1))
            x_kv = x_h.reshape(lay.num_kv_heads, lay.group_size).sum(1)
            out.append(LayerScores(mlp=structural * x_d, heads=head_struct * x_h, kv=kv_struct * x_kv))
        return out

    return fn


def _taylor(model: nn.Module, stats: CalibrationStats | None = None, seed: int = 0,
            heads: bool = True) -> list[LayerScores]:
    """``Σ_{w∈group} |g·w|`` from the element-wise saliency collected by :func:`collect_statistics`."""
    adapter = adapter_for(model)
    out = []
    sal_w = lambda m: stats.saliency[m][0]  # noqa: E731
    sal_b = lambda m: stats.saliency[m][1]  # noqa: E731
    for layer in adapter.layers(model):
        gate, up, down = mlp_tensors(adapter, layer, sal_w)
        mlp = gate.sum(1) + up.sum(1) + down.sum(0)
        if adapter.fused_gate_up:
            fused_b = sal_b(adapter.module(layer, "gate"))
            if fused_b is not None:
                width = down.shape[1]
                mlp = mlp + fused_b[:width] + fused_b[width:]
        else:
            for name in ("gate", "up"):
                b = sal_b(adapter.module(layer, name))
                if b is not None:
                    mlp = mlp + b
        lay = adapter.head_layout(layer)
        q, k, v, o = attention_tensors(adapter, layer, sal_w)
        h = head_blocks(q, lay.num_heads).sum(1) + head_blocks(o, lay.num_heads, rows=False).sum(1)
        kv = head_blocks(k, lay.num_kv_heads).sum(1) + head_blocks(v, lay.num_kv_heads).sum(1)
        qb, kb, vb, _ = attention_tensors(adapter, layer, sal_b)
        if qb is not None:
            h = h + qb.reshape(lay.num_heads, -1).sum(1)
        if kb is not None:
            kv = kv + kb.reshape(lay.num_kv_heads, -1).sum(1) + vb.reshape(lay.num_kv_heads, -1).sum(1)
        out.append(LayerScores(mlp=mlp, heads=h, kv=kv))
    return out


def _random(model: nn.Module, stats: CalibrationStats | None = None, seed: int = 0,
            heads: bool = True) -> list[LayerScores]:
    adapter = adapter_for(model)
    out = []
    for i, layer in enumerate(adapter.layers(model)):
        g = torch.Generator().manual_seed(int(seed) * 100_003 + i)  # independent, reproducible stream per layer
        lay = adapter.head_layout(layer)
        out.append(LayerScores(mlp=torch.rand(adapter.mlp_width(layer), generator=g),
                               heads=torch.rand(lay.num_heads, generator=g), kv=torch.rand(lay.num_kv_heads, generator=g)))
    return out


_DESCRIPTIONS = {
    "maw": "max + |min| of gate and up rows (OptiPFair MAW/PPM)",
    "vow": "variance of gate and up rows (OptiPFair VOW)",
    "pon": "product of L1 norms of gate and up rows (OptiPFair PON)",
    "l2": "sum of L2 norms of gate and up rows (OptiPFair L2)",
}
for _name in ("maw", "vow", "pon", "l2"):
    CRITERIA.register(_name, Criterion(_name, _static(_name), frozenset(), _DESCRIPTIONS[_name]))
for _name in ("maw", "vow", "pon", "l2"):
    CRITERIA.register(
        f"{_name}_hybrid",
        Criterion(f"{_name}_hybrid", _hybrid(_name), frozenset({"activations"}),
                  f"{_name} of gate/up/down, max-normalised, × calibration activation norms (OptiPFair hybrid)"),
    )
CRITERIA.register("taylor", Criterion("taylor", _taylor, frozenset({"gradients"}),
                                      "first-order Taylor Σ|∂L/∂W ⊙ W| over the group (calibration NLL)"))
CRITERIA.register("random", Criterion("random", _random, frozenset(), "seeded uniform random scores (control)"))


def _in_repair(model: nn.Module, stats: CalibrationStats | None = None, seed: int = 0,
               heads: bool = True) -> list[LayerScores]:
    from prunelab.errors import PrunelabError

    raise PrunelabError("criterion obs has no scores up front: it chooses inside the repair (prune_width with "
                        "repair ls or ls+bias)")


CRITERIA.register("obs", Criterion(
    "obs", _in_repair, frozenset({"reconstruction"}),
    "Optimal Brain Surgeon on each layer's calibration Gram matrix, jointly with the ls re-fit (SlimGPT); "
    "needs --repair ls", selects_in_repair=True))


def scored_data_criteria() -> list[str]:
    """The data-driven criteria that score every group up front (what Adapt-Pruner can use)."""
    return [n for n in CRITERIA.names() if CRITERIA.get(n).needs_data and not CRITERIA.get(n).selects_in_repair]


def check_criterion_use(criterion: str, repair: str = "none", repair_target: str = "layer",
                        adaptive: bool = False) -> Criterion:
    """The criterion, after refusing (one line) a combination it cannot serve: a criterion that chooses inside the
    repair (``obs``) needs a least-squares repair to the layer target, and cannot be Adapt-Pruner's score."""
    from prunelab.errors import PrunelabError
    from prunelab.prune.repair import REPAIRS

    crit = CRITERIA.get(criterion)
    if crit.selects_in_repair:
        if adaptive:
            raise PrunelabError(f"Adapt-Pruner needs every group's score up front; criterion {criterion} chooses "
                                f"inside the uniform repair only (use one of: {', '.join(scored_data_criteria())})")
        if not (REPAIRS.get(repair).ls and repair_target == "layer"):
            raise PrunelabError(f"criterion {criterion} chooses what to keep inside the least-squares repair: use "
                                f"--repair ls or ls+bias with --repair-target layer (got --repair {repair}, target "
                                f"{repair_target})")
    return crit
