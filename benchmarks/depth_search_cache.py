"""Cached vs naive candidate evaluation for depth-pruning searches (issue 5 benchmark).

Runs greedy and beam (B = 5) on smollm2-135m (30 blocks, k = 7) under the perplexity objective twice:
with the prefix-state cache + per-set memo (``cached=True``) and recomputing every requested candidate from
the embeddings through the HF decoder forward (``cached=False``). Both runs must pick identical blocks;
the wall-time ratio naive/cached is printed (both measured in this run, so machine noise hits both).

    python benchmarks/depth_search_cache.py [--samples 1 --seq-len 64 --searches greedy,beam --json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--samples", type=int, default=1, help="calibration windows (LAMBADA calibration pool)")
    ap.add_argument("--seq-len", type=int, default=64, help="tokens per calibration window")
    ap.add_argument("--searches", default="greedy,beam")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is much faster than 2 when the 2 cores are oversubscribed)")
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
        for mode in ("cached", "naive"):
            t = time.perf_counter()
            res[mode] = search_blocks(lm.model, args.k, "perplexity", search, calibration=tokens,
                                      cached=(mode == "cached"), progress=sys.stderr.isatty())
            r = res[mode]
            print(f"  {search:7s} {mode:6s}: removed {r.removed}  L={r.objective_value:.6f}  "
                  f"{r.candidates} distinct candidates / {r.stats['requests']} requests, "
                  f"{r.stats['blocks_run']} block passes, {r.seconds:.1f}s", flush=True)
        c, n = res["cached"], res["naive"]
        same = c.removed == n.removed
        ok &= same
        ratio = n.seconds / c.seconds
        print(f"  {search}: identical masks: {same}; naive/cached wall time = {ratio:.2f}x "
              f"(block passes {n.stats['blocks_run']} vs {c.stats['blocks_run']})", flush=True)
        rows.append({"search": search, "identical": same, "ratio": ratio, "cached": c, "naive": n})
    if args.json:
        write_json(args.json, {"model": args.model, "k": args.k, "samples": args.samples,
                               "seq_len": args.seq_len, "results": rows})
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
