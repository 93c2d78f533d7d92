"""Adapt-Pruner: layer-adaptive, progressive structured width pruning (Adapt-Pruner, Alg. 1 / eqs. 6 and 10).

For t = 1 … T (``steps``):

1. run the calibration batch; layer importance ``I_i = −mean_tokens cos(h_in_i, h_out_i)`` (a block that changes
   its input more matters more);
2. normalise ``I ← I − mean(I)``, ``I ← I / max|I|`` (so I ∈ [−1, 1], mean 0; all-equal importances give I = 0);
3. ``S_cur = S·t/T`` and per-layer sparsity ``S_i = clip(S_cur − A·I_i, 0, 0.95)``;
4. inside each layer remove the lowest first-order-Taylor groups (``Σ|∂L/∂W ⊙ W|``, gradients from the same pass)
   — GLU neurons and attention heads together, GQA-valid — until the block has at most ``(1 − S_i)`` of its
   *original* parameters.

Step 4 is solved exactly for the additive-score model: for every GQA-valid head layout (m kept KV groups of p
query heads; only the current layout with ``prune_heads=False``) the best heads are kept
(:func:`prunelab.prune.width.best_heads_for`), the remaining parameter budget is filled with the top-scoring
neurons, and the layout removing the least total score wins. A layer already at or below its target is left
alone (pruning never regrows). With ``A = 0`` every layer gets the same target, i.e. uniform pruning.

Exact budget (MLP only, ``prune_heads=False``): rounding each layer down on its own makes the total depend on the
fractional parts of the per-layer targets, so two calibration sets give models of different size even at the same
ratio. In the last step the per-layer neuron counts are therefore apportioned to a fixed total — the sum of the
counts the *uniform* target ``S`` would give each layer (rounded down per layer, so with ``A = 0`` nothing changes)
— by largest remainder (Hamilton's method): each layer gets ``⌊k_i⌋``, and the difference to the total is given to
(or taken from) the layers with the largest (smallest) fractional parts, never above a layer's current width. The
total no longer depends on the calibration; a layer may end up to one neuron above its own target.

``criterion`` swaps the within-layer score of step 4 for any data-driven criterion of
:data:`prunelab.prune.criteria.CRITERIA` (e.g. ``maw_hybrid``); only Taylor scores are in loss units, so heads can
be traded against neurons only with ``taylor`` (others need ``prune_heads=False``).

``ratio`` here is the sparsity of the decoder blocks' parameters (attention + MLP), not the MLP neuron ratio of
:func:`prunelab.prune.width.prune_width`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for
from prunelab.models.counts import count_parameters
from prunelab.models.surgery import prune_attention_heads, prune_mlp_neurons, sync_config
from prunelab.prune.calibration_stats import collect_statistics
from prunelab.prune.criteria import CRITERIA, LayerScores, check_criterion_use, scored_data_criteria
from prunelab.prune.repair import DEFAULT_RIDGE, DEFAULT_TOKEN_WEIGHTS, REPAIRS, TOKEN_WEIGHTS, LayerPlan, RepairReport, check_repair, repair_width
from prunelab.prune.width import best_heads_for, resolve_calibration, select_neurons

MAX_LAYER_SPARSITY = 0.95
#: criteria whose head, KV-group and neuron scores share one unit (estimated loss change), so they can be summed
LOSS_SCALED_CRITERIA = frozenset({"taylor"})


@dataclass
class AdaptiveReport:
    """Result of :func:`adapt_prune` (the model is pruned in place)."""

    ratio: float
    amplitude: float
    steps: int
    params_before: int
    params_after: int
    non_embedding_before: int
    non_embedding_after: int
    block_params_before: list[int]
    block_params_after: list[int]
    #: achieved per-block sparsity ``1 − after/before``
    layer_sparsity: list[float]
    #: the last step's targets ``S_i``
    target_sparsity: list[float]
    #: normalised importances ``I_i`` of every step (``[steps][layers]``)
    importance: list[list[float]]
    widths_after: list[int]
    heads_after: list[int]
    kv_heads_after: list[int]
    seconds: float
    calibration_shape: list[int] = field(default_factory=list)
    #: the within-layer group criterion (``taylor`` in the paper)
    criterion: str = "taylor"
    #: reconstruction repair applied after the last step (:mod:`prunelab.prune.repair`), None for ``repair="none"``
    repair: RepairReport | None = None

    @property
    def sparsity(self) -> float:
        """Achieved sparsity of all decoder-block parameters."""
        return 1.0 - sum(self.block_params_after) / sum(self.block_params_before)

    def table(self) -> list[dict]:
        """Per-layer profile rows (layer, importance, target, achieved sparsity, width, heads, kv heads)."""
        last = self.importance[-1] if self.importance else [0.0] * len(self.layer_sparsity)
        return [
            {"layer": i, "importance": last[i], "target": self.target_sparsity[i], "sparsity": self.layer_sparsity[i],
             "mlp_width": self.widths_after[i], "heads": self.heads_after[i], "kv_heads": self.kv_heads_after[i]}
            for i in range(len(self.layer_sparsity))
        ]


def normalise_importance(raw: list[float]) -> list[float]:
    """``I ← I − mean(I)``, ``I ← I / max|I|`` (zeros when every layer is equally important)."""
    x = torch.tensor(raw, dtype=torch.float64)
    x = x - x.mean()
    peak = float(x.abs().max()) if x.numel() else 0.0
    return (x / peak).tolist() if peak > 1e-12 else [0.0] * len(raw)


def layer_targets(importance: list[float], s_cur: float, amplitude: float) -> list[float]:
    """``S_i = clip(S_cur − A·I_i, 0, 0.95)``."""
    return [min(max(s_cur - amplitude * i, 0.0), MAX_LAYER_SPARSITY) for i in importance]


def apportion(real: list[float], total: int, caps: list[int], low: int = 0) -> list[int]:
    """Integers ``low ≤ k_i ≤ caps[i]`` summing to ``total`` (when feasible), each ``⌊real_i⌋`` or one off it unless
    a bound moves it: largest-remainder apportionment (module docstring, "Exact budget"); ties go to the lower
    index."""
    k = [min(max(int(r // 1), low), c) for r, c in zip(real, caps)]
    order = sorted(range(len(real)), key=lambda i: (-(real[i] - real[i] // 1), i))  # largest remainder first
    while (short := total - sum(k)) != 0:
        # one step toward the total for each of the first |short| layers that can still move that way
        movable = ([i for i in order if k[i] < caps[i]] if short > 0 else [i for i in reversed(order) if k[i] > low])
        if not movable:
            break
        for i in movable[:abs(short)]:
            k[i] += 1 if short > 0 else -1
    return k


def _block_params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def group_costs(model: nn.Module, layer: nn.Module) -> tuple[int, int, int]:
    """Parameters removed with one GLU neuron, one query head, one (emptied) KV group of ``layer``."""
    adapter = adapter_for(model)
    gate, up, down = adapter.mlp_weights(layer)
    neuron = gate.shape[1] + up.shape[1] + down.shape[0]
    if adapter.fused_gate_up:
        neuron += 2 if adapter.module(layer, "gate").bias is not None else 0
    else:
        neuron += sum(adapter.module(layer, n).bias is not None for n in ("gate", "up"))
    lay = adapter.head_layout(layer)
    hidden = gate.shape[1]
    q_bias = adapter.module(layer, "q").bias is not None
    head = 2 * lay.head_dim * hidden + (lay.head_dim if q_bias else 0)
    kv = 2 * lay.head_dim * hidden + (2 * lay.head_dim if q_bias else 0)
    return neuron, head, kv


def prune_layer_to(model: nn.Module, idx: int, scores: LayerScores, target_params: float,
                   prune_heads: bool = True) -> tuple[list[int] | None, list[int] | None]:
    """Remove the lowest-score groups of layer ``idx`` until it has ≤ ``target_params`` (see module docstring).

    Returns the kept neuron and head indices in the layer's numbering before this call (None: not pruned)."""
    adapter = adapter_for(model)
    layer = adapter.layers(model)[idx]
    current = _block_params(layer)
    if current <= target_params:
        return None, None
    lay = adapter.head_layout(layer)
    width = adapter.mlp_width(layer)
    neuron_cost, head_cost, kv_cost = group_costs(model, layer)
    fixed = current - width * neuron_cost - lay.num_heads * head_cost - lay.num_kv_heads * kv_cost
    top = torch.sort(scores.mlp.double(), descending=True).values
    kept_sum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(top, 0)])  # kept_sum[k] = top-k total
    layouts = ([(m, p) for m in range(1, lay.num_kv_heads + 1) for p in range(1, lay.group_size + 1)]
               if prune_heads else [(lay.num_kv_heads, lay.group_size)])
    best = None
    for m, p in layouts:
        heads, head_score = best_heads_for(lay, scores.heads, scores.kv, m, p)
        attn = m * p * head_cost + m * kv_cost
        k = int((target_params - fixed - attn) // neuron_cost)
        k = min(max(k, 1), width)
        params = fixed + attn + k * neuron_cost
        kept = head_score + float(kept_sum[k])
        # feasible layouts first, then the most kept score; if none is feasible, the smallest one
        key = (params <= target_params, kept if params <= target_params else -params)
        if best is None or key > best[0]:
            best = (key, heads, k)
    _, heads, k = best
    kept_neurons = kept_heads = None
    if k < width:
        kept_neurons = select_neurons(scores.mlp, k)
        prune_mlp_neurons(model, idx, kept_neurons)
    if len(heads) < lay.num_heads:
        kept_heads = list(heads)
        prune_attention_heads(model, idx, heads)
    return kept_neurons, kept_heads


def _exact_mlp_budgets(model: nn.Module, orig: list[int], targets: list[float], ratio: float) -> list[float]:
    """Per-layer parameter budgets of the last MLP-only step whose neuron counts sum to the calibration-independent
    total (module docstring, "Exact budget")."""
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    widths = [adapter.mlp_width(layer) for layer in layers]
    costs = [group_costs(model, layer)[0] for layer in layers]
    fixed = [_block_params(layer) - w * c for layer, w, c in zip(layers, widths, costs)]
    real = [((1.0 - s) * o - f) / c for s, o, f, c in zip(targets, orig, fixed, costs)]
    total = sum(max(int(((1.0 - ratio) * o - f) // c), 1) for o, f, c in zip(orig, fixed, costs))
    kept = apportion(real, total, widths, low=1)  # prune_layer_to keeps ≥ 1 neuron per layer
    return [f + k * c for f, k, c in zip(fixed, kept, costs)]


def adapt_prune(
    model: nn.Module,
    tokenizer=None,
    ratio: float = 0.4,
    amplitude: float = 0.02,
    steps: int = 10,
    calibration: torch.Tensor | None = None,
    seed: int = 0,
    *,
    criterion: str = "taylor",
    prune_heads: bool = True,
    calibration_samples: int = 128,
    calibration_seq_len: int = 128,
    calibration_source: str = "lambada",
    batch_size: int = 8,
    progress: bool = True,
    repair: str = "none",
    ridge: float | None = DEFAULT_RIDGE,
    repair_target: str = "layer",
    token_weights: str = DEFAULT_TOKEN_WEIGHTS,
) -> AdaptiveReport:
    """Adapt-Pruner in place: ``ratio`` = target sparsity of the decoder-block parameters (see module docstring).

    ``repair`` (``none``, ``bias``, ``ls``, ``ls+bias``) re-fits the kept weights against the *original* dense layers
    after the last step (:func:`prunelab.prune.repair.repair_width`); it keeps a copy of the dense decoder layers
    meanwhile (one extra copy of the block weights in memory)."""
    start = time.perf_counter()
    if not 0.0 < ratio < MAX_LAYER_SPARSITY:
        raise PrunelabError(f"adaptive ratio (block-parameter sparsity) must be in (0, {MAX_LAYER_SPARSITY}), got {ratio}")
    if not amplitude >= 0:
        raise PrunelabError(f"amplitude must be ≥ 0, got {amplitude}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PrunelabError(f"steps must be a positive integer, got {steps!r}")
    calibration = resolve_calibration(tokenizer, calibration, calibration_samples, calibration_seq_len,
                                      calibration_source, seed)
    fix = REPAIRS.get(repair)
    # the kept widths are not known yet: the width check is repeated with them after pruning (nothing saved yet)
    check_repair(model, repair, ridge, calibration, True, prune_heads, target=repair_target)
    TOKEN_WEIGHTS.get(token_weights)
    adapter = adapter_for(model)
    before = count_parameters(model)
    orig = [_block_params(layer) for layer in adapter.layers(model)]
    score = CRITERIA.get(criterion)
    if not score.needs_data:
        raise PrunelabError(f"Adapt-Pruner scores groups on calibration data; {criterion!r} is a static criterion "
                            f"(use one of: {', '.join(scored_data_criteria())})")
    check_criterion_use(criterion, adaptive=True)
    if prune_heads and criterion not in LOSS_SCALED_CRITERIA:
        # the layout search adds head and neuron scores; only loss-unit scores (Taylor) can be added that way
        raise PrunelabError(f"{criterion!r} scores heads and neurons on different scales, so Adapt-Pruner cannot trade "
                            f"one against the other: use --mlp-only (prune_heads=False) or the taylor criterion")
    history: list[list[float]] = []
    targets: list[float] = [0.0] * len(orig)
    dense_layers = [copy.deepcopy(layer) for layer in adapter.layers(model)] if fix.active else []
    # kept neurons / heads of every layer in the dense numbering (surgery keeps the surviving order)
    kept_n = [list(range(adapter.mlp_width(layer))) for layer in adapter.layers(model)]
    kept_h = [list(range(adapter.head_layout(layer).num_heads)) for layer in adapter.layers(model)]
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as prog:
        task = prog.add_task("adaptive pruning", total=steps)
        for t in range(1, steps + 1):
            stats = collect_statistics(model, calibration, gradients="gradients" in score.needs,
                                       activations="activations" in score.needs, layer_similarity=True,
                                       batch_size=batch_size, progress=False)
            importance = normalise_importance([-c for c in stats.layer_cos])
            history.append(importance)
            targets = layer_targets(importance, ratio * t / steps, amplitude)
            scores = score(model, stats, seed, prune_heads)
            del stats
            # the last MLP-only step: the uniform target computed exactly as the loop's (ratio·t/T), so A = 0 rounds
            # identically
            budgets = (_exact_mlp_budgets(model, orig, targets, ratio * t / steps) if t == steps and not prune_heads
                       else [(1.0 - s_i) * o for s_i, o in zip(targets, orig)])
            for i, budget in enumerate(budgets):
                local_n, local_h = prune_layer_to(model, i, scores[i], budget, prune_heads)
                if local_n is not None:
                    kept_n[i] = [kept_n[i][j] for j in local_n]
                if local_h is not None:
                    kept_h[i] = [kept_h[i][j] for j in local_h]
            prog.advance(task)
    repair_report = None
    if fix.active:
        plans = [LayerPlan(kept_n[i] if len(kept_n[i]) < adapter.mlp_width(d) else None,
                           kept_h[i] if len(kept_h[i]) < adapter.head_layout(d).num_heads else None)
                 for i, d in enumerate(dense_layers)]
        head_dims = [adapter.head_layout(d).head_dim for d in dense_layers]
        check_repair(model, repair, ridge, calibration, any(p.neurons is not None for p in plans),
                     any(p.heads is not None for p in plans),
                     max([len(p.neurons) for p in plans if p.neurons is not None]
                         + [len(p.heads) * hd for p, hd in zip(plans, head_dims) if p.heads is not None], default=0),
                     target=repair_target)
        repair_report = repair_width(model, calibration, plans, dense_layers.__getitem__, repair, ridge,
                                     batch_size=batch_size, progress=progress, target=repair_target,
                                     token_weights=token_weights)
        del dense_layers
    sync_config(model)
    after = count_parameters(model)
    layers = adapter.layers(model)
    now = [_block_params(layer) for layer in layers]
    layouts = [adapter.head_layout(layer) for layer in layers]
    return AdaptiveReport(
        ratio=ratio, amplitude=amplitude, steps=steps, params_before=before.total, params_after=after.total,
        non_embedding_before=before.non_embedding, non_embedding_after=after.non_embedding,
        block_params_before=orig, block_params_after=now,
        layer_sparsity=[1.0 - n / o for n, o in zip(now, orig)], target_sparsity=targets, importance=history,
        widths_after=[adapter.mlp_width(layer) for layer in layers],
        heads_after=[lay.num_heads for lay in layouts], kv_heads_after=[lay.num_kv_heads for lay in layouts],
        seconds=time.perf_counter() - start, calibration_shape=list(calibration.shape), criterion=criterion,
        repair=repair_report,
    )


def plot_sparsity_profile(report: AdaptiveReport, path: str | Path, title: str | None = None) -> Path:
    """Bar chart of the achieved per-layer sparsity (with the targets and the overall ratio), PNG, atomic."""
    from matplotlib.ticker import MaxNLocator

    from prunelab.atomic import atomic_file
    from prunelab.plotting import pyplot

    plt = pyplot()

    n = len(report.layer_sparsity)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * n + 2), 3.6))
    ax.bar(range(n), [100 * s for s in report.layer_sparsity], color="#4477aa", label="achieved")
    ax.plot(range(n), [100 * s for s in report.target_sparsity], "k_", markersize=10, label="target $S_i$")
    ax.axhline(100 * report.ratio, color="#cc6677", linestyle="--", linewidth=1, label=f"S = {100 * report.ratio:.0f}%")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("parameters removed (%)")
    ax.set_title(title or f"Adapt-Pruner sparsity profile (A = {report.amplitude:g}, T = {report.steps})")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


@dataclass
class AblationRow:
    amplitude: float
    params: int
    non_embedding: int
    sparsity: float
    perplexity: float
    seconds: float
    #: perplexity on held-out calibration-source text (never the evaluation text): the metric to choose A by
    heldout_perplexity: float | None = None


@dataclass
class AblationReport:
    """Amplitude ablation (Adapt-Pruner's A ∈ {0, 0.005, 0.01, 0.02, 0.04}): params and perplexity per A."""

    ratio: float
    steps: int
    params_before: int
    perplexity_before: float
    ppl_windows: int
    ppl_seq_len: int
    rows: list[AblationRow]
    reports: list[AdaptiveReport] = field(default_factory=list, repr=False)
    heldout_tokens: int = 0
    #: with ``keep_best=True``: the pruned model of :attr:`selected` (others are freed as the ablation runs)
    best_model: nn.Module | None = field(default=None, repr=False)

    @property
    def selected(self) -> AblationRow | None:
        """The amplitude with the lowest held-out perplexity (chosen without looking at the evaluation text)."""
        scored = [r for r in self.rows if r.heldout_perplexity is not None]
        return min(scored, key=lambda r: r.heldout_perplexity) if scored else None


def amplitude_ablation(
    model: nn.Module,
    tokenizer,
    ratio: float = 0.4,
    amplitudes: list[float] | tuple[float, ...] = (0.0, 0.005, 0.01, 0.02, 0.04),
    steps: int = 10,
    calibration: torch.Tensor | None = None,
    seed: int = 0,
    *,
    text: str | None = None,
    heldout: torch.Tensor | None = None,
    heldout_samples: int = 32,
    ppl_windows: int = 8,
    ppl_seq_len: int = 512,
    progress: bool = True,
    keep_best: bool = False,
    **kwargs,
) -> AblationReport:
    """Run :func:`adapt_prune` on a fresh copy of ``model`` for every amplitude; WikiText-2 perplexity (first
    ``ppl_windows`` windows of ``ppl_seq_len``, or ``text``) of each, and the perplexity of ``heldout`` calibration
    text, by which :attr:`AblationReport.selected` picks A. When the calibration batch is drawn here (``calibration``
    is None) the next ``heldout_samples`` sequences of the same shuffled source are held out (disjoint from the
    calibration tokens). ``model`` itself is not modified; ``keep_best`` keeps the selected amplitude's pruned
    model in :attr:`AblationReport.best_model` (needs held-out text)."""
    from prunelab.evaluate.perplexity import perplexity, perplexity_of_ids

    if not amplitudes:
        raise PrunelabError("give at least one amplitude")
    for a in amplitudes:
        if not a >= 0:
            raise PrunelabError(f"amplitude must be ≥ 0, got {a}")
    if text is None:
        from prunelab.data import load_wikitext2_text

        text = load_wikitext2_text()
    n_cal = kwargs.pop("calibration_samples", 128)
    if calibration is None and heldout is None and heldout_samples > 0:
        both = resolve_calibration(tokenizer, None, n_cal + heldout_samples, kwargs.pop("calibration_seq_len", 128),
                                   kwargs.pop("calibration_source", "lambada"), seed)
        calibration, heldout = both[:n_cal], both[n_cal:]
    else:
        calibration = resolve_calibration(tokenizer, calibration, n_cal, kwargs.pop("calibration_seq_len", 128),
                                          kwargs.pop("calibration_source", "lambada"), seed)
    if keep_best and heldout is None:
        raise PrunelabError("choosing an amplitude needs held-out text: give heldout_samples > 0 or a heldout batch")

    def heldout_ppl(m: nn.Module) -> float | None:
        if heldout is None:
            return None
        return perplexity_of_ids(m, heldout.reshape(-1), seq_len=heldout.shape[-1]).perplexity

    base_ppl = perplexity(model, tokenizer, text, seq_len=ppl_seq_len, max_windows=ppl_windows).perplexity
    rows, reports = [], []
    best: tuple[float, nn.Module] | None = None
    for a in amplitudes:
        work = copy.deepcopy(model)
        rep = adapt_prune(work, tokenizer, ratio=ratio, amplitude=a, steps=steps, calibration=calibration,
                          seed=seed, progress=progress, **kwargs)
        ppl = perplexity(work, tokenizer, text, seq_len=ppl_seq_len, max_windows=ppl_windows).perplexity
        held = heldout_ppl(work)
        rows.append(AblationRow(amplitude=a, params=rep.params_after, non_embedding=rep.non_embedding_after,
                                sparsity=rep.sparsity, perplexity=ppl, seconds=rep.seconds, heldout_perplexity=held))
        reports.append(rep)
        if keep_best and (best is None or held < best[0]):  # first of equal values wins, as in ``selected``
            best = (held, work)
        del work
    report = AblationReport(ratio=ratio, steps=steps, params_before=count_parameters(model).total,
                            perplexity_before=base_ppl, ppl_windows=ppl_windows, ppl_seq_len=ppl_seq_len,
                            rows=rows, reports=reports, heldout_tokens=0 if heldout is None else heldout.numel(),
                            best_model=None if best is None else best[1])
    return report
