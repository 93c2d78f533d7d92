"""Deployment speed in llama.cpp: does pruning make SmolLM2-135M faster where users run it? (issue 20)

Models (all from ``smollm2-135m``, exported with :func:`prunelab.export.export_gguf`):

* ``dense``;
* ``maw_hybrid-20`` / ``maw_hybrid-40``: uniform MLP width pruning (criterion ``maw_hybrid``; the q8_0 export
  zero-pads every width to a multiple of 32 so that ``ffn_down`` quantises, which is exact);
* ``adaptive-20`` / ``adaptive-40``: Adapt-Pruner per-layer widths and heads (``adapt_prune``, Taylor criterion;
  exported with llama.cpp's per-layer ``deci`` architecture);
* ``depth-7``: 7 of 30 blocks removed (one-shot perplexity search).

Each model is written as f32 and q8_0. Per outtype, every model is loaded once into llama.cpp with the same
threads, then timed round-robin (so machine noise hits all models alike) for ``--repeats`` rounds after a
warm-up: **pp** = prompt processing of ``--pp`` tokens in one ``eval`` (only the last position's logits, as
llama-bench), **tg** = ``--tg`` single-token ``eval`` steps after a 16-token prefix. Medians per model, and each
as a ratio to dense *from the same run*, beside two FLOP ratios: Kaplan et al. 2020's non-embedding
``2·N + attention`` (:func:`prunelab.models.flops_per_token`) and the same plus the LM-head matmul
(``2·vocab·hidden``; SmolLM2 ties it to the embeddings, so it is not in N, but llama.cpp still computes it for
every generated token, and pruning never shrinks it). The issue's goal: generation speed-up ≥ 0.8 of the
FLOP ideal for the 40 % models, reported as ``tg speed-up / FLOP speed-up`` for both FLOP counts. Timing uses
llama.cpp's default f16 KV cache (what users run); weight repacking is off (see
:func:`prunelab.export.llamacpp.open_gguf`: it segfaults on Q4/Q8 files in this build).

With ``--ppl`` it also computes WikiText-2 perplexity through llama.cpp on exactly prunelab's windows
(:func:`prunelab.export.llamacpp.perplexity_of_ids`) for the f32 and q8_0 files, beside prunelab's own, and
flags any f32 model off by more than 1 %.

    python benchmarks/llamacpp_speed.py [--threads 2 --repeats 7 --pp 128 --tg 64 --work /tmp/prunelab-llamacpp]
                                        [--models dense,maw_hybrid-40,...] [--ppl --ppl-windows 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

MODELS = ("dense", "maw_hybrid-20", "maw_hybrid-40", "adaptive-20", "adaptive-40", "depth-7")


def build(kind: str, args):
    """A freshly loaded SmolLM2 pruned as ``kind`` (and a short recipe string)."""
    import prunelab

    lm = prunelab.load("smollm2-135m", dtype="float32")
    model, tok = lm.model, lm.tokenizer
    if kind == "dense":
        return model, tok, "dense"
    name, _, pct = kind.partition("-")
    if name == "maw_hybrid":
        from prunelab.prune.width import prune_width

        prune_width(model, tok, criterion="maw_hybrid", ratio=int(pct) / 100, round_to=args.round_to,
                    calibration_samples=args.calib_samples, progress=False)
        return model, tok, f"prune_width(maw_hybrid, ratio={int(pct) / 100}, round_to={args.round_to})"
    if name == "adaptive":
        from prunelab.prune.adaptive import adapt_prune

        adapt_prune(model, tok, ratio=int(pct) / 100, calibration_samples=args.calib_samples)
        return model, tok, f"adapt_prune(taylor, ratio={int(pct) / 100}, A=0.02, steps=10)"
    if name == "depth":
        from prunelab.models import remove_layers
        from prunelab.prune.depth import search_blocks

        res = search_blocks(model, int(pct), "perplexity", "one-shot", tokenizer=tok, progress=False,
                            calibration_options={"n_samples": min(args.calib_samples, 32)})
        remove_layers(model, res.removed)
        return model, tok, f"remove_layers({res.removed}) (one-shot perplexity search)"
    raise SystemExit(f"unknown model {kind}; known: {', '.join(MODELS)}")


def flops(model, context: int) -> dict:
    from prunelab.models import flops_per_token
    from prunelab.models.adapters import adapter_for

    emb = adapter_for(model).embeddings(model).weight
    kaplan = flops_per_token(model, context_len=context)
    return {"kaplan": kaplan, "with_lm_head": kaplan + 2 * emb.shape[0] * emb.shape[1]}


def time_model(llm, prompt: list[int], tg: int) -> tuple[float, float]:
    """(pp tokens/s, tg tokens/s) of one round."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    pp = len(prompt) / (time.perf_counter() - t0)
    llm.reset()
    llm.eval(prompt[:16])
    steps = prompt[16:16 + tg] if len(prompt) >= 16 + tg else (prompt * (tg // len(prompt) + 2))[16:16 + tg]
    t0 = time.perf_counter()
    for tok in steps:
        llm.eval([tok])
    return pp, tg / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--outtypes", default="f32,q8_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--pp", type=int, default=128, help="prompt tokens per pp measurement")
    ap.add_argument("--tg", type=int, default=64, help="generated tokens per tg measurement")
    ap.add_argument("--round-to", type=int, default=1)
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--work", type=Path, default=Path("/tmp/prunelab-llamacpp"))
    ap.add_argument("--ppl", action="store_true", help="also WikiText-2 perplexity: llama.cpp vs prunelab")
    ap.add_argument("--ppl-windows", type=int, default=None, help="windows of 512 tokens (default: all)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from prunelab.data import load_wikitext2_text
    from prunelab.evaluate.perplexity import perplexity_of_ids, tokenize_text
    from prunelab.export import export_gguf
    from prunelab.export.llamacpp import open_gguf, perplexity_of_ids as cpp_ppl

    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    outtypes = [o.strip() for o in args.outtypes.split(",") if o.strip()]
    if "dense" not in kinds:
        kinds.insert(0, "dense")  # ratios need dense measured in the same run
    args.work.mkdir(parents=True, exist_ok=True)
    text = load_wikitext2_text()
    info: dict[str, dict] = {}
    for kind in kinds:
        t0 = time.perf_counter()
        model, tok, recipe = build(kind, args)
        entry = {"recipe": recipe, "flops": flops(model, args.pp), "files": {}, "f16_fallback": {}}
        for ot in outtypes:
            path = args.work / f"{kind}.{ot}.gguf"
            rep = export_gguf(model, tok, path, outtype=ot, overwrite=True)
            entry["files"][ot] = str(path)
            entry["f16_fallback"][ot] = len(rep.f16_fallback)
            entry["architecture"] = rep.architecture
        if args.ppl:
            ids = tokenize_text(tok, text)
            ref = perplexity_of_ids(model, ids, seq_len=512, max_windows=args.ppl_windows)
            entry["ppl"] = {"prunelab_f32": ref.perplexity, "windows": ref.windows, "tokens": ref.tokens}
        entry["prompt"] = tokenize_text(tok, text)[: max(args.pp, 16 + args.tg)].tolist()
        info[kind] = entry
        print(f"built {kind}: {recipe} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
        del model
        gc.collect()

    results: dict[str, dict] = {k: {"recipe": v["recipe"], "architecture": v["architecture"], "flops": v["flops"],
                                    "f16_fallback_tensors": v["f16_fallback"]} for k, v in info.items()}
    for ot in outtypes:
        llms = {k: open_gguf(info[k]["files"][ot], n_ctx=max(args.pp, 16 + args.tg) + 8, n_threads=args.threads,
                             logits_all=False, n_batch=max(args.pp, 16), kv_f32=False) for k in kinds}
        prompt = info["dense"]["prompt"]
        samples = {k: {"pp": [], "tg": []} for k in kinds}
        for k in kinds:  # warm-up
            time_model(llms[k], prompt[: args.pp], min(args.tg, 8))
        for _ in range(args.repeats):
            for k in kinds:
                pp, tg = time_model(llms[k], prompt[: args.pp], args.tg)
                samples[k]["pp"].append(pp)
                samples[k]["tg"].append(tg)
        med = {k: {m: statistics.median(v) for m, v in s.items()} for k, s in samples.items()}
        for k in kinds:
            d, f = med["dense"], results[k]["flops"]
            fd = results["dense"]["flops"]
            results[k][ot] = {
                "pp_tok_s": med[k]["pp"], "tg_tok_s": med[k]["tg"], "pp_samples": samples[k]["pp"],
                "tg_samples": samples[k]["tg"], "pp_speedup": med[k]["pp"] / d["pp"],
                "tg_speedup": med[k]["tg"] / d["tg"],
                "flop_speedup_kaplan": fd["kaplan"] / f["kaplan"],
                "flop_speedup_with_lm_head": fd["with_lm_head"] / f["with_lm_head"],
            }
            r = results[k][ot]
            # "speed-up ≥ 0.8 of the FLOP ideal": measured speed-up / FLOP speed-up (1.0 = as fast as FLOPs promise)
            r["tg_fraction_of_flop_ideal_kaplan"] = r["tg_speedup"] / r["flop_speedup_kaplan"]
            r["tg_fraction_of_flop_ideal_with_lm_head"] = r["tg_speedup"] / r["flop_speedup_with_lm_head"]
        del llms
        gc.collect()

    if args.ppl:
        import prunelab

        tok = prunelab.load("smollm2-135m").tokenizer
        ids = tokenize_text(tok, text)
        for k in kinds:
            for ot in outtypes:
                llm = open_gguf(info[k]["files"][ot], n_ctx=512, n_threads=args.threads)
                got = cpp_ppl(llm, ids, seq_len=512, max_windows=args.ppl_windows)
                info[k]["ppl"][f"llamacpp_{ot}"] = got.perplexity
                del llm
            p = info[k]["ppl"]
            if "llamacpp_f32" in p:
                p["f32_relative_difference"] = p["llamacpp_f32"] / p["prunelab_f32"] - 1
                p["within_1_percent"] = abs(p["f32_relative_difference"]) < 0.01
            results[k]["ppl"] = p

    print(f"\nllama.cpp speed, SmolLM2-135M, {args.threads} threads, pp {args.pp} / tg {args.tg} tokens, "
          f"median of {args.repeats} (ratios to dense from this run)")
    header = "| model | outtype | pp tok/s | tg tok/s | pp × | tg × | FLOP × (Kaplan) | FLOP × (+LM head) | tg / ideal (Kaplan, +head) |"
    print(header)
    print("|---" * 9 + "|")
    for k in kinds:
        for ot in outtypes:
            r = results[k][ot]
            frac = f"{r['tg_fraction_of_flop_ideal_kaplan']:.2f}, {r['tg_fraction_of_flop_ideal_with_lm_head']:.2f}"
            print(f"| {k} | {ot} | {r['pp_tok_s']:.0f} | {r['tg_tok_s']:.1f} | {r['pp_speedup']:.2f} | "
                  f"{r['tg_speedup']:.2f} | {r['flop_speedup_kaplan']:.2f} | {r['flop_speedup_with_lm_head']:.2f} | "
                  f"{frac} |")
    if args.ppl:
        print("\n| model | windows | prunelab f32 | llama.cpp f32 | Δ f32 | llama.cpp q8_0 |")
        print("|---|---|---|---|---|---|")
        for k in kinds:
            p = results[k]["ppl"]
            print(f"| {k} | {p['windows']} | {p['prunelab_f32']:.3f} | {p.get('llamacpp_f32', float('nan')):.3f} | "
                  f"{100 * p.get('f32_relative_difference', float('nan')):+.3f} % | "
                  f"{p.get('llamacpp_q8_0', float('nan')):.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.ppl and not all(results[k]["ppl"].get("within_1_percent", True) for k in kinds):
        sys.exit(1)


if __name__ == "__main__":
    main()
