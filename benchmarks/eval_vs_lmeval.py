"""prunelab's log-likelihood ARC-Easy vs lm-evaluation-harness on the same model and items, in one run.

    .venv/bin/python benchmarks/eval_vs_lmeval.py [--model smollm2-135m --limit 100 --batch-size 8 --threads 1]

Prints both backends' acc / acc_norm (they must be identical: the script exits 1 otherwise), the maximum
per-choice log-likelihood difference, each wall time and the ratio lm-eval / prunelab. Both timings include
each backend's own data loading and request building. Batches are matched: prunelab's ``--batch-size`` counts
items (all their choices run together), lm-eval's batch is 4× that in requests (ARC has ~4 choices per item).
``--repeats N`` alternates the two N times and reports the medians (the CPU is shared, timings are noisy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="arc_easy", choices=["arc_easy", "arc_challenge", "piqa", "hellaswag"])
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import prunelab
    from prunelab.cli._common import quiet_libraries
    from prunelab.evaluate import evaluate
    from prunelab.evaluate.lmeval_bridge import lmeval_evaluate

    quiet_libraries()
    lm = prunelab.load(args.model)
    print(f"model {lm.source}, task {args.task}, limit {args.limit}, seed {args.seed}, "
          f"batch {args.batch_size} items / {4 * args.batch_size} lm-eval requests, {torch.get_num_threads()} threads",
          flush=True)
    t_ours, t_theirs = [], []
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        ours = evaluate(lm.model, lm.tokenizer, [args.task], limit=args.limit, seed=args.seed,
                        batch_size=args.batch_size).results[args.task]
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs = lmeval_evaluate(lm.model, lm.tokenizer, [args.task], limit=args.limit, seed=args.seed,
                                 batch_size=4 * args.batch_size).results[args.task]
        t_theirs.append(time.perf_counter() - t0)
        print(f"  repeat {rep + 1}: prunelab {t_ours[-1]:.1f} s, lm-eval {t_theirs[-1]:.1f} s", flush=True)
    same_items = ours.item_ids == theirs.item_ids
    diff = max(abs(a - b) for u, v in zip(ours.details["loglikelihoods"], theirs.details["loglikelihoods"])
               for a, b in zip(u, v))
    a, b = statistics.median(t_ours), statistics.median(t_theirs)
    print(f"{'':10} {'acc':>8} {'acc_norm':>9} {'seconds':>9}")
    print(f"{'prunelab':10} {ours.metrics['acc']:8.2f} {ours.metrics['acc_norm']:9.2f} {a:9.1f}")
    print(f"{'lm-eval':10} {theirs.metrics['acc']:8.2f} {theirs.metrics['acc_norm']:9.2f} {b:9.1f}")
    identical = (same_items and ours.metrics["acc"] == theirs.metrics["acc"]
                 and ours.metrics["acc_norm"] == theirs.metrics["acc_norm"])
    print(f"same {ours.n} items: {same_items}; scores identical: {identical}; max |Δ loglik| = {diff:.2e}")
    print(f"speed-up (lm-eval time / prunelab time): {b / a:.2f}x")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
