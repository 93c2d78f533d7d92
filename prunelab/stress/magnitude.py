"""Unstructured L1-magnitude pruning of the linear layers inside the decoder blocks (the stress tests' injury).

Two ways to say how much to prune, both applied **per linear layer** (every layer gets exactly the amount):

* ``fraction`` of the *remaining* nonzero weights (acute relapse): ``k = round(fraction · nnz)`` more zeros;
* cumulative ``sparsity`` of the *original* weight count (chronic cycles): the layer ends with
  ``round(sparsity · numel)`` zeros, i.e. ``k = max(0, round(sparsity · numel) − zeros_now)``.

The ``k`` smallest-|w| nonzero weights are zeroed with :func:`torch.nn.utils.prune.l1_unstructured` (a
``topk`` over importance ``|w|``, which picks exactly ``k`` entries even when magnitudes tie); weights that are
already zero get importance ``+inf`` so they are never "pruned again" and the count stays exact. Only the
``nn.Linear`` modules of the decoder blocks (``FamilyAdapter.linear_modules``) are touched: embeddings, the
final norm and ``lm_head`` keep every weight. Masks (``True`` = kept) are returned so callers can re-apply
them after training (:func:`apply_masks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.errors import PrunelabError

__all__ = [
    "LayerSparsity", "MagnitudeResult", "apply_masks", "cumulative_schedule", "decoder_linears",
    "magnitude_prune", "measure_sparsity", "summarize",
]


@dataclass
class LayerSparsity:
    """Sparsity of one linear layer. ``pruned_fraction = (zeros_after − zeros_before) / (numel − zeros_before)``
    (share of the weights that were nonzero and are now zero); ``sparsity = zeros_after / numel``."""

    name: str
    numel: int
    zeros_before: int
    zeros_after: int
    sparsity: float = field(init=False)
    pruned_fraction: float = field(init=False)

    def __post_init__(self) -> None:
        remaining = self.numel - self.zeros_before
        self.sparsity = self.zeros_after / self.numel
        self.pruned_fraction = (self.zeros_after - self.zeros_before) / remaining if remaining else 0.0


@dataclass
class MagnitudeResult:
    """Per-layer sparsity plus the keep-masks (``True`` = weight kept) by full module name."""

    layers: list[LayerSparsity]
    masks: dict[str, torch.Tensor] = field(repr=False)


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every distinct ``nn.Linear`` inside the decoder blocks, by its full module name in ``model``.

    Embeddings and ``lm_head`` are outside the blocks and never listed. Fused Phi3 projections appear once.
    """
    from prunelab.models.adapters import adapter_for

    adapter = adapter_for(model)
    names = {id(m): n for n, m in model.named_modules()}
    found: dict[str, nn.Linear] = {}
    for layer in adapter.layers(model):
        for mod in adapter.linear_modules(layer).values():
            if not isinstance(mod, nn.Linear):
                raise PrunelabError(
                    f"{names.get(id(mod), type(mod).__name__)} is a {type(mod).__name__}, not a plain linear layer; "
                    "merge any adapter before magnitude pruning"
                )
            found[names[id(mod)]] = mod
    if not found:
        raise PrunelabError("the model has no linear layers in its decoder blocks to prune")
    return found


def _zeros(w: torch.Tensor) -> int:
    return int((w == 0).sum().item())


def _check_fraction(value: float, what: str, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise PrunelabError(f"{what} must be a number in (0, 1), got {value!r}") from None
    lo_ok = value >= 0 if allow_zero else value > 0
    if not (lo_ok and value < 1):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise PrunelabError(f"{what} must be in {bound}, got {value:g}")
    return value


@torch.no_grad()
def magnitude_prune(model: nn.Module, fraction: float | None = None, sparsity: float | None = None) -> MagnitudeResult:
    """Zero the smallest-|w| weights of every decoder linear layer, in place; give exactly one of:

    * ``fraction`` ∈ (0, 1): prune ``round(fraction · nnz)`` of each layer's remaining nonzero weights;
    * ``sparsity`` ∈ [0, 1): bring each layer to ``round(sparsity · numel)`` zeros (of the original count);
      a layer already at or above that many zeros is left as it is.
    """
    from torch.nn.utils import prune

    if (fraction is None) == (sparsity is None):
        raise PrunelabError("give exactly one of fraction (of remaining weights) or sparsity (of original weights)")
    if fraction is not None:
        fraction = _check_fraction(fraction, "pruning fraction")
    else:
        sparsity = _check_fraction(sparsity, "target sparsity", allow_zero=True)
    linears = decoder_linears(model)
    layers: list[LayerSparsity] = []
    masks: dict[str, torch.Tensor] = {}
    for name, lin in linears.items():
        w = lin.weight
        numel = w.numel()
        before = _zeros(w)
        if fraction is not None:
            k = round(fraction * (numel - before))
        else:
            k = max(0, round(sparsity * numel) - before)
        if k > 0:
            # Already-zero weights rank last (inf) so topk selects exactly k currently nonzero weights.
            scores = w.detach().abs().float().masked_fill(w == 0, float("inf"))
            prune.l1_unstructured(lin, "weight", amount=int(k), importance_scores=scores)
            prune.remove(lin, "weight")  # make it permanent: a plain Parameter again, no hooks left behind
        mask = lin.weight != 0
        after = numel - int(mask.sum().item())
        if after != before + k:  # would mean NaNs or a library change; never report a wrong count silently
            raise PrunelabError(f"{name}: expected {before + k} zeros after pruning, found {after}")
        masks[name] = mask
        layers.append(LayerSparsity(name=name, numel=numel, zeros_before=before, zeros_after=after))
    return MagnitudeResult(layers=layers, masks=masks)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Re-zero pruned weights in place: ``W ← W ⊙ mask`` for every masked module (e.g. after a LoRA merge)."""
    for name, mask in masks.items():
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise PrunelabError(f"cannot re-apply the pruning mask: the model has no module '{name}'") from None
        if lin.weight.shape != mask.shape:
            raise PrunelabError(
                f"cannot re-apply the pruning mask to {name}: weight {tuple(lin.weight.shape)} vs mask {tuple(mask.shape)}"
            )
        lin.weight.mul_(mask.to(device=lin.weight.device, dtype=lin.weight.dtype))


def measure_sparsity(model: nn.Module) -> list[LayerSparsity]:
    """Current zeros of every decoder linear layer (``zeros_before == zeros_after``: a snapshot)."""
    out = []
    for name, lin in decoder_linears(model).items():
        z = _zeros(lin.weight)
        out.append(LayerSparsity(name=name, numel=lin.weight.numel(), zeros_before=z, zeros_after=z))
    return out


@dataclass
class SparsitySummary:
    """Whole-model and per-layer extremes of a list of :class:`LayerSparsity` (fractions, 0–1)."""

    overall: float  # Σ zeros / Σ numel
    min_layer: float
    max_layer: float
    min_pruned_fraction: float
    max_pruned_fraction: float


def summarize(layers: list[LayerSparsity]) -> SparsitySummary:
    total = sum(l.numel for l in layers)
    return SparsitySummary(
        overall=sum(l.zeros_after for l in layers) / total,
        min_layer=min(l.sparsity for l in layers),
        max_layer=max(l.sparsity for l in layers),
        min_pruned_fraction=min(l.pruned_fraction for l in layers),
        max_pruned_fraction=max(l.pruned_fraction for l in layers),
    )


def cumulative_schedule(cycles: int, step: float) -> list[float]:
    """Target sparsity after each chronic cycle: ``s_c = c · step`` of the original weights, c = 1..cycles.

    Raises before any work if ``cycles ≤ 0``, ``step ∉ (0, 1)``, or the last cycle would reach 100%.
    """
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles <= 0:
        raise PrunelabError(f"cycles must be a positive integer, got {cycles!r}")
    step = _check_fraction(step, "pruning step")
    final = cycles * step
    # A tiny tolerance so 10 × 0.1 (= 0.9999999999999999 in floats) is recognised as 100%.
    if final >= 1 - 1e-9:
        raise PrunelabError(
            f"{cycles} cycles × step {step:g} reaches {final:.0%} cumulative sparsity; it must stay below 100% "
            f"(at most {int((1 - 1e-9) / step)} cycles at this step)"
        )
    return [c * step for c in range(1, cycles + 1)]
