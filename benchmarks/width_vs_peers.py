"""Width pruning of SmolLM2-135M: prunelab vs OptiPFair (MAW, hybrid MAW) vs torch-pruning (Taylor), one run.

    .venv/bin/pip install --no-deps optipfair==0.4.2 torch-pruning==1.6.1   # benchmark-only peers
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/width_vs_peers.py [--quick]

For each MLP sparsity (20%, 40% of the GLU neurons of every layer) every method starts from the same dense model
and, where it uses data, the same calibration batch (LAMBADA calibration pool, disjoint from evaluated text):

* prunelab ``maw`` vs OptiPFair static MAW (overlap of the kept neurons per layer is printed),
* prunelab ``maw_hybrid`` vs OptiPFair data-driven ("hybrid") MAW (same batches, same batch size),
* prunelab ``taylor`` vs torch-pruning ``GroupTaylorImportance`` + ``BasePruner`` (MLP channels only; the
  gradients are accumulated over the same batches),
* prunelab Adapt-Pruner (``adapt_prune``) at the *same number of parameters* as the uniform models (its block
  sparsity is set to the uniform models' block sparsity), for every amplitude of ``--amplitudes`` (the paper's
  0.02, and the value the held-out amplitude ablation selects, see README), heads + MLP and (with
  ``--adaptive-mlp-only``) MLP only, with every within-layer criterion of ``--adaptive-criteria``.
* with ``--repairs ls,ls+bias`` (issue 19): every prunelab maw_hybrid / taylor / adaptive cell again with each
  repair (same kept groups, same calibration batch), so the gain of the repair alone is visible, and the forward
  latency of maw_hybrid with and without each repair.

Columns: parameters, WikiText-2 perplexity over a fixed slice (the first ``--ppl-windows`` windows of 512 tokens),
ARC-Easy accuracy on a seeded sample of ``--arc-limit`` items (if ``prunelab.evaluate`` is available) and the
pruning wall time and process CPU time (incl. calibration). CPU timings are noisy on shared cores; compare within the run.
Finally the forward-pass latency of the 40 % MAW model vs dense is measured next to its FLOP ratio.

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

import prunelab  # noqa: E402
from prunelab.data import load_wikitext2_text  # noqa: E402
from prunelab.data.calibration import calibration_batch  # noqa: E402
from prunelab.evaluate.perplexity import perplexity  # noqa: E402
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
    t_dense, t_pruned = latency(dense, x, 7), latency(pruned, x, 7)
    f_dense, f_pruned = flops_per_token(dense, 128), flops_per_token(pruned, 128)
    print(f"forward [4×128] median of 7: dense {1000 * t_dense:.1f} ms, 40%-MLP maw {1000 * t_pruned:.1f} ms → "
          f"measured speedup ×{t_dense / t_pruned:.2f}; FLOPs/token (non-embedding + attention) ratio "
          f"{f_pruned / f_dense:.3f} (ideal ×{f_dense / f_pruned:.2f}; the 49k-vocab lm_head is outside the FLOP "
          f"count but inside the measured time)", flush=True)


@torch.inference_mode()
def latency(model, tokens: torch.Tensor, reps: int) -> float:
    model(input_ids=tokens, use_cache=False)  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        model(input_ids=tokens, use_cache=False)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", default="0.4,0.2")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--calib-seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ppl-windows", type=int, default=4)
    ap.add_argument("--arc-limit", type=int, default=100)
    ap.add_argument("--steps", type=int, default=4, help="Adapt-Pruner steps T")
    ap.add_argument("--amplitudes", default="0.02", help="comma list of Adapt-Pruner amplitudes A")
    ap.add_argument("--adaptive-criteria", default="taylor",
                    help="comma list of within-layer criteria (non-Taylor ones run MLP-only)")
    ap.add_argument("--skip", default="", help="comma list of method names to skip (e.g. 'torch-pruning Taylor')")
    ap.add_argument("--adaptive-mlp-only", action="store_true", help="also run Adapt-Pruner restricted to MLP neurons")
    ap.add_argument("--repairs", default="",
                    help="comma list of repairs (bias, ls, ls+bias) added as extra cells after each prunelab "
                         "maw_hybrid / taylor / adaptive row, same kept groups and calibration (issue 19)")
    ap.add_argument("--ridge", type=float, default=None, help="relative ridge of --repairs ls (default: auto)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from rich.console import Console
    from rich.table import Table

    console = Console()
    skip = set(filter(None, args.skip.split(",")))
    from prunelab.prune.repair import DEFAULT_RIDGE, REPAIRS

    repairs = [r for r in REPAIRS.parse_list(args.repairs) if r != "none"] if args.repairs else []
    ridge = DEFAULT_RIDGE if args.ridge is None else args.ridge

    def repair_note(rep):
        rr = rep.repair
        return (f"repair {rr.method}: reconstruction error {rr.mean_error_before:.3f} → {rr.mean_error_after:.3f}, "
                f"{rr.seconds:.1f}s of the prune time")
    lm = prunelab.load("smollm2-135m")
    dense, tok = lm.model, lm.tokenizer
    text = load_wikitext2_text()
    cal = calibration_batch(tok, args.calib_samples, args.calib_seq_len, source="lambada", seed=0)
    loader = [{"input_ids": cal[i : i + args.batch_size]} for i in range(0, cal.shape[0], args.batch_size)]
    dense_rows = gate_rows(dense)
    dense_blocks = block_params(dense)
    console.print(f"calibration {tuple(cal.shape)} (lambada), batch {args.batch_size}; WikiText-2 first "
                  f"{args.ppl_windows}×512 tokens; ARC-Easy {args.arc_limit} items; Adapt-Pruner T={args.steps}, "
                  f"A ∈ {{{args.amplitudes}}}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    def evaluate_row(name, model, seconds, extra="", cpu=0.0, ratio=None):
        pr = perplexity(model, tok, text, seq_len=512, max_windows=args.ppl_windows)
        ppl = pr.perplexity
        acc, arc_items = arc_easy(model, tok, args.arc_limit)
        pc = count_parameters(model)
        # per-item outcomes (ARC-Easy items, perplexity windows) for the paired comparisons with the best peer
        row = dict(method=name, params=pc.total, non_emb=pc.non_embedding, ppl=ppl, arc=acc, seconds=seconds,
                   cpu=cpu, note=extra, ratio=ratio, arc_items=arc_items, window_nll=list(pr.window_nll),
                   window_tokens=list(pr.window_tokens))
        console.print(f"  {name:34s} params {pc.total / 1e6:7.2f}M  ppl {ppl:9.2f}  "
                      f"ARC-e {'n/a' if acc is None else f'{acc:5.1f}'}  prune {seconds:6.2f}s (cpu {cpu:6.2f}s)  {extra}")
        return row

    rows = [evaluate_row("dense", dense, 0.0)]
    for ratio in [float(r) for r in args.ratios.split(",")]:
        console.rule(f"MLP sparsity {ratio:.0%}")
        kept = {}

        def run(name, fn, extra_fn=None):
            if name in skip:
                return None
            model = copy.deepcopy(dense)
            t, c = time.perf_counter(), time.process_time()
            out = fn(model)
            seconds, cpu = time.perf_counter() - t, time.process_time() - c
            kept[name] = [kept_indices(o, n) for o, n in zip(dense_rows, gate_rows(model))]
            extra = extra_fn(out) if extra_fn else ""
            rows.append(evaluate_row(f"{name} @{ratio:.0%}", model, seconds, extra, cpu, ratio))
            return model

        m_maw = run("prunelab maw", lambda m: prune_width(m, criterion="maw", ratio=ratio, progress=False))
        run("optipfair MAW (static)", lambda m: optipfair_prune(m, ratio),
            lambda _: f"kept-neuron overlap with prunelab maw {overlap(kept['prunelab maw'], kept['optipfair MAW (static)']):.1%}")
        m_hybrid = run("prunelab maw_hybrid", lambda m: prune_width(m, criterion="maw_hybrid", ratio=ratio,
                                                                    calibration=cal, batch_size=args.batch_size,
                                                                    progress=False))
        for fix in repairs:
            m_fixed = run(f"prunelab maw_hybrid +{fix}", lambda m, f=fix: prune_width(
                m, criterion="maw_hybrid", ratio=ratio, calibration=cal, batch_size=args.batch_size, progress=False,
                repair=f, ridge=ridge), repair_note)
            if m_hybrid is not None and m_fixed is not None:  # the repair must not slow the model down
                x = cal[:1, :128].repeat(4, 1)
                t_plain, t_fixed = latency(m_hybrid, x, 7), latency(m_fixed, x, 7)
                print(f"  forward [4×128] median of 7: maw_hybrid {1000 * t_plain:.1f} ms, +{fix} "
                      f"{1000 * t_fixed:.1f} ms (×{t_fixed / t_plain:.3f})", flush=True)
            del m_fixed
        run("optipfair MAW hybrid (data)", lambda m: optipfair_prune(m, ratio, loader),
            lambda _: f"overlap with prunelab maw_hybrid {overlap(kept['prunelab maw_hybrid'], kept['optipfair MAW hybrid (data)']):.1%}")
        run("prunelab taylor", lambda m: prune_width(m, criterion="taylor", ratio=ratio, calibration=cal,
                                                     batch_size=args.batch_size, progress=False))
        for fix in repairs:
            run(f"prunelab taylor +{fix}", lambda m, f=fix: prune_width(
                m, criterion="taylor", ratio=ratio, calibration=cal, batch_size=args.batch_size, progress=False,
                repair=f, ridge=ridge), repair_note)
        if "torch-pruning Taylor" not in skip:
            run("torch-pruning Taylor", lambda m: torch_pruning_taylor(m, ratio, cal, args.batch_size),
                lambda _: f"overlap with prunelab taylor {overlap(kept['prunelab taylor'], kept['torch-pruning Taylor']):.1%}")
        # Adapt-Pruner at the same parameter count as the uniform models: same decoder-block sparsity
        target = 1.0 - block_params(m_maw) / dense_blocks
        for crit in args.adaptive_criteria.split(","):
            for heads in ((True, False) if args.adaptive_mlp_only else (True,)):
                if heads and crit not in LOSS_SCALED_CRITERIA:
                    continue
                for amp in [float(a) for a in args.amplitudes.split(",")]:
                    label = (f"prunelab adaptive {crit} A={amp:g}" + ("" if heads else " (MLP only)"))
                    run(label, lambda m, h=heads, a=amp, c=crit: adapt_prune(
                            m, ratio=target, amplitude=a, steps=args.steps, calibration=cal, batch_size=args.batch_size,
                            prune_heads=h, criterion=c, progress=False),
                        lambda rep: f"block sparsity {rep.sparsity:.1%} (target {target:.1%}), "
                                    f"widths {min(rep.widths_after)}–{max(rep.widths_after)}, heads {sum(rep.heads_after)}")
                    for fix in repairs:
                        run(f"{label} +{fix}", lambda m, h=heads, a=amp, c=crit, f=fix: adapt_prune(
                                m, ratio=target, amplitude=a, steps=args.steps, calibration=cal,
                                batch_size=args.batch_size, prune_heads=h, criterion=c, progress=False, repair=f,
                                ridge=ridge), repair_note)
        if abs(ratio - 0.4) < 1e-9 and m_maw is not None:
            speedup(dense, m_maw, cal)

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
    peers = peer_comparisons(rows)
    if peers is not None:
        print("\n" + peers.markdown())



if __name__ == "__main__":
    main()
