"""Depth pruning with and without compensation (ReplaceMe ``linear``, Prune&Comp-style ``scale``), one run.

For each search (default greedy and one-shot, perplexity objective) the k blocks are chosen once on the calibration
tokens (LAMBADA calibration pool, disjoint from the evaluated text); every compensation then starts from a fresh copy
of the dense model with the *same* removed blocks and the *same* calibration tokens. Reported per cell: parameters,
WikiText-2 perplexity over the whole test file (every 512-token window unless ``--ppl-windows``), ARC-Easy
log-likelihood accuracy on ``--arc-limit`` items, the compensation's wall time, and against the uncompensated cell
of the same search: the perplexity ratio (paired bootstrap CI over windows) and the ARC-Easy difference (paired
bootstrap CI over items, McNemar p), from :mod:`prunelab.stats`. Goal (issue 19): compensated perplexity ≤ 0.6×
the uncompensated one at k = 7, for greedy and for one-shot.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/depth_repair.py \\
        [--k 7 --searches greedy,one-shot --compensations none,linear,scale --calib-samples 32 --calib-seq-len 128 \\
         --ppl-windows 0 --arc-limit 500 --ridge 0.01 --json depth_repair.json]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--searches", default="greedy,one-shot")
    ap.add_argument("--compensations", default="none,linear,scale")
    ap.add_argument("--calib-samples", type=int, default=32, help="calibration windows (LAMBADA calibration pool)")
    ap.add_argument("--calib-seq-len", type=int, default=128)
    ap.add_argument("--ridge", type=float, default=None, help="relative ridge of the linear map (default: auto)")
    ap.add_argument("--ppl-windows", type=int, default=0, help="WikiText-2 windows of 512 tokens (0: the whole file)")
    ap.add_argument("--arc-limit", type=int, default=500, help="ARC-Easy items (0: skip)")
    ap.add_argument("--compensated-search", action="store_true",
                    help="also search with each compensation applied to every candidate (search_blocks(compensate=))")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from prunelab.atomic import to_jsonable, write_json
    from prunelab.data import calibration_batch, load_wikitext2_text
    from prunelab.evaluate import evaluate
    from prunelab.evaluate.perplexity import perplexity
    from prunelab.models import count_parameters, load
    from prunelab.prune.depth import search_blocks
    from prunelab.prune.depth_repair import COMPENSATIONS, compensate_and_remove
    from prunelab.prune.repair import DEFAULT_RIDGE
    from prunelab.stats import accuracy_difference, perplexity_ratio

    ridge = DEFAULT_RIDGE if args.ridge is None else args.ridge
    comps = COMPENSATIONS.parse_list(args.compensations)
    lm = load(args.model)
    dense, tok = lm.model, lm.tokenizer
    text = load_wikitext2_text()
    cal = calibration_batch(tok, n_samples=args.calib_samples, seq_len=args.calib_seq_len, source="lambada", seed=0)
    windows = args.ppl_windows or None
    print(f"{args.model}: k={args.k}, calibration {tuple(cal.shape)} LAMBADA (search and compensation), ridge "
          f"{'auto' if ridge is None else ridge}; WikiText-2 {'all' if windows is None else windows} 512-token windows; ARC-Easy "
          f"{args.arc_limit} items; torch threads {args.threads}", flush=True)

    def score(model):
        ppl = perplexity(model, tok, text, seq_len=512, max_windows=windows)
        win = {str(i): (n, t) for i, (n, t) in enumerate(zip(ppl.window_nll, ppl.window_tokens))}
        arc = None
        if args.arc_limit > 0:
            res = evaluate(model, tok, tasks=["arc_easy"], limit=args.arc_limit).results["arc_easy"]
            arc = (res.metrics[res.primary], {i: o.correct for i, o in zip(res.item_ids, res.outcomes)})
        return ppl, win, arc

    rows = []
    d_ppl, _, d_arc = score(dense)
    rows.append({"search": "dense", "compensation": "-", "removed": [], "params": count_parameters(dense).total,
                 "ppl": d_ppl.perplexity, "windows": d_ppl.windows, "arc": d_arc[0] if d_arc else None})
    print(f"dense: ppl {d_ppl.perplexity:.2f} over {d_ppl.windows} windows"
          + (f", ARC-Easy {d_arc[0]:.1f}" if d_arc else ""), flush=True)
    cells = [(s, "none") for s in args.searches.split(",")]
    if args.compensated_search:
        cells += [(s, c) for s in args.searches.split(",") for c in comps if c != "none"]
    for search, searched_with in cells:
        t0 = time.perf_counter()
        res = search_blocks(dense, args.k, "perplexity", search, calibration=cal, progress=False,
                            compensate=searched_with, ridge=ridge)
        search_s = time.perf_counter() - t0
        if searched_with != "none":
            search = f"{search} (searched with {searched_with})"
        print(f"{search}: removed {res.removed} ({res.candidates} candidates, {search_s:.0f}s)", flush=True)
        base = None
        for comp in (comps if searched_with == "none" else ["none", searched_with]):
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            try:
                rep = compensate_and_remove(model, res.removed, cal, comp, ridge, progress=False)
            except Exception as exc:  # e.g. linear refused for a run starting at block 0: report, keep going
                print(f"  {comp:7s} refused: {exc}", flush=True)
                rows.append({"search": search, "compensation": comp, "removed": res.removed, "error": str(exc)})
                continue
            seconds = time.perf_counter() - t0
            ppl, win, arc = score(model)
            row = {"search": search, "compensation": comp, "removed": res.removed,
                   "params": count_parameters(model).total, "ppl": ppl.perplexity, "windows": ppl.windows,
                   "arc": arc[0] if arc else None, "seconds": seconds,
                   "runs": [to_jsonable(r) for r in rep.runs]}
            if comp == "none":
                base = (ppl, win, arc)
            elif base is not None:
                r = perplexity_ratio(base[1], win)
                row["ppl_ratio"] = {"estimate": r.estimate, "low": r.low, "high": r.high, "p": r.p}
                if arc and base[2]:
                    d = accuracy_difference(base[2][1], arc[1])
                    row["arc_diff"] = {"estimate": d.estimate, "low": d.low, "high": d.high, "p": d.p}
            rows.append(row)
            extra = ""
            if "ppl_ratio" in row:
                pr = row["ppl_ratio"]
                extra = f"  ppl ×{pr['estimate']:.3f} [{pr['low']:.3f}, {pr['high']:.3f}] vs none"
            if "arc_diff" in row:
                ad = row["arc_diff"]
                extra += f"; ARC {ad['estimate']:+.1f} pp [{ad['low']:+.1f}, {ad['high']:+.1f}], p={ad['p']:.3g}"
            print(f"  {comp:7s} params {row['params'] / 1e6:.2f}M ppl {ppl.perplexity:9.2f}"
                  + (f" ARC-e {arc[0]:5.1f}" if arc else "") + f"  ({seconds:.1f}s){extra}", flush=True)
            del model

    print("\n| search | compensation | params (M) | WikiText-2 ppl | × vs none [95% CI] | ARC-Easy % | Δ ARC pp [95% CI] "
          "| compensation s |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['search']} | {r['compensation']} | – | refused | | | | |")
            continue
        pr, ad = r.get("ppl_ratio"), r.get("arc_diff")
        print(f"| {r['search']} | {r['compensation']} | {r['params'] / 1e6:.2f} | {r['ppl']:.2f} | "
              + (f"{pr['estimate']:.3f} [{pr['low']:.3f}, {pr['high']:.3f}]" if pr else "") + " | "
              + ("n/a" if r["arc"] is None else f"{r['arc']:.1f}") + " | "
              + (f"{ad['estimate']:+.1f} [{ad['low']:+.1f}, {ad['high']:+.1f}]" if ad else "") + " | "
              + (f"{r['seconds']:.1f}" if "seconds" in r else "") + " |")
    if args.json:
        write_json(args.json, {"args": vars(args), "ridge": ridge, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
