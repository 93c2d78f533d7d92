"""Repair without retraining after width pruning: FLAP bias compensation and ridge least-squares refits.

Setting (one pruned projection of one decoder layer). The dense projection maps its input ``z ∈ R^I`` (the GLU
intermediate ``act(gate·x) ⊙ (up·x)`` for ``down_proj``; the concatenated head outputs for ``o_proj``) to
``y = W z + b₀`` with ``W = [W_K W_R]`` split into kept columns K and removed columns R. Pruning keeps
``ŷ = W_K z_K + b₀``. Over the N calibration tokens let ``μ = (1/N) Σ z``, ``M = (1/N) Σ z zᵀ`` (second moment) and
``C = M − μμᵀ`` (covariance), all accumulated in float64. The methods (:data:`REPAIRS`):

* ``bias`` — FLAP (An et al., AAAI 2024, "Fluctuation-based Adaptive Structured Pruning for Large Language
  Models", § "Baseline bias compensation": the pruned channels' baseline value ``W x̄`` becomes a bias): the
  removed channels' mean contribution is folded into the bias, ``b' = b₀ + W_R μ_R`` (``W_K`` unchanged). It is the
  least-squares optimal intercept for fixed ``W_K``.
* ``ls`` — ridge least-squares re-fit of the kept columns (the reconstruction objective of SlimGPT / Olica / GRAIL)::

      W' = argmin  (1/N) Σ ‖W z − W' z_K‖²  +  λ ‖W' − W_K‖²_F
         = W_K + W_R M_RK (M_KK + λ I)⁻¹                                           (normal equations)

  The ridge pulls toward the pruned weights ``W_K`` instead of toward 0, so (i) with nothing removed (R = ∅) the
  result is exactly ``W_K``, (ii) λ → ∞ is plain pruning, and (iii) the calibration reconstruction error after the
  refit is never above the unrepaired one (``W_K`` is a feasible point with zero penalty). One Cholesky
  factorisation + solve per layer (``torch.linalg.cholesky`` / ``cholesky_solve``).
* ``ls+bias`` — the same with an intercept (ordinary ridge regression on centred data)::

      W' = W_K + W_R C_RK (C_KK + λ I)⁻¹,      b' = b₀ + W μ − W' μ_K

  which reduces to ``bias`` as λ → ∞, so its error is ≤ that of ``bias`` and of ``ls``.

``λ = ridge · mean(diag M_KK)`` (``C_KK`` for ``ls+bias``): ``ridge`` is relative, scale-free. The default
(``ridge=None``, "auto") is ``ridge = 2·|K| / N`` — the textbook ridge scaling (optimal λ ∝ parameters / samples),
with the constant measured on SmolLM2-135M (40 % maw_hybrid MLP pruning, layers 2/10/18/26, reconstruction error on
2048 *held-out* LAMBADA tokens): at N = 2048 calibration tokens (|K| = 922) the held-out optimum is ridge ≈ 1
(e.g. layer 10: none 0.107, ridge 0.01 → 0.129 (over-fitted, worse than none), 0.1 → 0.095, 1 → 0.086, 10 → 0.097),
at N = 16384 it is ≈ 0.1 (layer 10: 0.01 → 0.073, 0.1 → 0.072, 1 → 0.079); ``2·|K|/N`` gives 0.9 and 0.11. A
fixed small damping (SparseGPT's 1 %) over-fits small calibration sets. Without a ridge (``ridge=0``) the system is
singular unless ``N ≥ |K|``, so ``ls`` refuses calibration sets with fewer tokens than the largest kept width (the
minimum is named in the error).

Sequential, layer by layer: each layer's statistics are taken on the hidden states produced by the *already pruned
and repaired* layers before it (as SparseGPT / SlimGPT do), and the target is the *dense* layer applied to that same
input, so later layers re-fit to what they will really see and errors do not compound unnoticed. Within a layer the
attention (``o_proj``, kept head columns) is repaired first, then the MLP's statistics are taken behind the repaired
attention. Cost per layer: one block pass for the statistics, in which the dense MLP runs on the input the pruned
MLP gets (the pruned MLP's output defines the token weights below) and the attention outputs are kept; then one
pass of the re-fitted MLP behind the replayed attention outputs; one more block pass when heads are pruned (the
``o_proj`` statistics).

Two targets (:data:`REPAIR_TARGETS`, ``target=``):

* ``layer`` (default) — the dense layer's own output on the repaired input, ``y = W z``: each layer undoes its own
  pruning error only (the formulas above, which need only the moments of ``z``).
* ``model`` — the *dense model's* stream: the projection is re-fitted so that the residual stream leaving it matches
  the dense model's hidden state there, ``D − h_res`` with ``h_res`` the repaired model's residual stream that the
  projection's output is added to (``D`` the dense model's hidden state after the layer for ``down_proj``, after its
  attention for ``o_proj``). With ``Y`` these per-token targets, ``M_YK = (1/N) Σ y z_Kᵀ``::

      W' = (M_YK + λ W_K)(M_KK + λ I)⁻¹            (ls; centred moments and b' = μ_Y − W' μ_K with ls+bias)

  so each layer also corrects the drift the layers before it left (the error-correcting target of e.g.
  ZipLM / "Fast and Optimal Weight Update for Pruned LLMs"); with nothing pruned ``D = h_res + W z`` and the
  solution is ``W_K`` again. It needs the dense stream alongside (one more block pass and one more copy of the
  calibration hidden states) and a projection output added to the stream unnormalised, so families with post-norms
  (Gemma2) are refused for it. Measured on SmolLM2-135M (40 % maw_hybrid MLP, 64 × 256 LAMBADA calibration tokens,
  the whole WikiText-2 test file): none 123.3, ``ls`` layer 89.5, ``ls`` model 87.4 (×0.976 of the layer target's).
* ``layer+attn`` — the pruned projections as ``layer``, and in every layer whose input has drifted from the dense
  model's stream (every layer after the first pruned one) the attention's ``o_proj`` — all its columns, pruned or
  not — re-fitted toward the dense model's stream after the attention, as the ``model`` target does for ``o_proj``:
  ``W' = (M_YK + λ W)(M_KK + λ I)⁻¹`` with ``y = D_mid − h`` (``h`` the repaired stream entering the layer, ``D_mid``
  the dense stream after the layer's attention). The full-width, unpruned ``o_proj`` absorbs the drift the pruned
  MLPs before it left, while each pruned ``down_proj`` keeps the layer target's own-error fit (the depth analogue is
  :mod:`prunelab.prune.depth_repair`'s ``refit+attn``). Same family restriction and extra dense pass as ``model``.

Token weighting (:data:`TOKEN_WEIGHTS`, ``token_weights=``; default ``normalized``). Every moment above is a mean
over tokens; ``normalized`` makes it a weighted mean with ``w_t ∝ 1/‖h_t‖²``, ``h_t`` the residual stream the
projection's output is added to (the stream after the add, with the pruned, not yet re-fitted projection; for
the ``model`` target the dense model's stream). The next block
reads the stream through an RMSNorm, so an output error ``e_t`` reaches it as ``e_t/rms(h_t)``: the weighted
objective ``Σ_t ‖e_t‖²/‖h_t‖²`` is the error the rest of the model sees. Uniformly, SmolLM2-135M's attention-sink
tokens (a window's first token: ‖h‖ ≈ 22 500 after block 20 vs a median of 221) hold 98 % of ``Σ‖h‖²`` in the
middle blocks, so the plain fit spends itself on one token in 256. Measured (40 % maw_hybrid, 64 × 256 LAMBADA
calibration tokens, first 64 WikiText-2 windows): ``ls`` uniform 87.3, normalized 86.1. The weights have mean 1 per
batch, so ``N`` stays the token count and the auto ridge is unchanged.

Selection inside the repair (criterion ``obs``, :func:`obs_select_columns`): instead of scoring neurons up front,
each layer's kept columns are chosen by Optimal Brain Surgeon on that layer's own Gram matrix, then re-fitted as
``ls``. Measured on SmolLM2-135M it is *worse* than maw_hybrid + ``ls`` (40 %, first 64 windows: 101.6 vs 87.3
uniform, 104.7 vs 86.1 normalized), although its calibration reconstruction error is lower (0.064 vs 0.066): the
choice that reconstructs calibration activations best does not transfer to WikiText-2 here.

Memory and time (the Gram matrix is O(I²) per projection; only one exists at a time). ``down_proj``: I = the GLU
width — 1536² · 8 B = 19 MB for SmolLM2-135M; for an 8B Llama (I = 14336) 14336² · 8 B = 1.64 GB, and the solve adds
the kept block ``S_KK + λI`` and its Cholesky factor (|K| = 8602 at 40 %: 2 × 0.59 GB) and the cross block ``S_KR``
(0.39 GB): ≈ 3.2 GB peak beyond the model (:func:`solve_repair` never copies the Gram matrix). ``o_proj``: I = heads ·
head_dim (4096 there: 134 MB). Building the Gram costs ``N · I²`` float64 multiply-adds per projection: 0.16 s per
2048 tokens for I = 1536 (float64 ``addmm`` at ≈ 55 GFLOP/s, measured on the 2-core CPU of the benchmarks); for
I = 14336 and N = 16384 tokens 3.4·10¹² per layer — ≈ 2 min per layer at that rate (≈ 1 h for 32 layers), seconds on
a data-centre GPU (consumer GPUs run float64 at 1/32–1/64 of their float32 rate). The Cholesky of the kept block
(|K|³/3 ≈ 2·10¹¹) is minor. Chunking: the calibration tokens stream through in batches and each batch is converted
to float64 in row chunks of at most :data:`ROW_CHUNK_ELEMENTS` (256 MB), so activation memory does not grow with the
calibration set or with I; the Gram matrix itself is not split — 1.6 GB fits wherever an 8B model does, and a
blocked solve would only trade that for I/O.

Bias storage is HF-native: ``config.mlp_bias`` / ``config.attention_bias`` (Llama: both; Gemma2 and Qwen3: attention
only) make ``from_pretrained`` build the biases. HF's switches add biases to *all* the projections they cover
(gate/up/down, or q/k/v/o); the ones the repair does not need are zero. A family without a switch for the needed bias
(Qwen2, Mistral, Phi3 in transformers 5; the MLP of Gemma2 and Qwen3) is refused with one line — use ``ls`` there.
:func:`bias_support` decides this from the installed modeling code, not from this list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for
from prunelab.models.surgery import prune_attention_heads, prune_mlp_neurons
from prunelab.registry import Registry

#: None = "auto": relative ridge ``AUTO_RIDGE · |K| / N`` (module docstring: measured on held-out tokens)
DEFAULT_RIDGE = None
AUTO_RIDGE = 2.0


def effective_ridge(ridge: float | None, width: int, tokens: int) -> float:
    """The relative ridge actually used: ``ridge``, or for None ``AUTO_RIDGE · width / tokens``."""
    return AUTO_RIDGE * width / max(tokens, 1) if ridge is None else float(ridge)


#: how calibration tokens are weighted in the least-squares fits: ``uniform`` (every token alike), or
#: ``normalized`` — token t weighted by ``1/‖h_t‖²``, ``h_t`` the residual stream the fitted output lands in. Why:
#: the next block sees the stream through an RMSNorm, so an error ``e_t`` reaches it as ``e_t/rms(h_t)``; and in
#: SmolLM2-135M the stream of a window's first token (the attention sink) is ~100× larger than the rest (‖h‖ 22 500
#: vs a median of 221 after block 20), so uniformly it carries 98 % of Σ‖h‖² and the plain fit serves one token.
TOKEN_WEIGHTS: Registry[str] = Registry("token weighting")
for _w in ("uniform", "normalized"):
    TOKEN_WEIGHTS.register(_w, _w)
DEFAULT_TOKEN_WEIGHTS = "normalized"  # measured better on SmolLM2-135M: README, "Repair without retraining"


def stream_weights(stream: torch.Tensor, how: str) -> torch.Tensor:
    """Per-token float64 weights ``[..., ]`` for a stream ``[..., H]`` (:data:`TOKEN_WEIGHTS`), mean 1 per call for
    ``normalized`` (the scale is irrelevant to the fits; mean 1 keeps sums comparable to token counts)."""
    if how == "uniform":
        return torch.ones(stream.shape[:-1], dtype=torch.float64, device=stream.device)
    w = 1.0 / stream.detach().double().pow(2).sum(-1).clamp_min(1e-12)
    return w / w.mean()


@dataclass(frozen=True)
class RepairMethod:
    """A width repair: whether it re-fits the kept columns (``ls``) and/or adds a compensating bias."""

    name: str
    ls: bool
    bias: bool

    @property
    def active(self) -> bool:
        return self.ls or self.bias


#: what a re-fitted projection should reproduce (module docstring): the dense layer, or the dense model's stream
REPAIR_TARGETS: Registry[str] = Registry("repair target")
for _t in ("layer", "model", "layer+attn"):
    REPAIR_TARGETS.register(_t, _t)

REPAIRS: Registry[RepairMethod] = Registry("repair method")
for _m in (RepairMethod("none", False, False), RepairMethod("bias", False, True), RepairMethod("ls", True, False),
           RepairMethod("ls+bias", True, True)):
    REPAIRS.register(_m.name, _m)


@dataclass
class ProjectionRepair:
    """One repaired projection: relative calibration reconstruction errors ``E/‖y − b₀‖²`` before and after."""

    layer: int
    projection: str  # "down" or "o"
    width: int
    kept: int
    error_before: float
    error_after: float
    ridge_abs: float


@dataclass
class RepairReport:
    method: str
    ridge: float | None  # None: auto (per projection: ``ProjectionRepair.ridge_abs``)
    tokens: int
    seconds: float
    projections: list[ProjectionRepair] = field(default_factory=list)
    target: str = "layer"
    #: indices chosen inside the repair (``LayerPlan.select_*``), per layer, in the dense layer's numbering
    kept_neurons: dict[int, list[int]] = field(default_factory=dict)
    kept_heads: dict[int, list[int]] = field(default_factory=dict)

    @property
    def mean_error_before(self) -> float:
        return sum(p.error_before for p in self.projections) / max(len(self.projections), 1)

    @property
    def mean_error_after(self) -> float:
        return sum(p.error_after for p in self.projections) / max(len(self.projections), 1)


@dataclass
class LayerPlan:
    """What pruning keeps of one layer, in the *dense* layer's numbering (None = that part is not pruned).

    ``select_neurons`` / ``select_heads``: instead of given indices, keep this many, chosen inside the repair by
    :func:`obs_select_columns` / :func:`obs_head_scores` on the layer's own calibration Gram matrix (criterion
    ``obs``); the chosen indices are returned in :attr:`RepairReport.kept_neurons` / :attr:`RepairReport.kept_heads`.
    """

    neurons: list[int] | None = None
    heads: list[int] | None = None
    select_neurons: int | None = None
    select_heads: int | None = None


# ----------------------------------------------------------------------------------------------------------
# validation (before any work)
# ----------------------------------------------------------------------------------------------------------
def bias_support(model: nn.Module) -> tuple[bool, bool]:
    """Whether the family can *save* a ``down_proj`` / ``o_proj`` bias HF-natively (config switch or already there).

    Decided by building one decoder layer on the meta device with ``mlp_bias`` / ``attention_bias`` switched on, so
    it follows the installed transformers' modeling code rather than a hand-kept list.
    """
    from prunelab.models.surgery import layer_config, layer_shapes

    adapter = adapter_for(model)
    layer = adapter.layers(model)[0]
    cfg = layer_config(model.config, layer_shapes(model)[0])
    object.__setattr__(cfg, "mlp_bias", True)
    object.__setattr__(cfg, "attention_bias", True)
    with torch.device("meta"):
        probe = type(layer)(cfg, 0)
    return adapter.module(probe, "down").bias is not None, adapter.module(probe, "o").bias is not None


def has_post_norms(layer: nn.Module) -> bool:
    """Whether the block's sub-layer outputs pass a norm before the residual add (Gemma2's sandwich norms), so a
    projection's output is not what the residual stream receives."""
    return hasattr(layer, "post_feedforward_layernorm")


def check_repair(model: nn.Module, method: str, ridge: float | None, calibration: torch.Tensor | None,
                 prunes_mlp: bool, prunes_heads: bool, max_kept: int | None = None,
                 target: str = "layer") -> RepairMethod:
    """Validate a repair request; returns the method. ``max_kept``: largest kept width of a re-fitted projection."""
    m = REPAIRS.get(method)
    REPAIR_TARGETS.get(target)
    if not m.active:
        return m
    if target in ("model", "layer+attn"):
        if has_post_norms(adapter_for(model).layers(model)[0]):
            raise PrunelabError(f"--repair-target {target} cannot re-fit {adapter_for(model).family}: its projections' "
                                f"outputs pass a post-norm before the residual add (use --repair-target layer)")
    if ridge is not None and (not isinstance(ridge, (int, float)) or isinstance(ridge, bool) or not ridge >= 0
                              or ridge == float("inf")):
        raise PrunelabError(f"ridge must be a finite number ≥ 0, got {ridge!r}")
    if calibration is None:
        raise PrunelabError(f"--repair {method} needs calibration data (pass a tokenizer or a calibration batch)")
    if m.bias:
        mlp_ok, attn_ok = bias_support(model)
        family = adapter_for(model).family
        if prunes_mlp and not mlp_ok:
            raise PrunelabError(f"--repair {method} needs a down_proj bias, which {family} models cannot save "
                                f"(their HF config has no mlp_bias switch); use --repair ls")
        if prunes_heads and not attn_ok:
            raise PrunelabError(f"--repair {method} needs an o_proj bias, which {family} models cannot save "
                                f"(their HF config has no attention_bias switch); use --repair ls")
    if m.ls and max_kept is not None:
        # the Gram (covariance, with an intercept) of |K| activations has full rank only from |K| (|K| + 1) tokens on
        need = max_kept + (1 if m.bias else 0)
        tokens = calibration.numel()
        if tokens < need:
            raise PrunelabError(
                f"--repair {method} needs at least {need} calibration tokens (the largest kept layer width"
                f"{' + 1' if m.bias else ''}), got {tokens} ({calibration.shape[0]}×{calibration.shape[1]}); use more "
                f"or longer calibration samples")
    return m


# ----------------------------------------------------------------------------------------------------------
# statistics and the closed-form solutions
# ----------------------------------------------------------------------------------------------------------
#: largest float64 activation chunk converted at once by :meth:`GramAccumulator.add` (2²⁵ elements = 256 MB)
ROW_CHUNK_ELEMENTS = 1 << 25


class GramAccumulator:
    """``Σ z``, ``Σ z zᵀ`` and N over calibration tokens, in float64 (one ``[tokens, I]`` batch at a time)."""

    def __init__(self, width: int, where: str, device: torch.device) -> None:
        self.sum = torch.zeros(width, dtype=torch.float64, device=device)
        self.gram = torch.zeros(width, width, dtype=torch.float64, device=device)
        self.n = 0
        self.where = where

    def add(self, z: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Add a batch of tokens ``z [..., I]``; ``weight [...]`` (mean 1, :func:`stream_weights`) weights each token
        in both moments, so N stays the token count."""
        z = z.detach().reshape(-1, z.shape[-1])
        if not torch.isfinite(z).all():
            raise PrunelabError(f"calibration activations at {self.where} are not finite (NaN/inf): cannot repair")
        w = None if weight is None else weight.reshape(-1, 1).to(device=z.device, dtype=torch.float64)
        # rows in chunks, so the float64 copy of a batch stays ≤ ROW_CHUNK_ELEMENTS (e.g. 2340 tokens at I = 14336)
        step = max(1, ROW_CHUNK_ELEMENTS // z.shape[1])
        for start in range(0, z.shape[0], step):
            c = z[start : start + step].to(torch.float64)
            cw = c if w is None else c * w[start : start + step]
            self.sum += cw.sum(0)
            self.gram.addmm_(cw.T, c)
        self.n += z.shape[0]


def solve_repair(w: torch.Tensor, b0: torch.Tensor | None, acc: GramAccumulator, keep: torch.Tensor,
                 method: RepairMethod, ridge: float | None) -> tuple[torch.Tensor, torch.Tensor | None, ProjectionRepair]:
    """New kept weight ``W' [H, |K|]`` and bias (None when the method adds none) — see the module docstring.

    Only the ``K×K`` and ``K×R`` blocks of the statistics are materialised (``acc.gram`` is read, never copied), so
    the peak beyond the ``I×I`` Gram matrix is ``2|K|² + |K||R|`` float64 (the ridge system and its Cholesky factor,
    the cross block) — the memory note of the module docstring.
    """
    width = w.shape[1]
    removed = torch.tensor(sorted(set(range(width)) - set(keep.tolist())), dtype=torch.long)
    keep, removed = keep.to(acc.gram.device), removed.to(acc.gram.device)
    w64 = w.detach().to(device=acc.gram.device, dtype=torch.float64)
    wk, wr = w64[:, keep], w64[:, removed]
    n = acc.n
    mu = acc.sum / n

    def block(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        # M_rc = G_rc / N, or the covariance C_rc = M_rc − μ_r μ_cᵀ with an intercept
        out = acc.gram[rows.unsqueeze(1), cols].div_(n)  # advanced indexing copies: divide that copy in place
        return out.sub_(torch.outer(mu[rows], mu[cols])) if method.bias else out

    lam = 0.0
    w_new = wk
    if method.ls and removed.numel():
        a = block(keep, keep)  # S_KK, becomes S_KK + λI in place
        lam = effective_ridge(ridge, int(keep.numel()), n) * float(torch.diagonal(a).mean())
        torch.diagonal(a).add_(lam)
        chol, info = torch.linalg.cholesky_ex(a)
        del a
        if int(info) != 0:
            raise PrunelabError(f"the calibration Gram matrix of {acc.where} is singular: use a ridge > 0 or more "
                                f"calibration tokens")
        rhs = block(keep, removed) @ wr.T  # S_KR W_Rᵀ  [K, H]
        w_new = wk + torch.cholesky_solve(rhs, chol).T
        del chol, rhs
    shift = None
    if method.bias:
        # the optimal intercept for the chosen W': b' − b₀ = W μ − W' μ_K  (= W_R μ_R for FLAP, where W' = W_K)
        shift = w64 @ mu - w_new @ mu[keep]
    if not torch.isfinite(w_new).all() or (shift is not None and not torch.isfinite(shift).all()):
        raise PrunelabError(f"the repair of {acc.where} is not finite (NaN/inf): use a larger ridge")

    def error(wp: torch.Tensor, bp: torch.Tensor | None) -> float:
        # (1/N) Σ ‖W z − (W'_full z + s)‖² from the moments, with W'_full zero on the removed columns
        d = w64.clone()
        d[:, keep] -= wp
        quad = float(torch.einsum("hi,ij,hj->", d, acc.gram, d)) / n
        return quad if bp is None else quad - 2 * float((d @ mu) @ bp) + float(bp @ bp)

    scale = float(torch.einsum("hi,ij,hj->", w64, acc.gram, w64)) / n or 1.0
    report = ProjectionRepair(layer=-1, projection="", width=width, kept=int(keep.numel()),
                              error_before=error(wk, None) / scale, error_after=max(error(w_new, shift), 0.0) / scale,
                              ridge_abs=lam)
    bias = None
    if method.bias:
        bias = shift if b0 is None else b0.detach().to(shift) + shift
    return w_new, bias, report


# ----------------------------------------------------------------------------------------------------------
# selection by reconstruction error (criterion ``obs``)
# ----------------------------------------------------------------------------------------------------------
#: removal steps of :func:`obs_select_columns` at most: batches of ⌈removed / OBS_MAX_STEPS⌉ columns per step
OBS_MAX_STEPS = 128


def _ridged_inverse(acc: GramAccumulator, width_for_ridge: int, ridge: float | None) -> torch.Tensor:
    """``(M + λI)⁻¹`` with ``M = G/N`` and ``λ`` as in :func:`solve_repair` (relative to the mean diagonal of M)."""
    a = acc.gram / acc.n
    lam = effective_ridge(ridge, width_for_ridge, acc.n) * float(torch.diagonal(a).mean())
    torch.diagonal(a).add_(lam)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise PrunelabError(f"the calibration Gram matrix of {acc.where} is singular: use a ridge > 0 or more "
                            f"calibration tokens")
    return torch.cholesky_inverse(chol)


def obs_select_columns(w: torch.Tensor, acc: GramAccumulator, keep: int, ridge: float | None) -> list[int]:
    """The ``keep`` input columns of ``w [H, I]`` to keep, by greedy Optimal Brain Surgeon removal with updates.

    Structured OBS over columns that share one Hessian (SlimGPT, Ling et al., NeurIPS 2024, eq. 3–5; the column
    case of ZipLM / OBC): with ``A = M + λI`` the ridged second moment of the column inputs (the ``ls`` objective
    of the module docstring, λ as there), removing column j from the current weights and re-fitting the rest
    optimally costs ``ε_j = ‖W_{:,j}‖² / [A⁻¹]_jj``. Each step removes the cheapest columns S, then updates the
    remaining weights and the inverse by the block formulas ``W ← W − W_{:,S} ([A⁻¹]_SS)⁻¹ [A⁻¹]_{S,:}`` and
    ``A⁻¹ ← A⁻¹ − [A⁻¹]_{:,S} ([A⁻¹]_SS)⁻¹ [A⁻¹]_{S,:}`` (the inverse of A with S deleted), so later choices see
    the compensation of earlier ones. Only the *choice* is returned: the kept weights are then re-fitted in closed
    form by :func:`solve_repair` (the same minimiser the updates reach).

    Cost per step ``O(I² + H·I)`` float64 (the rank-|S| update of ``A⁻¹`` is memory-bound: ≈ 8 ms per step for
    I = 1536 on the 2-core benchmark CPU); ``|S| = ⌈removed / OBS_MAX_STEPS⌉`` (SlimGPT's batched greedy), so at
    most :data:`OBS_MAX_STEPS` steps: 614 removals of I = 1536 (SmolLM2-135M at 40 %) take 123 steps of 5, ≈ 1 s
    per layer; an 8B Llama's I = 14336 at 40 %: 128 · 2 · 14336² ≈ 5·10¹⁰ multiply-adds per layer.
    """
    width = w.shape[1]
    remove = width - keep
    if remove <= 0:
        return list(range(width))
    hinv = _ridged_inverse(acc, keep, ridge)
    w64 = w.detach().to(device=hinv.device, dtype=torch.float64).clone()
    alive = torch.ones(width, dtype=torch.bool, device=hinv.device)
    per_step = -(-remove // OBS_MAX_STEPS)
    while remove > 0:
        take = min(per_step, remove)
        cost = (w64 * w64).sum(0) / torch.diagonal(hinv).clamp_min(torch.finfo(torch.float64).tiny)
        cost[~alive] = float("inf")
        s = torch.topk(cost, take, largest=False).indices
        block = torch.linalg.inv(hinv[s.unsqueeze(1), s])  # [|S|, |S|]
        rows = hinv[s]  # [A⁻¹]_{S,:}
        w64 -= (w64[:, s] @ block) @ rows
        hinv -= hinv[:, s] @ block @ rows
        alive[s] = False
        remove -= take
    return torch.nonzero(alive).flatten().tolist()


def obs_head_scores(w: torch.Tensor, acc: GramAccumulator, num_heads: int, head_dim: int, keep_columns: int,
                    ridge: float | None) -> torch.Tensor:
    """Per query head, the OBS cost of removing its ``head_dim`` input columns of ``o_proj`` (``w [H, heads·d]``)
    alone from the dense weights: ``ε_h = tr(W_{:,C} ([A⁻¹]_CC)⁻¹ W_{:,C}ᵀ)`` (the group form of
    :func:`obs_select_columns`' cost, ZipLM eq. 4), one-shot — heads are few, and GQA-valid selection
    (:func:`prunelab.prune.width.select_heads`) keeps the heads of largest total cost."""
    hinv = _ridged_inverse(acc, keep_columns, ridge)
    w64 = w.detach().to(device=hinv.device, dtype=torch.float64)
    scores = []
    for h in range(num_heads):
        c = slice(h * head_dim, (h + 1) * head_dim)
        wc = w64[:, c]
        scores.append(float(torch.einsum("hi,ij,hj->", wc, torch.linalg.inv(hinv[c, c]), wc)))
    return torch.tensor(scores, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------
# bias storage (HF-native config switches)
# ----------------------------------------------------------------------------------------------------------
class TargetAccumulator:
    """Moments for the ``model`` target: ``Σ z_K z_Kᵀ``, ``Σ y z_Kᵀ``, ``Σ z_K``, ``Σ y``, ``Σ ‖y‖²`` and N, in float64."""

    def __init__(self, kept: int, out: int, where: str, device: torch.device) -> None:
        f64 = dict(dtype=torch.float64, device=device)
        self.szz, self.syz = torch.zeros(kept, kept, **f64), torch.zeros(out, kept, **f64)
        self.sz, self.sy = torch.zeros(kept, **f64), torch.zeros(out, **f64)
        self.syy, self.n, self.where = 0.0, 0, where

    def add(self, z: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        z, y = z.detach().reshape(-1, z.shape[-1]), y.detach().reshape(-1, y.shape[-1])
        if not (torch.isfinite(z).all() and torch.isfinite(y).all()):
            raise PrunelabError(f"calibration activations at {self.where} are not finite (NaN/inf): cannot repair")
        w = None if weight is None else weight.reshape(-1, 1).to(device=z.device, dtype=torch.float64)
        step = max(1, ROW_CHUNK_ELEMENTS // max(z.shape[1], y.shape[1]))
        for start in range(0, z.shape[0], step):
            zc, yc = z[start : start + step].to(torch.float64), y[start : start + step].to(torch.float64)
            zw, yw = (zc, yc) if w is None else (zc * w[start : start + step], yc * w[start : start + step])
            self.szz.addmm_(zw.T, zc)
            self.syz.addmm_(yw.T, zc)
            self.sz += zw.sum(0)
            self.sy += yw.sum(0)
            self.syy += float((yw * yc).sum())
        self.n += z.shape[0]


def solve_to_target(wk: torch.Tensor, b_cur: torch.Tensor | None, acc: TargetAccumulator, method: RepairMethod,
                    ridge: float | None) -> tuple[torch.Tensor, torch.Tensor | None, ProjectionRepair]:
    """``W' [H, |K|]`` and bias for the ``model`` target (module docstring); ``wk`` the pruned weight, ``b_cur`` its bias.

    Without a bias method the current bias stays and ``y − b_cur`` is regressed on ``z_K`` (no intercept); with one,
    the intercept is fitted (centred moments). Errors are ``(1/N) Σ ‖y − W z_K − b‖²`` relative to ``(1/N) Σ ‖y‖²``.
    """
    n = acc.n
    w64 = wk.detach().to(device=acc.szz.device, dtype=torch.float64)
    b64 = (torch.zeros(w64.shape[0], dtype=torch.float64, device=w64.device) if b_cur is None
           else b_cur.detach().to(w64))
    mz, my = acc.sz / n, acc.sy / n
    mzz, myz = acc.szz / n, acc.syz / n  # raw second moments

    def error(w: torch.Tensor, b: torch.Tensor) -> float:
        # E‖y − W z − b‖² = E‖y‖² − 2 tr(W M_YKᵀ) − 2 bᵀμ_Y + tr(W M_KK Wᵀ) + 2 bᵀ W μ_K + ‖b‖²
        return (acc.syy / n - 2 * float((w * myz).sum()) - 2 * float(b @ my) + float(torch.einsum("hi,ij,hj->", w, mzz, w))
                + 2 * float(b @ (w @ mz)) + float(b @ b))

    w_new, lam = w64, 0.0
    if method.ls:
        if method.bias:
            a, rhs = mzz - torch.outer(mz, mz), myz - torch.outer(my, mz)
        else:
            a, rhs = mzz.clone(), myz - torch.outer(b64, mz)
        lam = effective_ridge(ridge, int(w64.shape[1]), n) * float(torch.diagonal(a).mean())
        torch.diagonal(a).add_(lam)
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) != 0:
            raise PrunelabError(f"the calibration Gram matrix of {acc.where} is singular: use a ridge > 0 or more "
                                f"calibration tokens")
        w_new = torch.cholesky_solve((rhs + lam * w64).T, chol).T
    b_new = my - w_new @ mz if method.bias else b64
    if not (torch.isfinite(w_new).all() and torch.isfinite(b_new).all()):
        raise PrunelabError(f"the repair of {acc.where} is not finite (NaN/inf): use a larger ridge")
    scale = acc.syy / n or 1.0
    report = ProjectionRepair(layer=-1, projection="", width=int(w64.shape[1]), kept=int(w64.shape[1]),
                              error_before=max(error(w64, b64), 0.0) / scale,
                              error_after=max(error(w_new, b_new), 0.0) / scale, ridge_abs=lam)
    return w_new, (b_new if method.bias else None), report


def enable_biases(model: nn.Module, mlp: bool, attention: bool) -> None:
    """Switch on ``config.mlp_bias`` / ``config.attention_bias`` and rebuild every layer with zero new biases."""
    from prunelab.models.surgery import build_layer, layer_shapes

    adapter = adapter_for(model)
    layers = adapter.layers(model)
    needed = [name for name, on in (("down", mlp), ("o", attention)) if on]
    if all(adapter.module(layer, n).bias is not None for layer in layers for n in needed):
        return
    if mlp:
        model.config.__dict__["mlp_bias"] = True
    if attention:
        model.config.__dict__["attention_bias"] = True
    shapes = layer_shapes(model)
    for i, layer in enumerate(layers):
        new = build_layer(model, i, shapes[i], template=layer)
        missing, unexpected = new.load_state_dict(layer.state_dict(), strict=False)
        if unexpected or any(not k.endswith(".bias") for k in missing):
            raise AssertionError(f"bias rebuild of layer {i}: missing {missing}, unexpected {unexpected}")  # a bug
        with torch.no_grad():
            for key in missing:
                new.get_parameter(key).zero_()
        new.train(layer.training)
        layers[i] = new


# ----------------------------------------------------------------------------------------------------------
# calibration inputs of every layer
# ----------------------------------------------------------------------------------------------------------
class _KwargsRecorder(nn.Module):
    """Stands in for decoder block ``idx`` during :func:`capture_layer_inputs`: records the block's input and call
    keyword arguments and returns the input unchanged, so no block computes anything (every supported family's
    decoder loop is ``hidden_states = layer(hidden_states, **kw)``)."""

    def __init__(self, idx: int, seen: dict[int, tuple]) -> None:
        super().__init__()
        self.idx, self.seen = idx, seen

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args:  # a family passing more positionals would need them recorded too: refuse rather than drop them
            raise TypeError(f"decoder block {self.idx} called with {len(args)} extra positional arguments")
        self.seen[self.idx] = (hidden_states, kwargs)
        return hidden_states


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, calibration: torch.Tensor,
                         batch_size: int) -> tuple[list[torch.Tensor], list[list[dict]]]:
    """Block-0 input per batch and the exact keyword arguments the model passes each layer (rotary embeddings,
    per-layer-type masks). The blocks are swapped for :class:`_KwargsRecorder` stand-ins during the decoder's own
    forward, so the capture costs the embedding and mask construction only, not a forward through every block
    (SparseGPT's "Catcher" idea, extended to every block's kwargs)."""
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    device = next(model.parameters()).device
    current: dict[int, tuple] = {}
    originals = list(layers)
    states, kwargs = [], []
    try:
        for i in range(len(originals)):
            layers[i] = _KwargsRecorder(i, current)
        for start in range(0, calibration.shape[0], batch_size):
            current.clear()
            adapter.decoder(model)(input_ids=calibration[start : start + batch_size].to(device), use_cache=False)
            states.append(current[0][0])
            kwargs.append([current[i][1] for i in range(len(originals))])
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    for h in states:
        if not torch.isfinite(h).all():
            raise PrunelabError("calibration embeddings are not finite (NaN/inf): cannot repair")
    return states, kwargs


def _out(result) -> torch.Tensor:
    return result[0] if isinstance(result, tuple) else result


def _accumulate(acc: GramAccumulator, module: nn.Module, run: Callable[[int], torch.Tensor], batches: int,
                stream: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor], token_weights: str) -> None:
    """Run ``run(b)`` for every batch and add ``module``'s input ``z`` to ``acc``, each token weighted by
    :func:`stream_weights` of ``stream(b, module_output, run(b))``: the residual stream ``module``'s output is
    added to."""
    seen: dict[str, torch.Tensor] = {}

    def grab(mod, args, out):
        seen["z"], seen["out"] = args[0], out

    handle = module.register_forward_hook(grab)
    try:
        for b in range(batches):
            block_out = run(b)
            z, out = seen.pop("z"), seen.pop("out")
            acc.add(z, None if token_weights == "uniform" else stream_weights(stream(b, out, block_out), token_weights))
    finally:
        handle.remove()


@contextmanager
def _swapped(layer: nn.Module, path: str, stand_in: nn.Module):
    """``layer``'s submodule at ``path`` replaced by ``stand_in`` inside the block (restored after)."""
    parent_path, _, name = path.rpartition(".")
    parent = layer.get_submodule(parent_path) if parent_path else layer
    original = getattr(parent, name)
    setattr(parent, name, stand_in)
    try:
        yield
    finally:
        setattr(parent, name, original)


@contextmanager
def _recorded(module: nn.Module, outputs: list, keep: Callable[[tuple, object], object] = lambda args, out: out):
    """``keep(args, output)`` of every call of ``module`` appended to ``outputs`` while inside the block (by default
    the output itself)."""
    handle = module.register_forward_hook(lambda mod, args, out: outputs.append(keep(args, out)))
    try:
        yield
    finally:
        handle.remove()


class _Replay(nn.Module):
    """Returns the recorded outputs of a submodule one call at a time, in order (the calls must come in the order
    they were recorded: one per calibration batch)."""

    def __init__(self, outputs: list) -> None:
        super().__init__()
        self.outputs, self.calls = outputs, 0

    def forward(self, *args, **kwargs):
        out = self.outputs[self.calls]
        self.calls += 1
        return out


def _head_columns(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


# ----------------------------------------------------------------------------------------------------------
# the sequential repair
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def repair_width(
    model: nn.Module,
    calibration: torch.Tensor,
    plans: Sequence[LayerPlan],
    prepare: Callable[[int], nn.Module],
    method: str = "ls",
    ridge: float | None = DEFAULT_RIDGE,
    *,
    batch_size: int = 8,
    progress: bool = True,
    target: str = "layer",
    choose_heads: Callable[[int, torch.Tensor], list[int]] | None = None,
    token_weights: str = DEFAULT_TOKEN_WEIGHTS,
) -> RepairReport:
    """Prune-and-repair every layer in order (see module docstring); returns the per-projection errors.

    ``prepare(i)`` is called right before layer ``i`` is repaired: it must leave the model's layer ``i`` pruned as
    ``plans[i]`` says and return the *dense* layer ``i`` (the module before pruning), whose outputs are the targets.
    :func:`prunelab.prune.width.prune_width` passes a function doing the surgery there (one dense layer alive at a
    time); :func:`prunelab.prune.adaptive.adapt_prune` returns copies kept from before its progressive pruning.
    Call :func:`check_repair` first; with a bias method, :func:`enable_biases` is applied here. ``target``: ``layer``
    or ``model`` (module docstring). ``token_weights``: :data:`TOKEN_WEIGHTS` — with ``normalized`` each token's
    error is weighted by ``1/‖h‖²`` of the residual stream the projection's output is added to.

    Plans with ``select_neurons`` / ``select_heads`` (criterion ``obs``, ``target="layer"`` and an ``ls`` method
    only) leave that part of layer ``i`` dense in ``prepare(i)``; it is chosen here from the layer's Gram matrix,
    cut with :func:`prunelab.models.surgery.prune_mlp_neurons` / ``prune_attention_heads`` and re-fitted.
    ``choose_heads(i, scores)`` turns per-query-head OBS costs (:func:`obs_head_scores`) into a GQA-valid kept set.
    """
    start = time.perf_counter()
    m = REPAIRS.get(method)
    adapter = adapter_for(model)
    was_training = model.training
    model.eval()
    REPAIR_TARGETS.get(target)
    TOKEN_WEIGHTS.get(token_weights)
    if m.bias:
        enable_biases(model, mlp=any(p.neurons is not None for p in plans), attention=any(p.heads is not None for p in plans))
    states, kwargs = capture_layer_inputs(model, calibration, batch_size)
    device = states[0].device
    # the dense model's stream (``model`` / ``layer+attn`` targets); block 0's input is the same embedding for both
    dense_states = [h.clone() for h in states] if target != "layer" and m.active else None
    own = target != "model"  # the pruned projections re-fit to the dense layer (the ``layer`` target's fit)
    report = RepairReport(method=method, ridge=None if ridge is None else float(ridge), tokens=int(calibration.numel()), seconds=0.0,
                          target=target)
    mlp_path = adapter.proj_names["down"].rsplit(".", 1)[0]
    attn_path = adapter.proj_names["o"].rsplit(".", 1)[0]
    from rich.progress import Progress

    n = len(plans)
    try:
        with Progress(transient=True, disable=not progress) as prog:
            task = prog.add_task(f"repair ({method})", total=n)
            for i in range(n):
                plan = plans[i]
                attention_out: list = []
                dense = prepare(i)
                layer = adapter.layers(model)[i]
                dense_next = None
                if target == "model" and m.active:
                    dense_next = _repair_to_model(adapter, dense, layer, states, dense_states, kwargs, i, plan, m,
                                                  ridge, report, token_weights)
                elif target == "layer+attn" and m.active:
                    dense_next = _refit_attention_to_model(adapter, dense, layer, states, dense_states, kwargs, i,
                                                           plan, m, ridge, report, token_weights)
                elif m.active and (plan.heads is not None or plan.select_heads is not None):
                    lay = adapter.head_layout(dense)
                    acc = GramAccumulator(lay.num_heads * lay.head_dim, f"layer {i} o_proj", device)
                    # o_proj's output lands in the stream h + attention: its magnitude weights the tokens
                    _accumulate(acc, adapter.module(dense, "o"), lambda b: dense(states[b], **kwargs[b][i]),
                                len(states), lambda b, out, _: states[b] + out, token_weights)
                    heads = plan.heads
                    if heads is None:  # chosen here (criterion obs), then cut
                        if choose_heads is None:
                            raise ValueError("repair_width: a plan selects heads but no choose_heads was given")  # a bug
                        scores = obs_head_scores(adapter.module(dense, "o").weight, acc, lay.num_heads, lay.head_dim,
                                                 plan.select_heads * lay.head_dim, ridge)
                        heads = sorted(choose_heads(i, scores))
                        report.kept_heads[i] = heads
                        if len(heads) < lay.num_heads:
                            prune_attention_heads(model, i, heads)
                        layer = adapter.layers(model)[i]
                    _apply(adapter.module(dense, "o"), adapter.module(layer, "o"), acc,
                           _head_columns(heads, lay.head_dim), m, ridge, report, i, "o")
                if own and m.active and plan.select_neurons is not None:
                    # criterion obs: the layer's MLP is still dense here; its own Gram chooses the kept neurons
                    acc = GramAccumulator(adapter.mlp_width(layer), f"layer {i} down_proj", device)
                    _accumulate(acc, adapter.module(layer, "down"), lambda b: _out(layer(states[b], **kwargs[b][i])),
                                len(states), lambda b, out, block_out: block_out, token_weights)
                    down = adapter.module(layer, "down")
                    neurons = obs_select_columns(down.weight, acc, plan.select_neurons, ridge)
                    report.kept_neurons[i] = neurons
                    if len(neurons) < down.weight.shape[1]:
                        # the cut builds a new layer: ``down`` keeps the dense weights, the target of the re-fit
                        prune_mlp_neurons(model, i, neurons)
                        layer = adapter.layers(model)[i]
                        _apply(down, adapter.module(layer, "down"), acc, torch.as_tensor(neurons), m, ridge,
                               report, i, "down")
                elif own and m.active and plan.neurons is not None:
                    acc = GramAccumulator(adapter.mlp_width(dense), f"layer {i} down_proj", device)
                    dense_mlp = dense.get_submodule(mlp_path)
                    # the dense MLP runs on the input the pruned (and attention-repaired) layer really gives its MLP;
                    # the attention outputs are kept, so the pass after the fit replays them instead of re-running
                    def run_dense_mlp(mod, args, dense_mlp=dense_mlp):
                        dense_mlp(args[0])  # its down_proj hook (in _accumulate) sees the full intermediate

                    own_mlp = layer.get_submodule(mlp_path)
                    outer = (own_mlp.register_forward_pre_hook(run_dense_mlp) if own_mlp is not dense_mlp
                             else None)  # the same module (nothing removed): its own down_proj hook suffices
                    try:
                        with _recorded(layer.get_submodule(attn_path), attention_out):
                            _accumulate(acc, adapter.module(dense, "down"),
                                        lambda b: _out(layer(states[b], **kwargs[b][i])), len(states),
                                        lambda b, out, block_out: block_out, token_weights)
                    finally:
                        if outer is not None:
                            outer.remove()
                    _apply(adapter.module(dense, "down"), adapter.module(layer, "down"), acc,
                           torch.as_tensor(plan.neurons, dtype=torch.long), m, ridge, report, i, "down")
                del dense
                # the attention is unchanged by the MLP's fit: replay its recorded outputs instead of re-running it
                with _swapped(layer, attn_path, _Replay(attention_out)) if attention_out else nullcontext():
                    states = [_out(layer(h, **kwargs[b][i])) for b, h in enumerate(states)]
                if dense_next is not None:
                    dense_states = dense_next
                if not all(torch.isfinite(h).all() for h in states):
                    raise PrunelabError(f"hidden states after layer {i} are not finite (NaN/inf): cannot repair")
                done = [p for p in report.projections if p.layer == i]
                note = ", ".join(f"{p.projection} err {p.error_before:.3g}→{p.error_after:.3g}" for p in done)
                prog.update(task, advance=1, description=f"repair ({method}) layer {i}/{n} {note}")
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    return report


def _repair_to_model(adapter, dense: nn.Module, layer: nn.Module, states: list[torch.Tensor],
                     dense_states: list[torch.Tensor], kwargs: list[list[dict]], i: int, plan: LayerPlan,
                     m: RepairMethod, ridge: float | None, report: RepairReport,
                     token_weights: str = DEFAULT_TOKEN_WEIGHTS) -> list[torch.Tensor]:
    """Re-fit layer ``i``'s pruned ``o_proj`` then ``down_proj`` toward the dense model's stream; returns the dense
    stream after layer ``i``. The residual stream a projection's output ``y`` is added to is recovered as
    ``(stream after the sub-block) − y`` (no post-norm: :func:`check_repair`)."""
    o_dense: list[torch.Tensor] = []  # the dense attention outputs: the o_proj target, kept only when heads are pruned
    handle = (adapter.module(dense, "o").register_forward_hook(lambda mod, args, out: o_dense.append(out))
              if plan.heads is not None else None)
    try:
        dense_next = [_out(dense(d, **kwargs[b][i])) for b, d in enumerate(dense_states)]
    finally:
        if handle is not None:
            handle.remove()
    hidden = states[0].shape[-1]
    for name, pruned in (("o", plan.heads is not None), ("down", plan.neurons is not None)):
        if not pruned:
            continue
        lin = adapter.module(layer, name)
        acc = TargetAccumulator(lin.weight.shape[1], hidden, f"layer {i} {name}_proj", states[0].device)
        seen: dict[str, torch.Tensor] = {}

        def grab(mod, args, out, seen=seen):
            seen["z"], seen["y"] = args[0], out

        hook = lin.register_forward_hook(grab)
        try:
            for b, h in enumerate(states):
                out = _out(layer(h, **kwargs[b][i]))
                if name == "o":  # the attention residual: the layer's input; its dense target: D_in + dense attention
                    stream = dense_states[b] + o_dense[b]
                    goal = stream - h
                else:  # the MLP residual: the stream after attention = layer output − MLP output
                    stream = dense_next[b]
                    goal = stream - (out - seen["y"])
                acc.add(seen["z"], goal.reshape(-1, hidden), stream_weights(stream, token_weights))
        finally:
            hook.remove()
        w_new, bias, rec = solve_to_target(lin.weight, lin.bias, acc, m, ridge)
        rec.layer, rec.projection = i, name
        report.projections.append(rec)
        lin.weight.copy_(w_new.to(lin.weight.dtype))
        if bias is not None:
            lin.bias.copy_(bias.to(lin.bias.dtype))
    return dense_next


def _refit_attention_to_model(adapter, dense: nn.Module, layer: nn.Module, states: list[torch.Tensor],
                              dense_states: list[torch.Tensor], kwargs: list[list[dict]], i: int, plan: LayerPlan,
                              m: RepairMethod, ridge: float | None, report: RepairReport,
                              token_weights: str = DEFAULT_TOKEN_WEIGHTS) -> list[torch.Tensor]:
    """``layer+attn`` (module docstring): re-fit layer ``i``'s ``o_proj`` (pruned or not) toward the dense model's
    stream after the attention, in place; returns the dense stream after layer ``i``. Skipped while the repaired
    stream still equals the dense one and no head is pruned (nothing to correct; the identity with nothing pruned)."""
    o_dense: list[torch.Tensor] = []
    with _recorded(adapter.module(dense, "o"), o_dense):
        dense_next = [_out(dense(d, **kwargs[b][i])) for b, d in enumerate(dense_states)]
    heads_pruned = plan.heads is not None
    # an unpruned o_proj has no bias to fit unless the model already has one (the bias methods enable biases only
    # where something is pruned): its re-fit is ``ls``, or nothing for ``bias`` alone
    fit = m if heads_pruned else (REPAIRS.get("ls") if m.ls else None)
    drifted = not all(torch.equal(h, d) for h, d in zip(states, dense_states))
    if fit is None or not (heads_pruned or drifted):
        return dense_next
    lin = adapter.module(layer, "o")
    hidden = states[0].shape[-1]
    acc = TargetAccumulator(lin.weight.shape[1], hidden, f"layer {i} o_proj", states[0].device)
    for b, h in enumerate(states):
        stream = dense_states[b] + o_dense[b]  # the dense stream after the attention
        acc.add(_input_of(layer, lin, h, kwargs[b][i]), (stream - h).reshape(-1, hidden),
                stream_weights(stream, token_weights))
    w_new, bias, rec = solve_to_target(lin.weight, lin.bias, acc, fit, ridge)
    rec.layer, rec.projection = i, "o"
    report.projections.append(rec)
    lin.weight.copy_(w_new.to(lin.weight.dtype))
    if bias is not None:
        lin.bias.copy_(bias.to(lin.bias.dtype))
    return dense_next


class _Reached(Exception):
    """Raised by :func:`_input_of`'s hook to stop a block's forward once the wanted input has been seen."""


def _input_of(layer: nn.Module, module: nn.Module, h: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The first positional input of ``module`` (a submodule of ``layer``) when ``layer`` runs on ``h``; the forward
    stops right there, so the rest of the block (for ``o_proj``: the projection itself and the MLP, ¾ of a Llama
    block's matmul work) is not computed for nothing."""
    seen: list[torch.Tensor] = []

    def stop(mod, args):
        seen.append(args[0])
        raise _Reached

    handle = module.register_forward_pre_hook(stop)
    try:
        layer(h, **kwargs)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"{type(module).__name__} was not called by the block's forward")
    return seen[0]


def _apply(dense_lin: nn.Linear, pruned_lin: nn.Linear, acc: GramAccumulator, keep: torch.Tensor,
           m: RepairMethod, ridge: float | None, report: RepairReport, layer: int, name: str) -> None:
    w_new, bias, rec = solve_repair(dense_lin.weight, dense_lin.bias, acc, keep, m, ridge)
    rec.layer, rec.projection = layer, name
    report.projections.append(rec)
    pruned_lin.weight.copy_(w_new.to(pruned_lin.weight.dtype))
    if bias is not None:
        pruned_lin.bias.copy_(bias.to(pruned_lin.bias.dtype))
