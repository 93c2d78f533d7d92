"""prunelab's log-likelihood battery vs lm-evaluation-harness on the same model and the same items, in one run.

    .venv/bin/python benchmarks/eval_vs_lmeval.py [--model smollm2-135m --limit 200 --repeats 3 --threads 2]
    .venv/bin/python benchmarks/eval_vs_lmeval.py --generation [--limit 200]   # greedy generation vs HF generate
    .venv/bin/python benchmarks/eval_vs_lmeval.py --profile [--limit 200]      # FLOP accounting only (no model run)

Log-likelihood mode, per task of the battery (ARC-Easy, ARC-Challenge, HellaSwag, PIQA, WinoGrande, BoolQ,
MMLU 0-shot — lm-eval's ``mmlu/default`` template with the per-subject description rendered per row, one
config over the local all-subjects file; acc only, as lm-eval's mmlu reports):

* **Same items.** prunelab's own task (``evaluate``) and lm-eval 0.4.13's own YAML task definition (the bridge,
  ``prunelab.evaluate.lmeval_bridge``: ``include:`` of lm-eval's file, ``dataset_path: json`` on the shared
  local file) over ``seeded_sample(rows, limit, seed)`` — the same rows, checked by item id.
* **Timed the same way.** Excluded on both sides: model load, lm-eval's ``HFLM`` wrapper and ``TaskManager``
  index (built once), and one untimed warm-up call per task and side (fills the datasets / loader caches).
  Timed: one whole evaluation call per task (each side's item loading, prompt building, tokenisation,
  forwards, metrics), same torch threads, order alternating every repeat, ``--repeats`` (≥ 3) repeats,
  medians. Wall and process-CPU seconds are both printed (CPU time is the steadier one on a shared machine).
* **Compared per item.** Number of items whose prediction differs (``argmax`` log-likelihood; and the
  ``acc_norm`` verdict where the task has it), max |Δ log-likelihood| over all choices, the metrics.
* **Ratio** lm-eval ÷ prunelab per task and over the battery (sum of the per-task medians).
* **Bound.** The FLOP ratio of what lm-eval computes (every request's full input through decoder and LM head,
  right-padded batches of ``--lmeval-batch`` sorted by length, one-token continuations deduplicated) to the
  least prunelab must compute (each item's shared prefix once, each distinct continuation branch once, the
  LM head only at the continuation positions, no padding) — the speed-up a faster engine cannot exceed
  without FLOP-per-second gains. ``--profile`` prints this accounting without running the model.

``--bridge`` adds a third side, timed and alternated the same way: lm-eval's own ``simple_evaluate`` with its
log-likelihood requests on prunelab's engine (``prunelab.evaluate.lmeval_engine.PackedHFLM``, what
``prunelab eval --backend lm-eval`` runs by default), compared per item with plain HFLM (predictions, metrics,
max |Δ log-likelihood|) and its ratio HFLM ÷ engine printed per task and over the battery.

``--generation``: ``arc_easy_gen`` and ``lambada_gen`` prompts (raw protocol), greedy, ≤ 10 new tokens:
prunelab's ``generate_greedy`` (length-sorted, left-padded batches, KV-cached) vs Hugging Face ``generate`` one
prompt at a time with the same settings on the same items (one untimed warm-up call per side and task, then
``--repeats`` alternating repeats, medians); identical outputs are counted, ratio printed.

Exit code 1 when any per-item prediction differs (or generation outputs differ).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's progress bars would interleave with the table

BATTERY = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq", "mmlu"]


@dataclass
class Timing:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, w: float, c: float) -> None:
        self.wall.append(w)
        self.cpu.append(c)

    @property
    def median(self) -> tuple[float, float]:
        return statistics.median(self.wall), statistics.median(self.cpu)


def timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


# ------------------------------------------------------------------------------------------------ FLOP model
def flop_bound(model, tokenizer, name: str, limit: int, seed: int, lmeval_batch: int) -> dict[str, float]:
    """FLOPs lm-eval computes vs the least prunelab must compute for the task's items (module docstring).

    Per query token: 2·(non-embedding linear weights) for the decoder, 2·H·V for the LM head; attention
    4·H·(keys) per layer (QKᵀ and AV), keys = the causal prefix (padded rows: the padded width)."""
    from prunelab.data import seeded_sample
    from prunelab.evaluate.loglik import encode_pair, max_length
    from prunelab.evaluate.registry import TASKS  # noqa: F401  (registers tasks)
    from prunelab.evaluate.tasks._common import mc_requests

    cfg = model.config
    head = model.get_output_embeddings().weight
    n_layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    linear = 2 * sum(p.numel() for n, p in model.named_parameters()
                     if p.dim() == 2 and "embed" not in n and "lm_head" not in n)
    head_f = 2 * head.numel()
    att = 4 * hidden * n_layers
    items = seeded_sample(_loader(name)(), limit, seed)
    limit_len = max_length(model, tokenizer)
    lm_inputs: dict[tuple, int] = {}
    ideal = 0.0
    for it in items:
        seqs = []
        cont_tokens = 0
        for c, x in mc_requests(it):
            ctx, cont = encode_pair(tokenizer, c, x)
            seq = (ctx + cont)[-(limit_len + 1):][:-1]
            lm_inputs.setdefault(tuple(ctx + cont[:-1]), len(seq))  # lm-eval's one-token-continuation cache
            seqs.append(tuple(seq))
            cont_tokens += len(cont)
        distinct = list(dict.fromkeys(seqs))
        p = len(distinct[0]) if len(distinct) == 1 else _common_prefix(distinct)
        nodes = p + sum(len(s) - p for s in distinct)
        ideal += nodes * linear + cont_tokens * head_f + sum(len(s) ** 2 / 2 for s in distinct) * att
    lens = sorted(lm_inputs.values(), reverse=True)
    lm = 0.0
    for i in range(0, len(lens), lmeval_batch):
        b = lens[i:i + lmeval_batch]
        lm += len(b) * b[0] * (linear + head_f) + len(b) * b[0] ** 2 * att  # right-padded, dense attention
    real = sum(lens) * (linear + head_f)
    return {"lmeval": lm, "ideal": ideal, "pad_waste": 1 - real / (sum(len(b) * b[0] for b in
            [lens[i:i + lmeval_batch] for i in range(0, len(lens), lmeval_batch)]) * (linear + head_f))}


def _common_prefix(seqs) -> int:
    n = min(len(s) for s in seqs)
    p = 0
    while p < n and all(s[p] == seqs[0][p] for s in seqs[1:]):
        p += 1
    return p


def _loader(name: str):
    from prunelab.data import load_arc, load_boolq, load_hellaswag, load_mmlu, load_piqa, load_winogrande

    return {"arc_easy": lambda: load_arc("easy"), "arc_challenge": lambda: load_arc("challenge"),
            "hellaswag": load_hellaswag, "piqa": load_piqa, "winogrande": load_winogrande, "boolq": load_boolq,
            "mmlu": lambda: load_mmlu(0)}[name]


# ------------------------------------------------------------------------------------------------ lm-eval side
class LmEvalRunner:
    """lm-eval's ``simple_evaluate`` on the bridge's task configs, HFLM and TaskManager built once."""

    def __init__(self, model, tokenizer, names: list[str], batch_size: int, packed: bool = False) -> None:
        """``packed``: lm-eval on prunelab's engine (``PackedHFLM``, the bridge's default) instead of plain HFLM."""
        import contextlib

        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        from prunelab.evaluate.lmeval_bridge import task_configs
        from prunelab.evaluate.lmeval_engine import PackedHFLM

        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(task_configs(names))
        self.tm = TaskManager(include_path=str(tmp))
        self.lm = (PackedHFLM if packed else HFLM)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)

    def run(self, name: str, indices: list[int]):
        import lm_eval

        key = f"prunelab_{name}"
        out = lm_eval.simple_evaluate(model=self.lm, tasks=[key], task_manager=self.tm, samples={key: indices},
                                      bootstrap_iters=0, log_samples=True)
        samples = sorted(out["samples"][key], key=lambda s: s["doc_id"])
        return {"metrics": {k.split(",")[0]: 100.0 * v for k, v in out["results"][key].items()
                            if k in ("acc,none", "acc_norm,none")},
                "lls": [[float(r[0][0]) for r in s["resps"]] for s in samples],
                "acc_norm": [s.get("acc_norm") for s in samples]}

    def close(self) -> None:
        self._stack.close()


def argmax_first(values):
    from prunelab.evaluate.tasks._common import argmax_first as f

    return f(values)


# ------------------------------------------------------------------------------------------------ modes
def run_loglik(args, lm) -> int:
    import torch

    from prunelab.evaluate import evaluate
    from prunelab.evaluate.lmeval_bridge import item_ids, sample_indices
    from prunelab.evaluate.tasks._common import mc_completion_len

    names = args.tasks
    print(f"model {lm.source}; tasks {', '.join(names)}; limit {args.limit}, seed {args.seed}; prunelab batch "
          f"{args.batch_size} (× 256 packed tokens), lm-eval batch {args.lmeval_batch} requests; "
          f"{torch.get_num_threads()} threads; {args.repeats} repeats, alternating", flush=True)
    runner = LmEvalRunner(lm.model, lm.tokenizer, names, args.lmeval_batch)
    bridge = LmEvalRunner(lm.model, lm.tokenizer, names, args.batch_size, packed=True) if args.bridge else None
    indices = {n: sample_indices(n, args.limit, args.seed) for n in names}
    sides = {"ours": {n: (lambda n=n: evaluate(lm.model, lm.tokenizer, [n], limit=args.limit, seed=args.seed,
                                              batch_size=args.batch_size).results[n]) for n in names},
             "theirs": {n: (lambda n=n: runner.run(n, indices[n])) for n in names}}
    if bridge is not None:
        sides["bridge"] = {n: (lambda n=n: bridge.run(n, indices[n])) for n in names}
    for n in names:  # warm-up (untimed): data caches, lm-eval's dataset arrow cache, allocator
        for fns in sides.values():
            fns[n]()
    timing = {side: {n: Timing() for n in names} for side in sides}
    t_ours, t_theirs = timing["ours"], timing["theirs"]
    last: dict[str, tuple] = {}
    got_bridge: dict[str, dict] = {}
    for rep in range(args.repeats):
        for n in names:
            order = list(sides)
            order = order[rep % len(order):] + order[:rep % len(order)]  # each side first in turn
            got = {}
            for side in order:
                got[side], w, c = timed(sides[side][n])
                timing[side][n].add(w, c)
            last[n] = (got["ours"], got["theirs"])
            if bridge is not None:
                got_bridge[n] = got["bridge"]
            print(f"  repeat {rep + 1} {n:14} prunelab {t_ours[n].wall[-1]:6.1f} s wall {t_ours[n].cpu[-1]:6.1f} s cpu"
                  f" | lm-eval {t_theirs[n].wall[-1]:6.1f} s wall {t_theirs[n].cpu[-1]:6.1f} s cpu"
                  + (f" | lm-eval on the engine {timing['bridge'][n].wall[-1]:6.1f} s wall" if bridge else ""),
                  flush=True)
    runner.close()
    if bridge is not None:
        bridge.close()

    print(f"\n{'task':14} {'items':>5} {'acc p/l':>13} {'acc_norm p/l':>13} {'Δpred':>5} {'max|Δll|':>9} "
          f"{'prunelab s':>10} {'lm-eval s':>9} {'ratio':>6} {'cpu ratio':>9} {'bound':>6} {'of bound':>8}")
    ok = True
    tot = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    for n in names:
        ours, theirs = last[n]
        same_items = ours.item_ids == item_ids(n, indices[n])
        lls_o, lls_t = ours.details["loglikelihoods"], theirs["lls"]
        diff = max(abs(a - b) for u, v in zip(lls_o, lls_t) for a, b in zip(u, v))
        items = {it.id: it for it in _loader(n)()}
        n_diff = 0
        for iid, u, v, norm_t in zip(ours.item_ids, lls_o, lls_t, theirs["acc_norm"]):
            it = items[iid]
            pred_norm = argmax_first([ll / mc_completion_len(c) for ll, c in zip(u, it.choices)])
            norm_o = float(pred_norm == it.answer)
            n_diff += argmax_first(u) != argmax_first(v) or (norm_t is not None and norm_o != float(norm_t))
        ok &= same_items and n_diff == 0
        (wo, co), (wt, ct) = t_ours[n].median, t_theirs[n].median
        fb = flop_bound(lm.model, lm.tokenizer, n, args.limit, args.seed, args.lmeval_batch)
        bound = fb["lmeval"] / fb["ideal"]
        tot = [tot[0] + wo, tot[1] + wt, tot[2] + co, tot[3] + ct, tot[4] + fb["lmeval"], tot[5] + fb["ideal"]]
        m_o, m_t = ours.metrics, theirs["metrics"]
        accs = f"{m_o['acc']:5.1f}/{m_t.get('acc', float('nan')):5.1f}"
        norms = (f"{m_o['acc_norm']:5.1f}/{m_t['acc_norm']:5.1f}" if "acc_norm" in m_t else f"{'—':>11}")
        print(f"{n:14} {ours.n:5d} {accs:>13} {norms:>13} {n_diff:5d} {diff:9.1e} {wo:10.1f} {wt:9.1f} "
              f"{wt / wo:5.2f}x {ct / co:8.2f}x {bound:5.2f}x {100 * (wt / wo) / bound:7.0f}%"
              + ("" if same_items else "  ITEMS DIFFER"))
    print(f"{'battery':14} {'':5} {'':>13} {'':>13} {'':5} {'':9} {tot[0]:10.1f} {tot[1]:9.1f} "
          f"{tot[1] / tot[0]:5.2f}x {tot[3] / tot[2]:8.2f}x {tot[4] / tot[5]:5.2f}x {100 * tot[1] / tot[0] / (tot[4] / tot[5]):7.0f}%")
    print("ratio = lm-eval ÷ prunelab median wall time; bound = lm-eval FLOPs ÷ least FLOPs prunelab must compute; "
          f"per-item predictions identical: {ok}")
    if bridge is not None:
        # the bridge (``prunelab eval --backend lm-eval``): lm-eval's own tasks and metrics, its log-likelihood
        # requests on prunelab's engine (PackedHFLM), against the same lm-eval with plain HFLM
        print(f"\n{'task':14} {'Δpred':>5} {'max|Δll|':>9} {'engine s':>9} {'HFLM s':>8} {'ratio':>6}")
        tb = [0.0, 0.0]
        for n in names:
            _, theirs = last[n]
            mine = got_bridge[n]
            diff = max(abs(a - b) for u, v in zip(mine["lls"], theirs["lls"]) for a, b in zip(u, v))
            n_diff = sum(argmax_first(u) != argmax_first(v) or a != b
                         for u, v, a, b in zip(mine["lls"], theirs["lls"], mine["acc_norm"], theirs["acc_norm"]))
            ok &= n_diff == 0 and mine["metrics"] == theirs["metrics"]
            wb, wt = timing["bridge"][n].median[0], t_theirs[n].median[0]
            tb = [tb[0] + wb, tb[1] + wt]
            print(f"{n:14} {n_diff:5d} {diff:9.1e} {wb:9.1f} {wt:8.1f} {wt / wb:5.2f}x")
        print(f"{'battery':14} {'':5} {'':9} {tb[0]:9.1f} {tb[1]:8.1f} {tb[1] / tb[0]:5.2f}x")
        print(f"lm-eval on prunelab's engine (the bridge) vs lm-eval's HFLM; predictions and metrics identical: {ok}")
    return 0 if ok else 1


def run_profile(args, lm) -> int:
    print(f"{'task':14} {'lm-eval TFLOP':>13} {'pad waste':>9} {'least TFLOP':>11} {'bound':>6}")
    a = b = 0.0
    for n in args.tasks:
        fb = flop_bound(lm.model, lm.tokenizer, n, args.limit, args.seed, args.lmeval_batch)
        a, b = a + fb["lmeval"], b + fb["ideal"]
        print(f"{n:14} {fb['lmeval'] / 1e12:13.2f} {100 * fb['pad_waste']:8.0f}% {fb['ideal'] / 1e12:11.2f} "
              f"{fb['lmeval'] / fb['ideal']:5.2f}x")
    print(f"{'battery':14} {a / 1e12:13.2f} {'':9} {b / 1e12:11.2f} {a / b:5.2f}x")
    return 0


def run_generation(args, lm) -> int:
    import torch

    from prunelab.evaluate.generation import generate_greedy
    from prunelab.evaluate.loglik import prefix_token_id
    from prunelab.evaluate.tasks.generative import (MAX_NEW_TOKENS, arc_prompt, lambada_eval_items,
                                                    lambada_prompt)
    from prunelab.data import load_arc, seeded_sample

    tok, model = lm.tokenizer, lm.model
    prompts = {"arc_easy_gen": [arc_prompt(tok, it.query, it.choices, "raw")
                                for it in seeded_sample(load_arc("easy", "test"), args.limit, args.seed)],
               "lambada_gen": [lambada_prompt(tok, it.context, "raw") for it in lambada_eval_items(args.limit, args.seed)]}
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else prefix_token_id(tok)

    @torch.inference_mode()
    def hf_one_at_a_time(ps):
        out = []
        for p in ps:
            ids = torch.tensor([tok.encode(p)])
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW_TOKENS,
                                 do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=pad_id, eos_token_id=tok.eos_token_id)
            new = gen[0, ids.shape[1]:].tolist()
            if tok.eos_token_id in new:
                new = new[:new.index(tok.eos_token_id)]
            out.append(tok.decode(new, skip_special_tokens=True))
        return out

    print(f"model {lm.source}; greedy ≤ {MAX_NEW_TOKENS} new tokens; limit {args.limit}; prunelab batch "
          f"{args.batch_size}; HF generate one prompt at a time; {torch.get_num_threads()} threads", flush=True)
    ok = True
    tot = [0.0, 0.0]
    for name, ps in prompts.items():
        t_o, t_h = Timing(), Timing()
        outs = {}
        order = [("ours", lambda: generate_greedy(model, tok, ps, MAX_NEW_TOKENS, args.batch_size)),
                 ("hf", lambda: hf_one_at_a_time(ps))]
        for _, fn in order:  # warm-up (untimed), as in log-likelihood mode: first calls per shape are slow
            fn()
        for rep in range(args.repeats):
            for side, fn in (reversed(order) if rep % 2 else order):
                outs[side], w, c = timed(fn)
                (t_o if side == "ours" else t_h).add(w, c)
        same = sum(a == b for a, b in zip(outs["ours"], outs["hf"]))
        ok &= same == len(ps)
        (wo, co), (wh, ch) = t_o.median, t_h.median
        tot = [tot[0] + wo, tot[1] + wh]
        print(f"{name:14} {len(ps):5d} items, identical outputs {same}/{len(ps)}; prunelab {wo:6.1f} s, "
              f"HF generate {wh:6.1f} s; ratio {wh / wo:5.2f}x (cpu {ch / co:5.2f}x)", flush=True)
    print(f"{'both':14} ratio {tot[1] / tot[0]:5.2f}x; outputs identical: {ok}")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default=",".join(BATTERY), help="comma-separated subset of the battery")
    ap.add_argument("--limit", type=int, default=200, help="items per task (seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8, help="prunelab batch (evaluate's batch_size)")
    ap.add_argument("--lmeval-batch", type=int, default=32, help="lm-eval HFLM batch size (requests)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both sides")
    ap.add_argument("--repeats", type=int, default=3)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--generation", action="store_true", help="greedy generation vs HF generate")
    ap.add_argument("--bridge", action="store_true",
                    help="also time lm-eval on prunelab's engine (PackedHFLM, the bridge's default) against HFLM")
    mode.add_argument("--profile", action="store_true", help="FLOP accounting only")
    args = ap.parse_args()
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in args.tasks if t not in BATTERY]
    if bad:
        ap.error(f"unknown task {bad[0]}; the battery is {', '.join(BATTERY)}")

    import torch

    torch.set_num_threads(args.threads)
    import prunelab
    from prunelab.cli._common import quiet_libraries

    quiet_libraries()
    lm = prunelab.load(args.model)
    lm.model.eval()
    if args.profile:
        return run_profile(args, lm)
    if args.generation:
        return run_generation(args, lm)
    return run_loglik(args, lm)


if __name__ == "__main__":
    sys.exit(main())
