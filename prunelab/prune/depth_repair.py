"""Compensation after depth pruning, folded into the remaining weights (no new module; plain ``from_pretrained``).

Removed blocks form contiguous runs ``a … b``. Notation on the calibration tokens (row vectors): ``D`` the *dense*
model's hidden state leaving the run (input of block ``b+1``, or of the final norm); ``P`` the pruned model's stream.

``linear`` — ReplaceMe (Shopkhoev et al., 2025, "ReplaceMe: network simplification via layer pruning and linear
transformations", eq. 3–4 with the least-squares solution). Let block ``i = a−1`` be the last kept block before the
run. Its output is ``h_mid + m`` with ``h_mid = h + attn(·)`` the attention residual stream and ``m = MLP(·)`` its MLP
output. A matrix ``T ∈ R^{H×H}`` is fitted so that ``h_mid + m T ≈ D``::

    T = argmin  (1/N) Σ ‖h_mid + m T − D‖²  +  λ ‖T − I‖²_F
      = (MᵀM/N + λI)⁻¹ (Mᵀ(D − H_mid)/N + λI)            (normal equations; ridge toward I = plain removal)

with ``λ = ridge · mean(diag MᵀM/N)`` (default ``ridge=None``: ``2·H/N``, the width repair's auto rule). Merge: the MLP output is ``m = z W_downᵀ + bᵀ`` (``z`` the GLU
intermediate), so ``m T = z (Tᵀ W_down)ᵀ + (Tᵀ b)ᵀ`` — replacing ``W_down ← Tᵀ W_down`` (and ``b ← Tᵀ b``) is exact,
adds no parameter and keeps the block's class. Runs are handled in order on the *compensated* stream (the fit of a
later run sees the earlier runs' maps), with the dense ``D`` as the target. Refused: a run starting at block 0 (no
kept block before it), and families whose MLP output passes a norm before the residual add (Gemma2's
``post_feedforward_layernorm``: ``norm(m) T`` cannot be written as a weight of that block).

``scale`` — magnitude compensation in the spirit of Prune&Comp (Chen et al., 2025, "Prune&Comp: Free Lunch for
Layer-Pruned LLMs via Iterative Pruning with Magnitude Compensation"): removing blocks shrinks the residual stream, so
the next kept block sees an input of the wrong magnitude relative to what the later blocks add. A scalar
``α = sqrt(Σ‖D‖² / Σ‖P‖²)`` restores it: the stream ``α P`` is wanted. Every block input goes through an RMSNorm,
which is scale-invariant (up to its ε), and so is the final norm; hence running with the stream multiplied by ``α``
equals running unscaled with *every later block's residual contributions divided by α* — ``o_proj`` and
``down_proj`` weights (and biases) × 1/α (Gemma2, whose contributions pass post-norms ``(1 + w)``: those norms'
``1 + w`` × 1/α instead). That folded form is what is saved. Several runs compound (the later ``α`` is measured on the
already compensated stream). A run at the very end has no later block, so ``scale`` leaves it as plain removal.

``refit`` — every kept block from the first removed run on re-fits its ``down_proj`` (ridge least squares) so that
the stream it leaves matches the dense model's stream at the same point: for kept block ``i`` with input ``P`` the
target is ``D`` after block ``i`` — after block ``b`` when a run ``a … b`` follows ``i`` (the anchor, as for
``linear``). With ``z`` the block's GLU intermediate and ``h_mid`` its attention residual stream::

    W' = argmin  (1/N) Σ w_t ‖h_mid + W' z + b − D‖²  +  λ ‖W' − W‖²_F
       = (M_YZ + λ W)(M_ZZ + λ I)⁻¹,        Y = D − h_mid − b                  (:func:`solve_to_target`)

the dense-model target of the width repair (:mod:`prunelab.prune.repair`, "model"; the error-correcting update of
ZipLM / "Fast and Optimal Weight Update for Pruned LLMs") applied to depth pruning. At the anchor it contains
``linear`` (``W' = Tᵀ W`` is one feasible point, so its calibration error is never above ``linear``'s), and the
later blocks also absorb the drift the removal leaves in the stream, instead of a single ``H × H`` map carrying it
all. Blocks before the first run see the dense stream and are left as they are. λ as for the width repair
(``2·I/N`` relative to the mean diagonal by default); weights ``w_t`` as above. Refused for post-norm families
(Gemma2), as ``linear``. It needs ≥ the MLP width of calibration tokens only with ``ridge=0``.

``refit+attn`` — ``refit``, and before each kept block's ``down_proj`` fit its attention output projection ``o_proj``
is re-fitted the same way, toward the dense model's attention residual stream of the *same* block: with ``a`` the
input of ``o_proj`` on the compensated stream ``P`` and ``D_mid`` the dense stream after block ``i``'s attention::

    W_o' = argmin  (1/N) Σ w_t ‖P + W_o' a + b_o − D_mid‖²  +  λ ‖W_o' − W_o‖²_F           (:func:`solve_to_target`)

so the drift is corrected twice per block (after attention and after the MLP; the per-sublayer correction of ZipLM),
and the ``down_proj`` fit then sees the intermediates of the corrected attention. Blocks up to the first run's anchor
see the dense stream, where ``W_o`` is already the solution, and are left alone. Cost over ``refit``: one more pass of
each re-fitted block and one ``H × H`` solve per block (H the ``o_proj`` input width).

Cost: one pass of the dense model and one of the pruned model over the calibration set, plus one ``H × H`` solve per
run for ``linear``; ``refit`` adds an ``I × I`` float64 Gram matrix and one ``I × I`` Cholesky per kept block after
the first run (as the width repair: ``N · I²`` multiply-adds), and keeps the anchor's intermediates ``[N, I]`` until
its run ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for
from prunelab.models.surgery import remove_layers
from prunelab.prune.repair import (DEFAULT_RIDGE, DEFAULT_TOKEN_WEIGHTS, REPAIRS, TOKEN_WEIGHTS, ProjectionRepair,
                                   TargetAccumulator, _input_of, _out, _recorded, capture_layer_inputs,
                                   effective_ridge, has_post_norms, solve_to_target, stream_weights)
from prunelab.registry import Registry

COMPENSATIONS: Registry[str] = Registry("depth compensation")
#: the compensations that re-fit kept projections toward the dense stream (module docstring)
REFITS = ("refit", "refit+attn")
for _name in ("none", "linear", "scale", *REFITS):
    COMPENSATIONS.register(_name, _name)


@dataclass
class RunCompensation:
    """One run of removed blocks ``first … last`` and its compensation (relative errors ``Σ‖P − D‖² / Σ‖D‖²``)."""

    first: int
    last: int
    anchor: int | None
    error_before: float
    error_after: float
    alpha: float | None = None


@dataclass
class CompensationReport:
    method: str
    ridge: float | None
    removed: list[int]
    tokens: int
    seconds: float
    runs: list[RunCompensation] = field(default_factory=list)
    #: ``linear``: the fitted ``T`` per anchor block (dense numbering), already merged into its ``down_proj``
    transforms: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    #: ``refit`` / ``refit+attn``: every re-fitted ``down_proj`` (and ``o_proj``) in fitting order (dense numbering;
    #: errors relative, token-weighted as fitted)
    refits: list[ProjectionRepair] = field(default_factory=list)


def removed_runs(removed: Iterable[int]) -> list[tuple[int, int]]:
    """Contiguous runs ``(first, last)`` of sorted block indices."""
    runs: list[list[int]] = []
    for i in sorted(set(int(r) for r in removed)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [(a, b) for a, b in runs]


def check_family(model: nn.Module, method: str) -> None:
    """The part of :func:`check_compensation` that needs no removed set (run before a search)."""
    COMPENSATIONS.get(method)
    if method in ("linear", *REFITS) and has_post_norms(adapter_for(model).layers(model)[0]):
        raise PrunelabError(f"--compensate {method} cannot merge into {adapter_for(model).family}: its MLP output "
                            f"passes post_feedforward_layernorm before the residual add (use --compensate scale)")


def check_compensation(model: nn.Module, removed: Iterable[int], method: str, ridge: float | None,
                       calibration: torch.Tensor | None = None) -> str:
    """Validate a compensation request before any work (one clear line per refusal)."""
    COMPENSATIONS.get(method)
    if method == "none":
        return method
    if ridge is not None and (not isinstance(ridge, (int, float)) or isinstance(ridge, bool) or not ridge >= 0
                              or ridge == float("inf")):
        raise PrunelabError(f"ridge must be a finite number ≥ 0, got {ridge!r}")
    runs = removed_runs(removed)
    check_family(model, method)
    if method == "linear" and runs and runs[0][0] == 0:
        raise PrunelabError(f"--compensate linear cannot compensate removed blocks {runs[0][0]}–{runs[0][1]}: the "
                            f"run starts at block 0, so no kept block precedes it (use --compensate scale)")
    if calibration is None:
        raise PrunelabError(f"--compensate {method} needs calibration tokens")
    hidden = model.config.hidden_size
    if method == "linear" and calibration.numel() < hidden:
        raise PrunelabError(f"--compensate linear needs at least {hidden} calibration tokens (the hidden size), got "
                            f"{calibration.numel()} ({calibration.shape[0]}×{calibration.shape[1]})")
    if method in REFITS and ridge == 0:
        width = max(adapter_for(model).mlp_width(layer) for layer in adapter_for(model).layers(model))
        if calibration.numel() < width:
            raise PrunelabError(f"--compensate {method} with --ridge 0 needs at least {width} calibration tokens (the MLP "
                                f"width), got {calibration.numel()}: use the default ridge or more tokens")
    return method


def _scale_contributions(adapter, layer: nn.Module, factor: float) -> None:
    """Divide a block's residual contributions by ``factor`` (see module docstring)."""
    if has_post_norms(layer):  # Gemma2: h + post_norm(attn) + post_norm(mlp), post norms multiply by (1 + w)
        for norm in (layer.post_attention_layernorm, layer.post_feedforward_layernorm):
            norm.weight.copy_((1.0 + norm.weight.double()) / factor - 1.0)
        return
    for name in ("o", "down"):
        lin = adapter.module(layer, name)
        lin.weight.div_(factor)
        if lin.bias is not None:
            lin.bias.div_(factor)


def _rel(diff_sq: float, ref_sq: float) -> float:
    return diff_sq / ref_sq if ref_sq > 0 else 0.0


def compensate_and_remove(model: nn.Module, removed: Iterable[int], calibration: torch.Tensor, method: str = "linear",
                          ridge: float | None = DEFAULT_RIDGE, *, batch_size: int = 8,
                          progress: bool = True, token_weights: str = DEFAULT_TOKEN_WEIGHTS) -> CompensationReport:
    """Fit the compensation of ``method`` for removing ``removed`` (see module docstring), fold it into the kept
    weights and remove the blocks, in place. ``method="none"`` is plain :func:`remove_layers`."""
    start = time.perf_counter()
    report = fold_compensation(model, removed, calibration, method, ridge, batch_size=batch_size, progress=progress,
                               token_weights=token_weights)
    remove_layers(model, report.removed)
    report.seconds = time.perf_counter() - start
    return report


@torch.no_grad()
def fold_compensation(model: nn.Module, removed: Iterable[int], calibration: torch.Tensor, method: str = "linear",
                      ridge: float | None = DEFAULT_RIDGE, *, batch_size: int = 8,
                      progress: bool = True, token_weights: str = DEFAULT_TOKEN_WEIGHTS) -> CompensationReport:
    """:func:`compensate_and_remove` without the removal: the kept blocks' weights are compensated in place, the
    blocks ``removed`` are still there (the compensated model is run with them skipped). ``token_weights``
    (:data:`prunelab.prune.repair.TOKEN_WEIGHTS`): ``uniform`` or ``normalized`` (module docstring)."""
    TOKEN_WEIGHTS.get(token_weights)
    start = time.perf_counter()
    removed = sorted(set(int(r) for r in removed))
    adapter = adapter_for(model)
    layers = list(adapter.layers(model))
    n = len(layers)
    if any(i < 0 or i >= n for i in removed):
        raise PrunelabError(f"block index out of range [0, {n})")
    check_compensation(model, removed, method, ridge, calibration)
    report = CompensationReport(method=method, ridge=None if ridge is None else float(ridge), removed=removed,
                                tokens=0 if calibration is None else int(calibration.numel()), seconds=0.0)
    if method == "none":
        report.seconds = time.perf_counter() - start
        return report
    was_training = model.training
    model.eval()
    runs = removed_runs(removed)
    run_end = {b: (a, b) for a, b in runs}
    anchors = {a - 1: (a, b) for a, b in runs if a > 0}
    drop = set(removed)
    mlp_path = adapter.proj_names["down"].rsplit(".", 1)[0]
    states, kwargs = capture_layer_inputs(model, calibration, batch_size)
    dense = list(states)
    pruned = list(states)
    pending: dict | None = None  # linear: the anchor block's (h_mid, m) per batch, until the run's end
    scale = 1.0  # scale: the emulated stream is scale · pruned
    from rich.progress import Progress

    try:
        with Progress(transient=True, disable=not progress) as prog:
            task = prog.add_task(f"compensate ({method})", total=n)
            for i in range(n):
                layer = layers[i]
                # the dense pass first: block i's weights are still the dense ones (every fit below changes block i
                # or earlier ones only after this pass), and refit+attn needs the dense attention stream of block i
                attn_out: list[torch.Tensor] = []
                with _recorded(adapter.module(layer, "o"), attn_out) if method == "refit+attn" else nullcontext():
                    dense_next = [_out(layer(h, **kwargs[b][i])) for b, h in enumerate(dense)]
                if method == "scale" and scale != 1.0 and i not in drop:
                    # block i's contributions are already divided by `scale` (folded at an earlier run's end); the
                    # dense model's are not: D + f(D) = D + scale · (block(D) − D), exactly (f is linear in the
                    # folded factor, for post-norm families too)
                    dense_next = [h + scale * (o - h) for h, o in zip(dense, dense_next)]
                if i not in drop:
                    if method in REFITS and removed and i >= removed[0] - 1:  # the first anchor on
                        if method == "refit+attn" and i > removed[0]:  # its input is no longer the dense stream
                            _fit_attention(adapter, layer, pruned, kwargs, i,
                                           [h + o for h, o in zip(dense, attn_out)], ridge, token_weights, report)
                        pending = _refit_inputs(adapter, layer, pruned, kwargs, i)
                        pruned = None  # until the fit: the block's output depends on its new down_proj
                    elif method == "linear" and i in anchors:
                        mlp_out: list[torch.Tensor] = []
                        with _recorded(layer.get_submodule(mlp_path), mlp_out):
                            outs = [_out(layer(h, **kwargs[b][i])) for b, h in enumerate(pruned)]
                        pending = {"anchor": i, "m": mlp_out, "mid": [o - m for o, m in zip(outs, mlp_out)]}
                        pruned = outs
                    else:
                        pruned = [_out(layer(h, **kwargs[b][i])) for b, h in enumerate(pruned)]
                dense = dense_next
                if method in REFITS and pending is not None and (i in run_end or i + 1 not in drop):
                    # the dense target of the pending block is ready: after its own index, or after the run it anchors
                    if i in run_end:  # an anchor: record the stream error at the run's end, as linear does
                        a, b = run_end[i]
                        ref = sum(float(d.double().pow(2).sum()) for d in dense)
                        before = sum(float((o - d).double().pow(2).sum()) for o, d in zip(pending["out"], dense))
                    pruned = _fit_refit(adapter, layers, pending, dense, ridge, token_weights, report)
                    if i in run_end:
                        after = sum(float((p - d).double().pow(2).sum()) for p, d in zip(pruned, dense))
                        report.runs.append(RunCompensation(first=a, last=b, anchor=pending["block"],
                                                           error_before=_rel(before, ref), error_after=_rel(after, ref)))
                    pending = None
                if not all(torch.isfinite(h).all() for h in dense + (pruned or [])):
                    raise PrunelabError(f"hidden states after block {i} are not finite (NaN/inf): cannot compensate")
                if i in run_end and method not in REFITS:
                    a, b = run_end[i]
                    ref = sum(float(d.double().pow(2).sum()) for d in dense)
                    if method == "linear":
                        report.runs.append(_fit_linear(adapter, layers, pending, dense, ridge, report, a, b, ref,
                                                       token_weights))
                        anchor = pending["anchor"]
                        t = report.transforms[anchor].to(pruned[0].dtype)
                        pruned = [mid + m @ t for mid, m in zip(pending["mid"], pending["m"])]
                        pending = None
                    else:
                        before = sum(float((scale * p - d).double().pow(2).sum()) for p, d in zip(pruned, dense))
                        # α² = Σ w‖D‖² / Σ w‖sP‖² — with normalized weights w = 1/‖D‖²: N / Σ ‖sP‖²/‖D‖²
                        wts = [stream_weights(d, token_weights) for d in dense]
                        num = sum(float((w * d.double().pow(2).sum(-1)).sum()) for w, d in zip(wts, dense))
                        den = sum(float((w * (scale * p).double().pow(2).sum(-1)).sum()) for w, p in zip(wts, pruned))
                        alpha = (num / den) ** 0.5 if den > 0 else 1.0
                        later = [j for j in range(b + 1, n) if j not in drop]
                        if later:
                            scale *= alpha
                            for j in later:
                                _scale_contributions(adapter, layers[j], alpha)
                        else:
                            alpha = 1.0  # the final norm is scale-invariant: nothing to fold into
                        after = sum(float((scale * p - d).double().pow(2).sum()) for p, d in zip(pruned, dense))
                        report.runs.append(RunCompensation(first=a, last=b, anchor=None, alpha=alpha,
                                                           error_before=_rel(before, ref), error_after=_rel(after, ref)))
                prog.advance(task)
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    return report


def _refit_inputs(adapter, layer: nn.Module, pruned: list[torch.Tensor], kwargs: list[list[dict]], i: int) -> dict:
    """Run kept block ``i`` on the pruned stream and keep what its ``down_proj`` fit needs: the intermediate ``z`` and
    ``base = output − down_proj(z)`` (the attention residual stream plus the bias) per batch, and the output itself
    (the stream before the fit)."""
    down = adapter.module(layer, "down")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    with _recorded(down, seen, keep=lambda args, out: (args[0], out)):
        outs = [_out(layer(h, **kwargs[b][i])) for b, h in enumerate(pruned)]
    base = [o - y + (0 if down.bias is None else down.bias) for o, (_, y) in zip(outs, seen)]
    return {"block": i, "z": [z for z, _ in seen], "base": base, "out": outs}


def _fit_attention(adapter, layer: nn.Module, pruned: list[torch.Tensor], kwargs: list[list[dict]], i: int,
                   dense_mid: list[torch.Tensor], ridge: float | None, token_weights: str,
                   report: CompensationReport) -> None:
    """Re-fit block ``i``'s ``o_proj`` so that the compensated stream after its attention matches the dense one
    (module docstring, ``refit+attn``), in place; the fit is recorded in ``report.refits``."""
    o = adapter.module(layer, "o")
    seen = [_input_of(layer, o, h, kwargs[b][i]) for b, h in enumerate(pruned)]
    # o_proj's wanted output, its bias included: D_mid − P
    _fit_projection(o, seen, [d - h for h, d in zip(pruned, dense_mid)], dense_mid, i, "o", ridge, token_weights,
                    report)


def _fit_projection(lin: nn.Linear, inputs: list[torch.Tensor], wanted: list[torch.Tensor],
                    streams: list[torch.Tensor], i: int, name: str, ridge: float | None, token_weights: str,
                    report: CompensationReport) -> None:
    """Ridge least-squares re-fit of ``lin`` (block ``i``'s ``name`` projection) in place so that its output on
    ``inputs`` matches ``wanted`` (bias included; the bias stays, :func:`solve_to_target` regresses ``y − b``), each
    token weighted by :func:`stream_weights` of the dense stream it lands in; the fit is recorded in
    ``report.refits``."""
    out = wanted[0].shape[-1]
    acc = TargetAccumulator(lin.weight.shape[1], out, f"block {i} {name}_proj", wanted[0].device)
    for z, y, d in zip(inputs, wanted, streams):
        acc.add(z, y.reshape(-1, out), stream_weights(d, token_weights))
    w_new, _, rec = solve_to_target(lin.weight, lin.bias, acc, REPAIRS.get("ls"), ridge)
    rec.layer, rec.projection = i, name
    report.refits.append(rec)
    lin.weight.copy_(w_new.to(lin.weight.dtype))


def _fit_refit(adapter, layers, pending: dict, dense: list[torch.Tensor], ridge: float | None, token_weights: str,
               report: CompensationReport) -> list[torch.Tensor]:
    """Re-fit the pending block's ``down_proj`` toward ``dense`` (module docstring, ``refit``), record the fit in
    ``report.refits`` and return the pruned stream leaving the block with the new weights."""
    i = pending["block"]
    down = adapter.module(layers[i], "down")
    bias = 0 if down.bias is None else down.bias.detach()
    # the projection's wanted output, its bias included: D − h_mid (= D − base + b)
    _fit_projection(down, pending["z"], [d - base + bias for base, d in zip(pending["base"], dense)], dense, i,
                    "down", ridge, token_weights, report)
    return [base + z @ down.weight.T for z, base in zip(pending["z"], pending["base"])]


def _fit_linear(adapter, layers, pending: dict, dense: list[torch.Tensor], ridge: float | None,
                report: CompensationReport, a: int, b: int, ref: float,
                token_weights: str = DEFAULT_TOKEN_WEIGHTS) -> RunCompensation:
    """Solve the (token-weighted) ridge system for ``T`` and merge it into the anchor's ``down_proj`` (module
    docstring). Errors in the report stay unweighted."""
    anchor = pending["anchor"]
    hidden = dense[0].shape[-1]
    mm = torch.zeros(hidden, hidden, dtype=torch.float64)
    md = torch.zeros(hidden, hidden, dtype=torch.float64)
    count = 0
    before = 0.0
    wsum = 0.0
    for m, mid, d in zip(pending["m"], pending["mid"], dense):
        m64 = m.reshape(-1, hidden).double().cpu()
        r64 = (d - mid).reshape(-1, hidden).double().cpu()
        w = stream_weights(d, token_weights).reshape(-1, 1).cpu()
        mm.addmm_((m64 * w).T, m64)
        md.addmm_((m64 * w).T, r64)
        before += float((m64 - r64).pow(2).sum())
        count += m64.shape[0]
        wsum += float(w.sum())
    mm /= wsum
    md /= wsum
    lam = effective_ridge(ridge, hidden, count) * float(torch.diagonal(mm).mean())
    eye = torch.eye(hidden, dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(mm + lam * eye)
    if int(info) != 0:
        raise PrunelabError(f"the MLP-output Gram matrix of block {anchor} is singular: use a ridge > 0")
    t = torch.cholesky_solve(md + lam * eye, chol)
    if not torch.isfinite(t).all():
        raise PrunelabError(f"the linear map for blocks {a}–{b} is not finite: use a larger ridge")
    after = sum(float((m.reshape(-1, hidden).double().cpu() @ t - (d - mid).reshape(-1, hidden).double().cpu())
                      .pow(2).sum()) for m, mid, d in zip(pending["m"], pending["mid"], dense))
    down = adapter.module(layers[anchor], "down")
    tt = t.T.to(down.weight.device)
    down.weight.copy_((tt @ down.weight.double()).to(down.weight.dtype))
    if down.bias is not None:
        down.bias.copy_((tt @ down.bias.double()).to(down.bias.dtype))
    report.transforms[anchor] = t.to(torch.float32)
    return RunCompensation(first=a, last=b, anchor=anchor, error_before=_rel(before, ref), error_after=_rel(after, ref))


# ----------------------------------------------------------------------------------------------------------
# search with compensation applied to every candidate
# ----------------------------------------------------------------------------------------------------------
#: searches that only compare candidates by value (others model the objective and would need a finite one everywhere)
COMPENSATED_SEARCHES = ("one-shot", "greedy", "beam")


class CompensatedEvaluator:
    """``ev(S)``: the objective of the model with blocks ``S`` removed *and compensated* by ``method``.

    For :func:`prunelab.prune.depth.search_blocks` ``(..., compensate=...)``. Each new candidate snapshots the weights
    the compensation touches, folds the compensation (:func:`fold_compensation`: one dense and one pruned pass over
    the calibration tokens), evaluates the objective with ``S`` skipped (one more pass) and restores the weights —
    about 2.5× the block passes of an uncached evaluation and none of :class:`BlockEvaluator`'s prefix caching, so a
    greedy search costs ~ ``k·n`` such evaluations. Sets ``linear`` cannot compensate (a run starting at block 0)
    score ``+inf``, so the search never picks one.
    """

    def __init__(self, model: nn.Module, objective, calibration: torch.Tensor, method: str, ridge: float | None,
                 batch_size: int = 8, on_evaluate=None, token_weights: str = DEFAULT_TOKEN_WEIGHTS) -> None:
        self.model = model
        self.token_weights = token_weights
        self.objective = objective
        self.calibration = calibration
        self.method = method
        self.ridge = ridge
        self.batch_size = batch_size
        self.on_evaluate = on_evaluate
        self.adapter = adapter_for(model)
        self.n_blocks = len(self.adapter.layers(model))
        self.memo: dict[frozenset[int], float] = {}
        self.notes: dict[str, object] = {"compensate": method}
        self.requests = self.blocks_run = self.cache_hits = self.screened = 0

    @property
    def candidates(self) -> int:
        return len(self.memo)

    def _touched(self) -> list[torch.Tensor]:
        out = []
        for layer in self.adapter.layers(self.model):
            mods = ([layer.post_attention_layernorm, layer.post_feedforward_layernorm] if has_post_norms(layer)
                    else [self.adapter.module(layer, "o"), self.adapter.module(layer, "down")])
            for mod in mods:
                out += [p for p in (mod.weight, getattr(mod, "bias", None)) if p is not None]
        return out

    @torch.no_grad()
    def __call__(self, removed: Iterable[int]) -> float:
        from prunelab.prune.block_evaluator import blocks_removed

        s = frozenset(int(i) for i in removed)
        self.requests += 1
        if s in self.memo:
            self.cache_hits += 1
            return self.memo[s]
        if self.method == "linear" and 0 in s:
            value = float("inf")
        else:
            params = self._touched()
            saved = [p.detach().clone() for p in params]
            try:
                fold_compensation(self.model, sorted(s), self.calibration, self.method, self.ridge,
                                  batch_size=self.batch_size, progress=False, token_weights=self.token_weights)
                dec = self.adapter.decoder(self.model)
                with blocks_removed(self.model, s):
                    normed = [dec(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
                              .last_hidden_state for b in self.objective.batches]
                value = float(self.objective.reduce(self.model, normed))
            finally:
                for p, v in zip(params, saved):
                    p.copy_(v)
            self.blocks_run += 3 * self.n_blocks - 2 * len(s)
        self.memo[s] = value
        if self.on_evaluate:
            self.on_evaluate(len(self.memo))
        return value
