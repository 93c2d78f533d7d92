"""Cached vs naive candidate evaluation for depth-pruning searches (issue 5 benchmark).

Runs greedy and beam (B = 5) on smollm2-135m (30 blocks, k = 7) under the perplexity objective three times:

* ``naive`` — every requested candidate recomputed from the embeddings through the HF decoder forward
  (``cached=False``), one candidate per call: the baseline;
* ``cached`` — prefix-state cache + per-set memo, one candidate per call (``batch_tokens=0``);
* ``stacked`` — the same cache, and the candidates of a search step run together, stacked on the batch
  dimension (``BlockEvaluator.evaluate_many``);
* ``bounded`` — stacked, and a candidate whose cheap perplexity lower bound (log-sum-exp over a small vocabulary)
  already exceeds the step's best exact value skips the full LM head (``BlockEvaluator.best_of``; the default of
  ``search_blocks``).

All runs must pick identical blocks; the wall-time ratios against ``naive`` are printed (all measured in this
run, so machine noise hits all of them).

    python benchmarks/depth_search_cache.py [--samples 1 --seq-len 64 --searches greedy,beam --json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--samples", type=int, default=1, help="calibration windows (LAMBADA calibration pool)")
    ap.add_argument("--seq-len", type=int, default=64, help="tokens per calibration window")
    ap.add_argument("--searches", default="greedy,beam")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (use 1 when the 2 cores are shared with other jobs)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from prunelab.atomic import write_json
    from prunelab.data import calibration_batch
    from prunelab.models import load
    from prunelab.prune.depth import search_blocks

    lm = load(args.model)
    tokens = calibration_batch(lm.tokenizer, n_samples=args.samples, seq_len=args.seq_len, source="lambada", seed=0)
    print(f"{args.model}: {len(lm.model.model.layers)} blocks, k={args.k}, perplexity objective on "
          f"{args.samples}×{args.seq_len} LAMBADA calibration tokens, torch threads {args.threads}")
    rows = []
    ok = True
    for search in args.searches.split(","):
        res = {}
        for mode in ("bounded", "stacked", "cached", "naive"):
            res[mode] = search_blocks(lm.model, args.k, "perplexity", search, calibration=tokens,
                                      cached=(mode != "naive"), batch_tokens=0 if mode == "cached" else 8192,
                                      screen=(mode == "bounded"), progress=sys.stderr.isatty())
            r = res[mode]
            print(f"  {search:7s} {mode:6s}: removed {r.removed}  L={r.objective_value:.6f}  "
                  f"{r.candidates} distinct candidates / {r.stats['requests']} requests, "
                  f"{r.stats['blocks_run']} block passes, {r.stats['screened']} screened by the bound, "
                  f"{r.seconds:.1f}s", flush=True)
        b, s, c, n = res["bounded"], res["stacked"], res["cached"], res["naive"]
        same = b.removed == s.removed == c.removed == n.removed
        ok &= same
        ratios = {mode: n.seconds / res[mode].seconds for mode in ("cached", "stacked", "bounded")}
        print(f"  {search}: identical masks: {same}; wall time naive/cached = {ratios['cached']:.2f}x, "
              f"naive/stacked = {ratios['stacked']:.2f}x, naive/bounded = {ratios['bounded']:.2f}x "
              f"(block passes naive {n.stats['blocks_run']}, cached {c.stats['blocks_run']}; "
              f"full LM heads naive {n.candidates}, bounded {b.candidates - b.stats['screened']})", flush=True)
        rows.append({"search": search, "identical": same, "ratios": ratios, **res})
    if args.json:
        write_json(args.json, {"model": args.model, "k": args.k, "samples": args.samples,
                               "seq_len": args.seq_len, "results": rows})
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
