"""Width pruning of SmolLM2-135M: prunelab vs OptiPFair (MAW, hybrid MAW) vs torch-pruning (Taylor), one run.

    .venv/bin/pip install --no-deps optipfair==0.4.2 torch-pruning==1.6.1   # benchmark-only peers
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/width_vs_peers.py [--quick] [--repairs all]

For each MLP sparsity (20%, 40% of the GLU neurons of every layer) every method starts from the same dense model
and, where it uses data, the same calibration batch (LAMBADA calibration pool, disjoint from evaluated text):

* prunelab ``maw`` vs OptiPFair static MAW (overlap of the kept neurons per layer is printed),
* prunelab ``maw_hybrid`` vs OptiPFair data-driven ("hybrid") MAW (same batches, same batch size),
* prunelab ``taylor`` vs torch-pruning ``GroupTaylorImportance`` + ``BasePruner`` (MLP channels only; the
  gradients are accumulated over the same batches),
* prunelab Adapt-Pruner (``adapt_prune``) at the *same number of parameters* as the uniform models (its block
  sparsity is set to the uniform models' block sparsity), for every amplitude of ``--amplitudes`` (the paper's
  0.02, and the value the held-out amplitude ablation selects, see README), heads + MLP and (with
  ``--adaptive-mlp-only`` / ``--adaptive-scope``) MLP only, with every within-layer criterion of ``--adaptive-criteria``.
* with ``--repairs all`` (or a list of none, bias, ls, ls+bias, each optionally ``@model`` for the dense-model
  target of :mod:`prunelab.prune.repair`, e.g. ``ls@model``; issue 19): every prunelab cell of ``--criteria``
  (maw_hybrid, taylor, adaptive, and obs — Optimal Brain Surgeon choosing inside the ls repairs, compared with
  maw_hybrid's unrepaired cell) with each repair — same kept groups, same calibration batch, so the gain of the
  repair alone is visible. A repair table then gives per cell: WikiText-2 perplexity and its ratio to the same cell
  without repair (paired bootstrap CI over windows), ARC-Easy accuracy (Wilson CI) and its paired difference to the
  unrepaired cell (bootstrap CI, McNemar p), the pruning wall time and the repair's share of it, and the forward
  latency ([4 × 128] tokens; all cells of a sparsity timed interleaved, ``--latency-reps`` rotated rounds, median)
  with its ratio to the unrepaired cell. With
  ``--repairs`` the defaults become the issue's protocol: WikiText-2 over the *whole* test file (every 512-token
  window, ``--ppl-windows all``; 590 windows with SmolLM2's tokenizer) and 500 ARC-Easy items.

Peers: OptiPFair and torch-pruning are optional. ``--peers auto`` (default) runs their rows only if both import and
otherwise prints one line and runs the prunelab cells alone (no best-peer table); ``--peers no`` skips them (also
the static-maw row, which only exists to compare with OptiPFair); ``--peers yes`` fails if either is missing.

Full repair table without peers (≈ 5 h on an idle 2-core CPU: 25 evaluations of ≈ 11 min each — 590 WikiText-2
windows ≈ 7.5 min at the README's 760 ms per [4 × 128] forward, 500 ARC-Easy items ≈ 4 min — plus ≈ 20 min of
pruning and repair):

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/width_vs_peers.py --repairs all --peers no \\
        --json width_repair.json

``--calib-source wikitext-oracle`` calibrates (criteria and repairs) on the first ``--calib-samples`` evaluated
WikiText-2 windows themselves: run with ``--ppl-windows`` ≤ ``--calib-samples`` it is an in-sample upper bound on
what a calibration-based method can reach — how far the method class is from a goal — and never a result.

``--calib-source wikitext-crossfit`` is the issue's whole-file protocol with in-format calibration: every cell is
pruned (and repaired) twice, once on ``--calib-samples`` windows of each half of the test file, and each half is
scored by the model calibrated on the other half (``--heldout-gap`` windows from the split, no article in both;
:func:`benchmarks.calibration_sources.crossfit_folds`); the per-window NLLs merge into one whole-file figure.
ARC-Easy and the latency use the first half's model; the prune and repair times are per model.

``--quick`` checks the script end to end in about a minute (80 %, maw_hybrid, none/ls on 4 × 96 calibration
tokens, 1 window, 10 items; numbers meaningless).

Columns: parameters, WikiText-2 perplexity (``--ppl-windows``), ARC-Easy accuracy on a seeded sample of
``--arc-limit`` items and the pruning wall time and process CPU time (incl. calibration and repair). CPU timings are
noisy on shared cores; compare within the run. With the peers, the forward-pass latency of the 40 % MAW model vs
dense is measured next to its FLOP ratio.

A second table compares, at each sparsity, every method with the best peer (OptiPFair / torch-pruning): ARC-Easy
as a paired difference in percentage points (bootstrap over the same items, McNemar's exact p) against the peer
with the highest accuracy, WikiText-2 as a perplexity ratio (bootstrap over the same windows) against the peer
with the lowest perplexity — 95 % CIs from the per-item outcomes of the evaluations above (prunelab.stats), so a
difference inside the noise of 100 items is labelled as such.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from benchmarks.ci_format import span  # noqa: E402
from benchmarks.calibration_sources import (CROSSFIT, HELDOUT, HELDOUT_GAP, ORACLE, SOURCES, crossfit_folds,  # noqa: E402
                                           crossfit_note, held_out_windows, leading_text)
import prunelab  # noqa: E402
from prunelab.data import load_wikitext2_text  # noqa: E402
from prunelab.data.calibration import calibration_batch  # noqa: E402
from prunelab.evaluate.efficiency import forward_latency, interleaved_latency  # noqa: E402
from prunelab.evaluate.perplexity import (leading_windows, merge_perplexity, perplexity,  # noqa: E402
                                         window_range_perplexity)
from prunelab.models import adapter_for, count_parameters, flops_per_token  # noqa: E402
from prunelab.prune.adaptive import LOSS_SCALED_CRITERIA, adapt_prune  # noqa: E402
from prunelab.prune.width import prune_width  # noqa: E402


def kept_indices(original_rows: torch.Tensor, new_rows: torch.Tensor) -> list[int]:
    """Which original gate rows survive in a peer's pruned layer (matched exactly by their bytes)."""
    index = {original_rows[i].numpy().tobytes(): i for i in range(original_rows.shape[0])}
    return sorted(index[r.numpy().tobytes()] for r in new_rows)


def overlap(a: list[list[int]], b: list[list[int]]) -> float:
    """Mean per-layer |A ∩ B| / |A| of kept neuron sets."""
    return statistics.mean(len(set(x) & set(y)) / max(len(x), 1) for x, y in zip(a, b))


def gate_rows(model) -> list[torch.Tensor]:
    adapter = adapter_for(model)
    return [adapter.mlp_weights(layer)[0].detach().clone() for layer in adapter.layers(model)]


def block_params(model) -> int:
    return sum(p.numel() for layer in adapter_for(model).layers(model) for p in layer.parameters())


def optipfair_prune(model, ratio, dataloader=None):
    from optipfair.pruning.mlp_glu import prune_model_mlp_glu

    prune_model_mlp_glu(model, neuron_selection_method="MAW", pruning_percentage=100 * ratio, dataloader=dataloader,
                        show_progress=False)


def torch_pruning_taylor(model, ratio, calibration, batch_size):
    """torch-pruning 1.6: Taylor importance on GLU channels only (attention, down_proj, lm_head ignored)."""
    import torch_pruning as tp

    adapter = adapter_for(model)
    ignored = [model.lm_head]
    for layer in adapter.layers(model):
        ignored += [adapter.module(layer, n) for n in ("q", "k", "v", "o", "down")]
    unwrapped = [(p, 0) for n, p in model.named_parameters() if "norm" in n]
    pruner = tp.pruner.BasePruner(
        model, example_inputs=calibration[:1], importance=tp.importance.GroupTaylorImportance(),
        pruning_ratio=ratio, ignored_layers=ignored, root_module_types=[torch.nn.Linear], global_pruning=False,
        output_transform=lambda out: out.logits, unwrapped_parameters=unwrapped,
    )
    model.zero_grad()
    for start in range(0, calibration.shape[0], batch_size):
        batch = calibration[start : start + batch_size]
        model(input_ids=batch, labels=batch).loss.backward()
    for group in pruner.step(interactive=True):
        group.prune()
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)


def arc_easy(model, tokenizer, limit):
    """ARC-Easy ``(accuracy %, {item_id: ItemOutcome})`` on a seeded sample, or ``(None, {})``."""
    if limit <= 0:  # --arc-limit 0: skip the ARC column (e.g. on heavily shared CPUs)
        return None, {}
    try:
        from prunelab.evaluate import evaluate
    except ImportError:
        return None, {}
    res = evaluate(model, tokenizer, tasks=["arc_easy"], limit=limit).results["arc_easy"]
    return res.score, {o.item_id: o for o in res.outcomes}


def peer_comparisons(rows):
    """Each method vs the best peer at its sparsity (see module docstring), as a ``prunelab.report.tables.Table``
    (``None`` when no sparsity has a peer)."""
    from prunelab.evaluate.registry import ItemOutcome
    from prunelab.report.comparisons import DiffCell, Outcomes, accuracy_cell, perplexity_cell
    from prunelab.report.tables import Table

    def is_peer(r):
        return not r["method"].startswith("prunelab")

    out_rows, records, notes = [], [], []
    outcomes = Outcomes({(r["method"], "eval", "arc_easy"): r["arc_items"] for r in rows if r.get("arc_items")})
    for ratio in dict.fromkeys(r["ratio"] for r in rows if r.get("ratio") is not None):
        group = [r for r in rows if r.get("ratio") == ratio]
        peers = [r for r in group if is_peer(r)]
        if not peers:
            continue
        best_arc = max((r for r in peers if r["arc"] is not None), key=lambda r: r["arc"], default=None)
        best_ppl = min(peers, key=lambda r: r["ppl"])
        notes.append(f"{ratio:.0%}: best peer by ARC-Easy = {best_arc['method'] if best_arc else 'n/a'}, "
                     f"by perplexity = {best_ppl['method']}.")
        windows = {r["method"]: {f"w{i}": ItemOutcome(f"w{i}", nll=n, tokens=t)
                                 for i, (n, t) in enumerate(zip(r["window_nll"], r["window_tokens"]))}
                   for r in group}
        for r in group:
            arc: object = "–"
            if best_arc is not None and r["arc"] is not None:
                arc = ("best peer" if r is best_arc else
                       accuracy_cell(outcomes, {0: (r["method"], "eval")}, {0: (best_arc["method"], "eval")},
                                     ("arc_easy",), {"mean": r["arc"] - best_arc["arc"], "sd": None, "n": None}))
            ppl = ("best peer" if r is best_ppl else
                   perplexity_cell(windows[r["method"]], windows[best_ppl["method"]],
                                   {"mean": r["ppl"] / best_ppl["ppl"], "sd": None, "n": None}))
            out_rows.append([f"{ratio:.0%}", r["method"], f"{r['params'] / 1e6:.2f}", arc, ppl])
            records.append({"sparsity": ratio, "method": r["method"],
                            "arc_vs_best_peer": arc.as_dict() if isinstance(arc, DiffCell) else arc,
                            "ppl_vs_best_peer": ppl.as_dict() if isinstance(ppl, DiffCell) else ppl})
    if not out_rows:
        return None
    return Table(None, "vs_best_peer", "Each method vs the best peer (95 % CI, * p < 0.05)",
                 ["MLP sparsity", "method", "params (M)", "ARC-Easy vs best peer (pp)", "WikiText-2 ppl vs best peer"],
                 out_rows, records, notes,
                 short={"ARC-Easy vs best peer (pp)": "ARC", "WikiText-2 ppl vs best peer": "ppl"})


def speedup(dense, pruned, cal) -> None:
    """Measured forward latency ratio next to the FLOP ratio (printed)."""
    x = cal[:1, :128].repeat(4, 1)
    t_dense, t_pruned = forward_latency(dense, x, 7), forward_latency(pruned, x, 7)
    f_dense, f_pruned = flops_per_token(dense, 128), flops_per_token(pruned, 128)
    print(f"forward [4×128] median of 7: dense {1000 * t_dense:.1f} ms, 40%-MLP maw {1000 * t_pruned:.1f} ms → "
          f"measured speedup ×{t_dense / t_pruned:.2f}; FLOPs/token (non-embedding + attention) ratio "
          f"{f_pruned / f_dense:.3f} (ideal ×{f_dense / f_pruned:.2f}; the 49k-vocab lm_head is outside the FLOP "
          f"count but inside the measured time)", flush=True)


def measure_latency(cells: list[tuple[dict, torch.nn.Module]], x: torch.Tensor, reps: int) -> None:
    """``forward_ms`` of every grid cell of one sparsity, timed interleaved
    (:func:`prunelab.evaluate.efficiency.interleaved_latency`); the models are freed afterwards."""
    for (row, _), seconds in zip(cells, interleaved_latency([m for _, m in cells], x, reps)):
        row["forward_ms"] = 1000 * seconds
    cells.clear()


def peers_available() -> tuple[bool, str]:
    """Whether OptiPFair and torch-pruning import (they are benchmark-only extras, see the module docstring)."""
    missing = []
    for mod in ("optipfair", "torch_pruning"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    return not missing, ", ".join(missing)


#: ``--quick``: an end-to-end smoke check, not a measurement. 80 % sparsity keeps 307 neurons, so ``ls`` needs only
#: 307 calibration tokens (it refuses fewer than the kept width): 4 × 96 keeps the repair passes short.
QUICK = dict(ratios="0.8", criteria="maw_hybrid", repairs="none,ls", calib_samples=4, calib_seq_len=96,
             ppl_windows="1", arc_limit=10, latency_reps=1, peers="no")


def split_repair(fix: str) -> tuple[str, str]:
    """``"ls@model"`` → ``("ls", "model")``; a plain repair name has the layer target."""
    method, sep, target = fix.partition("@")
    return method, target if sep else "layer"


def parse_windows(text: str, repairs: list[str]) -> int | None:
    """``--ppl-windows``: a count, ``all`` (every 512-token window of the test file, None), or ``auto``: all with
    ``--repairs`` (issue 19 asks for the whole file), the historical 4 otherwise."""
    if text == "auto":
        return None if repairs else 4
    if text == "all":
        return None
    value = int(text)
    if value < 1:
        raise SystemExit(f"--ppl-windows must be ≥ 1, 'all' or 'auto', got {text}")
    return value


#: a criterion without an unrepaired cell of its own (obs chooses inside the ls repair) is compared with this one's
BASELINE_OF = {"obs": "maw_hybrid"}
#: every other criterion's repaired cell is also paired with this criterion's cell of the same sparsity and repair
REFERENCE_CRITERION = "maw_hybrid"


def repair_table(rows) -> list[dict]:
    """Each criterion × repair cell against the same criterion without repair (paired CIs), as records; ``obs``
    against ``maw_hybrid`` without repair (:data:`BASELINE_OF`)."""
    from prunelab.stats import accuracy_difference, mean_ci, perplexity_ratio

    def windows(r):
        return {str(i): (n, t) for i, (n, t) in enumerate(zip(r["window_nll"], r["window_tokens"]))}

    def items(r):
        return {k: o.correct for k, o in r["arc_items"].items()}

    out = []
    base: dict[tuple, dict] = {}
    for r in rows:
        if r.get("cell") is None:
            continue
        ratio, crit, fix = r["cell"]
        rec = {"ratio": ratio, "criterion": crit, "repair": fix, "params": r["params"], "ppl": r["ppl"],
               "arc": r["arc"], "prune_s": r["seconds"], "repair_s": r.get("repair_s"),
               "forward_ms": r.get("forward_ms")}
        if r["arc_items"]:
            rec["arc_ci"] = mean_ci(items(r)).as_dict()
        if fix == "none":
            base[(ratio, crit)] = r
        elif (ratio, BASELINE_OF.get(crit, crit)) in base:
            b = base[(ratio, BASELINE_OF.get(crit, crit))]
            rec["ppl_vs_none"] = perplexity_ratio(windows(b), windows(r)).as_dict()
            if r["arc_items"] and b["arc_items"]:
                rec["arc_vs_none"] = accuracy_difference(items(b), items(r)).as_dict()
            if b.get("forward_ms") and r.get("forward_ms"):
                rec["latency_vs_none"] = r["forward_ms"] / b["forward_ms"]
        out.append(rec)
    # criteria against each other after the same repair (same windows and items: paired), e.g. obs + ls vs
    # maw_hybrid + ls, so a cross-criterion claim has its own CI instead of two CIs against different baselines
    reference = {(r["cell"][0], r["cell"][2]): r for r in rows
                 if r.get("cell") is not None and r["cell"][1] == REFERENCE_CRITERION}
    for rec, r in zip(out, [r for r in rows if r.get("cell") is not None]):
        ref = reference.get((rec["ratio"], rec["repair"]))
        if rec["repair"] == "none" or rec["criterion"] == REFERENCE_CRITERION or ref is None:
            continue
        rec["ppl_vs_reference"] = perplexity_ratio(windows(ref), windows(r)).as_dict()
        if r["arc_items"] and ref["arc_items"]:
            rec["arc_vs_reference"] = accuracy_difference(items(ref), items(r)).as_dict()
    # a repair with a named target ("ls@layer+attn") against the same method with the layer target ("ls")
    plain = {tuple(r["cell"]): r for r in rows if r.get("cell") is not None}
    for rec, r in zip(out, [r for r in rows if r.get("cell") is not None]):
        method, target = split_repair(rec["repair"])
        ref = plain.get((rec["ratio"], rec["criterion"], method))
        if target == "layer" or ref is None:
            continue
        rec["ppl_vs_layer_target"] = perplexity_ratio(windows(ref), windows(r)).as_dict()
        if r["arc_items"] and ref["arc_items"]:
            rec["arc_vs_layer_target"] = accuracy_difference(items(ref), items(r)).as_dict()
    return out


def print_repair_table(records, dense_row) -> None:
    def ci(d, fmt):  # "*": p < 0.05 (or the CI excludes the null), prunelab.stats.Difference.significant
        return span(d, fmt, star=True)

    print("\n### Repair without retraining (issue 19): each criterion × repair vs the same cell without repair\n")
    if dense_row is not None:
        arc = "" if dense_row["arc"] is None else f", ARC-Easy {dense_row['arc']:.1f}"
        print(f"dense: ppl {dense_row['ppl']:.2f}{arc}")
    print("\n| MLP sparsity | criterion | repair | params (M) | WikiText-2 ppl | ppl × vs none [95% CI] | ARC-Easy % "
          "[95% CI] | Δ ARC pp vs none [95% CI] | prune s | of which repair s | forward ms (× vs none) |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in records:
        arc = "n/a" if r["arc"] is None else (ci(r.get("arc_ci"), ".1f") or f"{r['arc']:.1f}")
        lat = "" if r["forward_ms"] is None else f"{r['forward_ms']:.1f}" + (
            f" (×{r['latency_vs_none']:.3f})" if r.get("latency_vs_none") else "")
        rs = "" if r["repair_s"] is None else f"{r['repair_s']:.1f}"
        print(f"| {r['ratio']:.0%} | {r['criterion']} | {r['repair']} | {r['params'] / 1e6:.2f} | {r['ppl']:.2f} | "
              f"{ci(r.get('ppl_vs_none'), '.3f')} | {arc} | {ci(r.get('arc_vs_none'), '+.1f')} | {r['prune_s']:.1f} | "
              f"{rs} | {lat} |")
    paired = [r for r in records if "ppl_vs_reference" in r]
    if paired:
        print(f"\nPaired against {REFERENCE_CRITERION} with the same repair and sparsity:")
        for r in paired:
            arc = f"; ARC {ci(r['arc_vs_reference'], '+.1f')} pp" if "arc_vs_reference" in r else ""
            print(f"- {r['ratio']:.0%} {r['criterion']} + {r['repair']}: ppl ×{ci(r['ppl_vs_reference'], '.3f')}{arc}")
    targeted = [r for r in records if "ppl_vs_layer_target" in r]
    if targeted:
        print("\nPaired against the same repair with the layer target (same criterion and sparsity):")
        for r in targeted:
            arc = f"; ARC {ci(r['arc_vs_layer_target'], '+.1f')} pp" if "arc_vs_layer_target" in r else ""
            print(f"- {r['ratio']:.0%} {r['criterion']} + {r['repair']} vs {split_repair(r['repair'])[0]}: "
                  f"ppl ×{ci(r['ppl_vs_layer_target'], '.3f')}{arc}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="end-to-end check in under a minute: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                                             for k, v in QUICK.items()))
    ap.add_argument("--ratios", default=None, help="MLP sparsities (default 0.4,0.2)")
    ap.add_argument("--calib-samples", type=int, default=None, help="calibration windows (default 16)")
    ap.add_argument("--calib-seq-len", type=int, default=None, help="tokens per calibration window (default 128)")
    ap.add_argument("--calib-source", default="lambada", choices=SOURCES,
                    help=f"calibration text (default lambada; wikipedia: BoolQ passages, disjoint from the "
                         f"WikiText-2 test file). {ORACLE}: the first --calib-samples evaluated WikiText-2 windows "
                         f"themselves (--calib-seq-len is then 512): an in-sample upper bound on "
                         f"what a calibration-based method can reach, never a result. {HELDOUT}: --calib-samples "
                         f"windows of the same file that are not evaluated (after the evaluated ones and "
                         f"--heldout-gap more; needs a numeric --ppl-windows): disjoint text, WikiText-2's format. "
                         f"{CROSSFIT}: the whole file, each half scored by a model pruned and repaired on "
                         f"--calib-samples windows of the other half (--heldout-gap windows from the split; ARC-Easy "
                         f"and latency use the first half's model; prunelab cells only)")
    ap.add_argument("--heldout-gap", type=int, default=HELDOUT_GAP,
                    help=f"with --calib-source {HELDOUT} / {CROSSFIT}: windows skipped between the scored and the calibration "
                         f"windows (≈ 1.5 articles: the file has 62 articles in 590 windows)")
    ap.add_argument("--text-windows", type=int, default=0,
                    help="smoke checks only: keep the first N windows of the WikiText-2 test file (0: all of it)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ppl-windows", default=None,
                    help="WikiText-2 windows of 512 tokens: a number, 'all' (the whole test file) or 'auto' (default: "
                         "all with --repairs, 4 otherwise)")
    ap.add_argument("--arc-limit", type=int, default=None, help="ARC-Easy items (default 500 with --repairs, else 100)")
    ap.add_argument("--steps", type=int, default=4, help="Adapt-Pruner steps T")
    ap.add_argument("--amplitudes", default="0.02", help="comma list of Adapt-Pruner amplitudes A")
    ap.add_argument("--adaptive-criteria", default="taylor",
                    help="comma list of within-layer criteria (non-Taylor ones run MLP-only)")
    ap.add_argument("--skip", default="", help="comma list of method names to skip (e.g. 'torch-pruning Taylor'; "
                                               "'dense': no dense row)")
    ap.add_argument("--adaptive-mlp-only", action="store_true", help="also run Adapt-Pruner restricted to MLP neurons")
    ap.add_argument("--adaptive-scope", default=None, choices=("heads+mlp", "mlp", "both"),
                    help="what Adapt-Pruner prunes: heads+mlp (default), mlp (MLP neurons only) or both variants; "
                         "--adaptive-mlp-only is --adaptive-scope both")
    ap.add_argument("--repairs", default=None,
                    help="comma list of repairs (none, bias, ls, ls+bias, each optionally @model, e.g. ls@model; "
                         "or all): every prunelab cell of --criteria is run with each (same kept groups, same "
                         "calibration; issue 19)")
    ap.add_argument("--criteria", default=None,
                    help="prunelab cells of the repair grid: maw_hybrid, taylor, adaptive, obs (default all four)")
    ap.add_argument("--ridge", type=float, default=None, help="relative ridge of --repairs ls (default: auto)")
    ap.add_argument("--token-weights", default="normalized", choices=("normalized", "uniform"),
                    help="token weighting of the repairs' fits (prunelab.prune.repair.TOKEN_WEIGHTS)")
    ap.add_argument("--peers", default=None, choices=("auto", "yes", "no"),
                    help="OptiPFair / torch-pruning rows: auto (default: if both import), yes (fail if missing), no")
    ap.add_argument("--latency-reps", type=int, default=None, help="forward passes timed per model (median; default 7)")
    ap.add_argument("--json", default=None, help="write every row and the repair table as JSON")
    args = ap.parse_args()
    defaults = dict(ratios="0.4,0.2", criteria="maw_hybrid,taylor,adaptive,obs", repairs="", calib_samples=16,
                    calib_seq_len=128, ppl_windows="auto", arc_limit=None, latency_reps=7, peers="auto")
    for key, value in (QUICK if args.quick else defaults).items():
        if getattr(args, key) is None:  # explicit flags win over --quick
            setattr(args, key, value)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from rich.console import Console
    from rich.table import Table

    console = Console()
    skip = set(filter(None, args.skip.split(",")))
    from prunelab.prune.repair import DEFAULT_RIDGE, REPAIR_TARGETS, REPAIRS

    # a repair may name its target: "ls@model" (prunelab.prune.repair.REPAIR_TARGETS; plain names: the layer target)
    repairs = [r.strip() for r in args.repairs.split(",") if r.strip()] if args.repairs else []
    if repairs == ["all"]:
        repairs = REPAIRS.parse_list("all")
    for r in repairs:
        method, target = split_repair(r)
        REPAIRS.get(method)
        REPAIR_TARGETS.get(target)
    if repairs and "none" not in repairs:
        repairs = ["none", *repairs]  # the unrepaired cell is the reference of every comparison
    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    if unknown := set(criteria) - {"maw_hybrid", "taylor", "adaptive", "obs"}:
        raise SystemExit(f"--criteria: unknown {', '.join(sorted(unknown))} (maw_hybrid, taylor, adaptive, obs)")
    windows_n = parse_windows(args.ppl_windows, repairs)
    if args.calib_source == HELDOUT and windows_n is None:
        raise SystemExit(f"--calib-source {HELDOUT} needs a numeric --ppl-windows: the whole file leaves no "
                         f"held-out window")
    if args.calib_source == CROSSFIT and windows_n is not None:
        raise SystemExit(f"--calib-source {CROSSFIT} scores the whole file: it needs --ppl-windows all")
    if args.calib_source == CROSSFIT and args.peers == "yes":
        raise SystemExit(f"--calib-source {CROSSFIT} runs prunelab cells only: not with --peers yes")
    if args.adaptive_mlp_only and args.adaptive_scope not in (None, "both"):
        raise SystemExit(f"--adaptive-mlp-only means --adaptive-scope both, not {args.adaptive_scope}")
    scope = args.adaptive_scope or ("both" if args.adaptive_mlp_only else "heads+mlp")
    scopes = {"heads+mlp": (True,), "mlp": (False,), "both": (True, False)}[scope]  # prune_heads per variant
    arc_limit = args.arc_limit if args.arc_limit is not None else (500 if repairs else 100)
    ridge = DEFAULT_RIDGE if args.ridge is None else args.ridge
    ok, missing = peers_available()
    if args.peers == "yes" and not ok:
        raise SystemExit(f"--peers yes: {missing} not installed (see the pip line in the module docstring)")
    peers = ok and args.peers != "no" and args.calib_source != CROSSFIT
    if not peers:
        why = "--peers no" if args.peers == "no" else CROSSFIT if args.calib_source == CROSSFIT else f"{missing} not installed"
        console.print(f"peers skipped ({why}): only "
                      f"prunelab rows; no best-peer table")
        skip |= {"optipfair MAW (static)", "optipfair MAW hybrid (data)", "torch-pruning Taylor", "prunelab maw"}
    if not repairs:
        repairs = ["none"]

    def repair_note(rep):
        rr = rep.repair
        if rr is None:
            return ""
        return (f"repair {rr.method}: reconstruction error {rr.mean_error_before:.3f} → {rr.mean_error_after:.3f}, "
                f"{rr.seconds:.1f}s of the prune time")

    lm = prunelab.load("smollm2-135m")
    dense, tok = lm.model, lm.tokenizer
    text = load_wikitext2_text()
    if args.text_windows:
        text = leading_text(tok, text, args.text_windows)
    folds = None  # CROSSFIT: two calibrations, each cell pruned once per fold
    if args.calib_source == CROSSFIT:
        args.calib_seq_len = 512
        try:
            folds = crossfit_folds(tok, text, args.calib_samples, args.heldout_gap)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        cal = folds[0].calibration
        console.print(crossfit_note(folds))
    elif args.calib_source == HELDOUT:
        args.calib_seq_len = 512
        try:
            cal, note = held_out_windows(tok, text, windows_n, args.calib_samples, args.heldout_gap)
        except ValueError as exc:  # e.g. an article in both
            raise SystemExit(str(exc)) from None
        console.print(note)
    elif args.calib_source == ORACLE:
        args.calib_seq_len = 512
        cal = leading_windows(tok, text, args.calib_samples, 512)
        console.print(f"[bold red]ORACLE[/]: calibration = WikiText-2 test windows 0–{args.calib_samples - 1}, the "
                      f"evaluated text itself; every number below is an in-sample upper bound, not a result")
    else:
        cal = calibration_batch(tok, args.calib_samples, args.calib_seq_len, source=args.calib_source, seed=0)
    cals = [cal] if folds is None else [f.calibration for f in folds]  # a cell is pruned once per calibration

    def batches(c):
        return [{"input_ids": c[i : i + args.batch_size]} for i in range(0, c.shape[0], args.batch_size)]
    latency_x = cal[:1, :128].repeat(4, 1)
    dense_rows = gate_rows(dense)
    dense_blocks = block_params(dense)
    console.print(f"calibration {tuple(cal.shape)} ({args.calib_source}), batch {args.batch_size}; WikiText-2 "
                  f"{'all' if windows_n is None else f'first {windows_n}'} ×512-token windows; ARC-Easy {arc_limit} "
                  f"items; repairs {', '.join(repairs)} × criteria {', '.join(criteria)}; Adapt-Pruner T={args.steps}, "
                  f"A ∈ {{{args.amplitudes}}}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    def evaluate_row(name, models, seconds, extra="", cpu=0.0, ratio=None):
        """``models``: one per calibration (cross-fit: fold ``i``'s model scores fold ``i``'s windows); ARC-Easy and
        the parameter count come from the first."""
        model = models[0]
        if folds is None:
            pr = perplexity(model, tok, text, seq_len=512, max_windows=windows_n)
        else:
            sizes = [count_parameters(m).total for m in models]
            if len(set(sizes)) != 1:  # the merged perplexity would mix two models of different size
                raise SystemExit(f"{name}: the cross-fit models differ in size ({', '.join(f'{n:,}' for n in sizes)} "
                                 f"params): per-layer widths chosen from each fold's calibration do not sum equally")
            pr = merge_perplexity([window_range_perplexity(m, tok, text, *f.scored) for m, f in zip(models, folds)])
        ppl = pr.perplexity
        acc, arc_items = arc_easy(model, tok, arc_limit)
        pc = count_parameters(model)
        # per-item outcomes (ARC-Easy items, perplexity windows) for the paired comparisons
        row = dict(method=name, params=pc.total, non_emb=pc.non_embedding, ppl=ppl, arc=acc, seconds=seconds,
                   cpu=cpu, note=extra, ratio=ratio, arc_items=arc_items, window_nll=list(pr.window_nll),
                   window_tokens=list(pr.window_tokens))
        console.print(f"  {name:34s} params {pc.total / 1e6:7.2f}M  ppl {ppl:9.2f} ({pr.windows} windows)  "
                      f"ARC-e {'n/a' if acc is None else f'{acc:5.1f}'}  prune {seconds:6.2f}s (cpu {cpu:6.2f}s)  {extra}")
        return row

    # --skip dense: a run that adds cells to an earlier one (the dense numbers do not change between runs)
    rows = [] if "dense" in skip else [evaluate_row("dense", [dense] * len(cals), 0.0)]
    dense_row = rows[0] if rows else None
    for ratio in [float(r) for r in args.ratios.split(",")]:
        console.rule(f"MLP sparsity {ratio:.0%}")
        kept = {}
        cell_models: list[tuple[dict, torch.nn.Module]] = []

        def run(name, fn, extra_fn=None, cell=None):
            if name in skip:
                return None
            models, outs, seconds, cpu = [], [], 0.0, 0.0
            for c in cals:  # cross-fit: once per fold; the times are per model (the mean over the folds)
                model = copy.deepcopy(dense)
                t, p = time.perf_counter(), time.process_time()
                outs.append(fn(model, c))
                seconds += (time.perf_counter() - t) / len(cals)
                cpu += (time.process_time() - p) / len(cals)
                models.append(model)
            model, out = models[0], outs[0]
            kept[name] = [kept_indices(o, n) for o, n in zip(dense_rows, gate_rows(model))]
            extra = extra_fn(out) if extra_fn else ""
            row = evaluate_row(f"{name} @{ratio:.0%}", models, seconds, extra, cpu, ratio)
            if cell is not None:  # a cell of the repair grid: its repair time; latency at the end of the sparsity
                row["cell"] = cell
                reps = [getattr(o, "repair", None) for o in outs]
                row["repair_s"] = sum(r.seconds for r in reps if r is not None) / len(reps)
                cell_models.append((row, model))
            rows.append(row)
            del models[1:]
            return model

        def repair_kw(fix):
            method, target = split_repair(fix)
            return {"repair": method, "repair_target": target, "token_weights": args.token_weights}

        def uniform(crit):
            def fn(m, f, c):
                return prune_width(m, criterion=crit, ratio=ratio, calibration=c, batch_size=args.batch_size,
                                   progress=False, ridge=ridge, **repair_kw(f))
            return fn

        def label(base, fix):
            return base if fix == "none" else f"{base} +{fix}"

        m_maw = run("prunelab maw", lambda m, c: prune_width(m, criterion="maw", ratio=ratio, progress=False))
        run("optipfair MAW (static)", lambda m, c: optipfair_prune(m, ratio),
            lambda _: f"kept-neuron overlap with prunelab maw {overlap(kept['prunelab maw'], kept['optipfair MAW (static)']):.1%}")
        if "maw_hybrid" in criteria or peers:
            for fix in (repairs if "maw_hybrid" in criteria else ["none"]):
                run(label("prunelab maw_hybrid", fix), lambda m, c, f=fix: uniform("maw_hybrid")(m, f, c), repair_note,
                    cell=(ratio, "maw_hybrid", fix) if "maw_hybrid" in criteria else None)
        run("optipfair MAW hybrid (data)", lambda m, c: optipfair_prune(m, ratio, batches(c)),
            lambda _: f"overlap with prunelab maw_hybrid {overlap(kept['prunelab maw_hybrid'], kept['optipfair MAW hybrid (data)']):.1%}")
        if "taylor" in criteria or peers:
            for fix in (repairs if "taylor" in criteria else ["none"]):
                run(label("prunelab taylor", fix), lambda m, c, f=fix: uniform("taylor")(m, f, c), repair_note,
                    cell=(ratio, "taylor", fix) if "taylor" in criteria else None)
        run("torch-pruning Taylor", lambda m, c: torch_pruning_taylor(m, ratio, c, args.batch_size),
            lambda _: f"overlap with prunelab taylor {overlap(kept['prunelab taylor'], kept['torch-pruning Taylor']):.1%}")
        if "adaptive" in criteria or peers:
            # Adapt-Pruner at the same parameter count as the uniform models: same decoder-block sparsity (the
            # uniform widths do not depend on the criterion, so a static maw copy gives them without evaluating it)
            probe = m_maw
            if probe is None:
                probe = copy.deepcopy(dense)
                prune_width(probe, criterion="maw", ratio=ratio, progress=False)
            target = 1.0 - block_params(probe) / dense_blocks
            for crit in args.adaptive_criteria.split(","):
                for heads in scopes:
                    if heads and crit not in LOSS_SCALED_CRITERIA:
                        continue
                    for amp in [float(a) for a in args.amplitudes.split(",")]:
                        name = f"prunelab adaptive {crit} A={amp:g}" + ("" if heads else " (MLP only)")
                        cell_name = f"adaptive {crit} A={amp:g}" + ("" if heads else " MLP-only")
                        for fix in (repairs if "adaptive" in criteria else ["none"]):
                            run(label(name, fix), lambda m, c, h=heads, a=amp, cr=crit, f=fix: adapt_prune(
                                    m, ratio=target, amplitude=a, steps=args.steps, calibration=c,
                                    batch_size=args.batch_size, prune_heads=h, criterion=cr, progress=False,
                                    ridge=ridge, **repair_kw(f)),
                                lambda rep: f"block sparsity {rep.sparsity:.1%} (target {target:.1%}), widths "
                                            f"{min(rep.widths_after)}–{max(rep.widths_after)}, heads "
                                            f"{sum(rep.heads_after)}" + ("; " + repair_note(rep) if rep.repair else ""),
                                cell=(ratio, cell_name, fix) if "adaptive" in criteria else None)
        if "obs" in criteria:  # Optimal Brain Surgeon chooses inside the ls repair: no unrepaired cell of its own
            for fix in repairs:
                if REPAIRS.get(split_repair(fix)[0]).ls and split_repair(fix)[1] == "layer":
                    run(label("prunelab obs", fix), lambda m, c, f=fix: uniform("obs")(m, f, c), repair_note,
                        cell=(ratio, "obs", fix))
        if abs(ratio - 0.4) < 1e-9 and m_maw is not None:
            speedup(dense, m_maw, cal)
        measure_latency(cell_models, latency_x, args.latency_reps)

    table = Table(title="SmolLM2-135M width pruning (CPU, one run)")
    for col in ("method", "params (M)", "non-emb (M)", "WikiText-2 ppl", "ARC-Easy %", "prune s", "CPU s", "note"):
        table.add_column(col, justify="left" if col in ("method", "note") else "right")
    for r in rows:
        table.add_row(r["method"], f"{r['params'] / 1e6:.2f}", f"{r['non_emb'] / 1e6:.2f}", f"{r['ppl']:.2f}",
                      "n/a" if r["arc"] is None else f"{r['arc']:.1f}", f"{r['seconds']:.2f}", f"{r['cpu']:.2f}", r["note"])
    console.print(table)
    print("\n| method | params (M) | WikiText-2 ppl | ARC-Easy % | prune wall s | prune CPU s | note |\n"
          "|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        arc = "n/a" if r["arc"] is None else f"{r['arc']:.1f}"
        print(f"| {r['method']} | {r['params'] / 1e6:.2f} | {r['ppl']:.2f} | {arc} | {r['seconds']:.2f} | "
              f"{r['cpu']:.2f} | {r['note']} |")
    records = repair_table(rows) if args.repairs else []
    if records:
        print_repair_table(records, dense_row)
    peer_table = peer_comparisons(rows) if peers else None
    if peer_table is not None:
        print("\n" + peer_table.markdown())
    if args.json:
        from prunelab.atomic import write_json

        # per-item outcomes kept (ARC correct per item id, NLL and tokens per window), so runs can be compared later
        plain = [{k: ({i: o.correct for i, o in v.items()} if k == "arc_items" and v else v) for k, v in r.items()}
                 for r in rows]
        write_json(args.json, {"args": vars(args), "ppl_windows": windows_n, "arc_limit": arc_limit, "rows": plain,
                               "repair_table": records})


if __name__ == "__main__":
    main()
