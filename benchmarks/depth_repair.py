"""Depth pruning with and without compensation (ReplaceMe ``linear``, Prune&Comp-style ``scale``), one run.

For each search (default greedy and one-shot, perplexity objective) the k blocks are chosen once on the calibration
tokens (LAMBADA calibration pool, disjoint from the evaluated text); every compensation then starts from a fresh copy
of the dense model with the *same* removed blocks and the *same* calibration tokens. Reported per cell: parameters,
WikiText-2 perplexity over the whole test file (every 512-token window unless ``--ppl-windows``), ARC-Easy
log-likelihood accuracy on ``--arc-limit`` items, the compensation's wall time, and against the uncompensated cell
of the same search: the perplexity ratio (paired bootstrap CI over windows) and the ARC-Easy difference (paired
bootstrap CI over items, McNemar p), from :mod:`prunelab.stats`. Goal (issue 19): compensated perplexity ≤ 0.6×
the uncompensated one at k = 7, for greedy and for one-shot.

Also per cell: the forward latency ([4 × 128] tokens, median of ``--latency-reps`` rounds timed interleaved across
the cells of a search, after their evaluations) — compensation is folded into existing weights, so it must not
change. ``--calib-source wikitext-oracle`` compensates on the evaluated windows themselves (same blocks): an
in-sample upper bound on what the compensation can reach, never a result. ``--calib-source wikitext-crossfit``
compensates twice, on ``--oracle-windows`` windows of each half of the test file, and scores each half with the
model compensated on the other half (the whole file, disjoint calibration, WikiText-2's format). ``--quick`` checks the script end to end
in about a minute (one-shot only, 9 × 64 calibration tokens, 1 window, 10 items; 83 s measured with another job
holding one of the 2 cores).
The full run (defaults below) takes ≈ 1.5–2 h on an idle 2-core CPU: 7 evaluations (dense, 2 searches × 3
compensations) of the whole WikiText-2 test file (590 windows) + 500 ARC-Easy items at ≈ 11 min each, plus the
greedy search (189 cached candidates on 32 × 128 tokens, ≈ 10 min). ``--compensated-search`` adds, per search and
compensation, a search scoring every candidate after compensation (greedy: 189 candidates × ≈ 76 uncached block
passes over the 4096 calibration tokens ≈ 1 h; one-shot ≈ 10 min) and 2 more evaluations: ≈ 5.5 h in all.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/depth_repair.py [--quick] \\
        [--k 7 --searches greedy,one-shot --compensations none,linear,scale --calib-samples 32 --calib-seq-len 128 \\
         --ppl-windows 0 --arc-limit 500 --json depth_repair.json]
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

from prunelab.evaluate.efficiency import forward_latency  # noqa: E402


from benchmarks.ci_format import span  # noqa: E402
from benchmarks.calibration_sources import (CROSSFIT, HELDOUT, HELDOUT_GAP, ORACLE, SOURCES, crossfit_folds,  # noqa: E402
                                           crossfit_note, held_out_windows, leading_text)

#: issue 19's depth goal: compensated perplexity ≤ GOAL × the uncompensated one (same search, same blocks)
GOAL = 0.6

#: ``--quick``: an end-to-end smoke check, not a measurement — one-shot only (greedy k = 7 alone takes minutes), the
#: fewest calibration tokens linear accepts (9 × 64 = 576 = SmolLM2's hidden size), 1 window, 10 items
QUICK = ["--searches", "one-shot", "--calib-samples", "9", "--calib-seq-len", "64", "--ppl-windows", "1",
         "--arc-limit", "10", "--latency-reps", "1"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--searches", default="greedy,one-shot")
    ap.add_argument("--compensations", default="none,linear,scale")
    ap.add_argument("--calib-samples", type=int, default=32, help="calibration windows (LAMBADA calibration pool)")
    ap.add_argument("--calib-seq-len", type=int, default=128)
    ap.add_argument("--calib-source", default="lambada", choices=SOURCES,
                    help=f"calibration text of the compensations (the search always uses LAMBADA, so every source "
                         f"compensates the same blocks). {ORACLE}: the first --oracle-windows evaluated WikiText-2 "
                         f"windows themselves (512 tokens each): an in-sample upper bound on what the compensation can "
                         f"reach, never a result. {HELDOUT}: --oracle-windows windows of the same file that are *not* "
                         f"evaluated (after the --ppl-windows evaluated ones and --heldout-gap more), so the text is "
                         f"disjoint but the format is WikiText-2's (needs --ppl-windows > 0). {CROSSFIT}: the whole file, "
                         f"each half scored by a model compensated on --oracle-windows windows of the other half "
                         f"(--heldout-gap windows from the split, no article in both; ARC-Easy and latency use the "
                         f"first half's model)")
    ap.add_argument("--oracle-windows", type=int, default=256,
                    help=f"with --calib-source {ORACLE} / {HELDOUT}: how many windows calibrate the compensations")
    ap.add_argument("--heldout-gap", type=int, default=HELDOUT_GAP,
                    help=f"with --calib-source {HELDOUT} / {CROSSFIT}: windows skipped between the scored and the calibration "
                         f"windows (≈ 1.5 articles: the file has 62 articles in 590 windows), so no article is in both")
    ap.add_argument("--ridge", type=float, default=None, help="relative ridge of the linear map (default: auto)")
    ap.add_argument("--token-weights", default="normalized",
                    help="comma list of token weightings of the fits (normalized, uniform): each compensation is "
                         "run with each (prunelab.prune.repair.TOKEN_WEIGHTS)")
    ap.add_argument("--ppl-windows", type=int, default=0, help="WikiText-2 windows of 512 tokens (0: the whole file)")
    ap.add_argument("--arc-limit", type=int, default=500, help="ARC-Easy items (0: skip)")
    ap.add_argument("--text-windows", type=int, default=0,
                    help="smoke checks only: keep the first N windows of the WikiText-2 test file (0: all of it)")
    ap.add_argument("--skip-dense", action="store_true",
                    help="no dense row (its numbers do not depend on the compensation: an earlier run has them)")
    ap.add_argument("--removed", default=None,
                    help="comma list of blocks to remove instead of searching (e.g. the blocks a search chose in an "
                         "earlier run, to compare compensations without repeating the search); its cells are "
                         "labelled 'given'")
    ap.add_argument("--compensated-search", action="store_true",
                    help="also search with each compensation applied to every candidate (search_blocks(compensate=))")
    ap.add_argument("--latency-reps", type=int, default=7, help="forward passes timed per model (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="end-to-end check in about a minute: " + " ".join(QUICK))
    raw = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args([*QUICK, *raw] if "--quick" in raw else raw)  # flags given after QUICK override it

    import torch

    torch.set_num_threads(args.threads)
    from prunelab.atomic import to_jsonable, write_json
    from prunelab.data import calibration_batch, load_wikitext2_text
    from prunelab.evaluate import evaluate
    from prunelab.evaluate.efficiency import interleaved_latency
    from prunelab.evaluate.perplexity import leading_windows, merge_perplexity, perplexity, window_range_perplexity
    from prunelab.models import count_parameters, load
    from prunelab.prune.depth import search_blocks
    from prunelab.prune.depth_repair import COMPENSATIONS, compensate_and_remove
    from prunelab.prune.repair import DEFAULT_RIDGE, TOKEN_WEIGHTS
    from prunelab.errors import PrunelabError
    from prunelab.stats import accuracy_difference, mean_ci, perplexity_ratio

    if args.calib_source == HELDOUT and args.ppl_windows <= 0:
        raise SystemExit(f"--calib-source {HELDOUT} needs --ppl-windows > 0: the whole file leaves no held-out window")
    if args.calib_source == CROSSFIT and args.ppl_windows != 0:
        raise SystemExit(f"--calib-source {CROSSFIT} scores the whole file: it needs --ppl-windows 0")
    given = None  # --removed: checked before the model loads (the upper bound once its depth is known)
    if args.removed is not None:
        try:
            given = sorted({int(b) for b in args.removed.split(",") if b.strip()})
        except ValueError:
            raise SystemExit(f"--removed: a comma list of block indices, got {args.removed!r}") from None
        if not given or given[0] < 0:
            raise SystemExit(f"--removed: block indices ≥ 0, got {args.removed!r}")
        if args.compensated_search:
            raise SystemExit("--removed gives the blocks: it cannot be combined with --compensated-search")
    ridge = DEFAULT_RIDGE if args.ridge is None else args.ridge
    comps = COMPENSATIONS.parse_list(args.compensations)
    weightings = TOKEN_WEIGHTS.parse_list(args.token_weights)  # the first one also serves a compensated search
    lm = load(args.model)
    dense, tok = lm.model, lm.tokenizer
    text = load_wikitext2_text()
    if args.text_windows:
        text = leading_text(tok, text, args.text_windows)
    cal = calibration_batch(tok, n_samples=args.calib_samples, seq_len=args.calib_seq_len, source="lambada", seed=0)
    windows = args.ppl_windows or None
    comp_cal = cal
    folds = None  # CROSSFIT: each compensation fitted once per fold
    if args.calib_source == CROSSFIT:
        try:
            folds = crossfit_folds(tok, text, args.oracle_windows, args.heldout_gap)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        comp_cal = folds[0].calibration
        print(crossfit_note(folds), flush=True)
    elif args.calib_source == HELDOUT:
        try:
            comp_cal, note = held_out_windows(tok, text, args.ppl_windows, args.oracle_windows, args.heldout_gap)
        except ValueError as exc:  # e.g. an article in both
            raise SystemExit(str(exc)) from None
        print(note, flush=True)
    elif args.calib_source == ORACLE:
        comp_cal = leading_windows(tok, text, args.oracle_windows, 512)
        print(f"ORACLE: compensation calibrated on WikiText-2 test windows 0-{args.oracle_windows - 1}, the evaluated "
              f"text itself; every compensated number below is an in-sample upper bound, not a result", flush=True)
    elif args.calib_source != "lambada":
        comp_cal = calibration_batch(tok, n_samples=args.calib_samples, seq_len=args.calib_seq_len,
                                     source=args.calib_source, seed=0)
    print(f"{args.model}: k={args.k}, search calibration {tuple(cal.shape)} LAMBADA, compensation calibration "
          f"{tuple(comp_cal.shape)} {args.calib_source}, ridge "
          f"{'auto' if ridge is None else ridge}; WikiText-2 {'all' if windows is None else windows} 512-token windows; ARC-Easy "
          f"{args.arc_limit} items; torch threads {args.threads}", flush=True)

    x_latency = cal[:1, :128].repeat(4, 1)

    comp_cals = [comp_cal] if folds is None else [f.calibration for f in folds]

    def score(models):
        """``models``: one per compensation calibration (cross-fit: fold ``i``'s model scores fold ``i``'s windows);
        ARC-Easy uses the first."""
        model = models[0]
        if folds is None:
            ppl = perplexity(model, tok, text, seq_len=512, max_windows=windows)
        else:
            ppl = merge_perplexity([window_range_perplexity(m, tok, text, *f.scored) for m, f in zip(models, folds)])
        win = {str(i): (n, t) for i, (n, t) in enumerate(zip(ppl.window_nll, ppl.window_tokens))}
        arc = None
        if args.arc_limit > 0:
            res = evaluate(model, tok, tasks=["arc_easy"], limit=args.arc_limit).results["arc_easy"]
            arc = (res.metrics[res.primary], {i: o.correct for i, o in zip(res.item_ids, res.outcomes)})
        return ppl, win, arc

    def ci(d) -> dict:
        return {"estimate": d.estimate, "low": d.low, "high": d.high, "p": getattr(d, "p", None)}

    rows = []
    if not args.skip_dense:
        d_ppl, _, d_arc = score([dense] * len(comp_cals))
        rows.append({"search": "dense", "compensation": "-", "removed": [], "params": count_parameters(dense).total,
                     "ppl": d_ppl.perplexity, "windows": d_ppl.windows, "arc": d_arc[0] if d_arc else None,
                     "arc_ci": ci(mean_ci(d_arc[1])) if d_arc else None,
                     "forward_ms": 1000 * forward_latency(dense, x_latency, args.latency_reps)})
        print(f"dense: ppl {d_ppl.perplexity:.2f} over {d_ppl.windows} windows"
              + (f", ARC-Easy {d_arc[0]:.1f}" if d_arc else ""), flush=True)
    cells = [(s, "none") for s in args.searches.split(",")]
    if given is not None:
        n_blocks = dense.config.num_hidden_layers
        if any(b >= n_blocks for b in given):
            raise SystemExit(f"--removed: block indices in [0, {n_blocks}), got {args.removed!r}")
        cells = [("given", "none")]
    if args.compensated_search:
        cells += [(s, c) for s in args.searches.split(",") for c in comps if c != "none"]
    for search, searched_with in cells:
        t0 = time.perf_counter()
        if given is not None:
            from types import SimpleNamespace

            res = SimpleNamespace(removed=given, candidates=0)
        else:
            res = search_blocks(dense, args.k, "perplexity", search, calibration=cal, progress=False,
                                compensate=searched_with, ridge=ridge, token_weights=weightings[0])
        search_s = time.perf_counter() - t0
        if searched_with != "none":
            search = f"{search} (searched with {searched_with})"
        print(f"{search}: removed {res.removed} ({res.candidates} candidates, {search_s:.0f}s)", flush=True)
        base = None
        timed: list[tuple[dict, object]] = []  # this search's cells, timed together once all are evaluated
        compensated: list[tuple[dict, dict, tuple | None]] = []  # (row, per-window NLLs, ARC) of this search's cells
        variants = [(c, w) for c in (comps if searched_with == "none" else ["none", searched_with])
                    for w in (["uniform"] if c == "none" else weightings)]
        for comp, weighting in variants:
            models, reports, seconds = [], [], 0.0
            try:
                # "none" uses no calibration: one model serves every fold
                for c in (comp_cals if comp != "none" else comp_cals[:1]):
                    model = copy.deepcopy(dense)
                    t0 = time.perf_counter()
                    rep = compensate_and_remove(model, res.removed, c, comp, ridge, progress=False,
                                                token_weights=weighting)
                    seconds += time.perf_counter() - t0
                    models.append(model)
                    reports.append(rep)
                seconds /= len(models)  # per model
                if comp != "none" and len(weightings) > 1:
                    comp = f"{comp} ({weighting})"
            except PrunelabError as exc:  # e.g. linear refused for a run starting at block 0: report, keep going
                print(f"  {comp:7s} refused: {exc}", flush=True)
                rows.append({"search": search, "compensation": comp, "removed": res.removed, "error": str(exc)})
                continue
            model = models[0]
            ppl, win, arc = score(models * (len(comp_cals) // len(models)))
            del models
            row = {"search": search, "compensation": comp, "removed": res.removed, "search_s": search_s,
                   "params": count_parameters(model).total, "ppl": ppl.perplexity, "windows": ppl.windows,
                   "arc": arc[0] if arc else None, "arc_ci": ci(mean_ci(arc[1])) if arc else None,
                   "seconds": seconds,
                   "runs": [to_jsonable(r) for r in reports[0].runs]}
            if comp == "none":
                base = (ppl, win, arc, row)
            elif base is not None:
                row["ppl_ratio"] = ci(perplexity_ratio(base[1], win))
                # shown met only when the whole CI is below the goal; an estimate below it with the CI across it
                # cannot be told from just above
                row["goal_met"] = row["ppl_ratio"]["high"] <= GOAL
                row["goal_estimate_met"] = row["ppl_ratio"]["estimate"] <= GOAL
                if arc and base[2]:
                    row["arc_diff"] = ci(accuracy_difference(base[2][1], arc[1]))
            if comp != "none":
                # paired against every earlier compensation of this search (same windows, same items)
                for other, other_win, other_arc in compensated:
                    vs = {"ppl_ratio": ci(perplexity_ratio(other_win, win))}
                    if arc and other_arc:
                        vs["arc_diff"] = ci(accuracy_difference(other_arc[1], arc[1]))
                    row.setdefault("vs", {})[other["compensation"]] = vs
                compensated.append((row, win, arc))
            rows.append(row)
            extra = ""
            if "ppl_ratio" in row:
                pr = row["ppl_ratio"]
                extra = (f"  ppl compensated/uncompensated ×{span(pr, '.3f')}"
                         f" (goal ≤ {GOAL}: " + ("met, CI below" if row["goal_met"] else "not shown, CI across it"
                                               if row["goal_estimate_met"] else "not met") + ")")
            if "arc_diff" in row:
                ad = row["arc_diff"]
                extra += f"; ARC {ad['estimate']:+.1f} pp [{ad['low']:+.1f}, {ad['high']:+.1f}], p={ad['p']:.3g}"
            print(f"  {comp:7s} params {row['params'] / 1e6:.2f}M ppl {ppl.perplexity:9.2f}"
                  + (f" ARC-e {arc[0]:5.1f}" if arc else "") + f"  ({seconds:.1f}s){extra}", flush=True)
            for other, vs in row.get("vs", {}).items():
                print(f"    vs {other}: ppl ×{span(vs['ppl_ratio'], '.3f')}"
                      + (f"; ARC {vs['arc_diff']['estimate']:+.1f} pp [{vs['arc_diff']['low']:+.1f}, "
                         f"{vs['arc_diff']['high']:+.1f}]" if "arc_diff" in vs else ""), flush=True)
            timed.append((row, model))
            del model
        # latency after the evaluations, interleaved across this search's cells: timing each model right after its
        # own evaluation made weight-equivalent width models 6-11 % apart (prunelab.evaluate.efficiency)
        for (row, _), sec in zip(timed, interleaved_latency([m for _, m in timed], x_latency, args.latency_reps)):
            row["forward_ms"] = 1000 * sec
        for row, _ in timed:
            if base is not None and row is not base[3]:
                row["latency_ratio"] = row["forward_ms"] / base[3]["forward_ms"]
        print("  forward ms (interleaved): " + ", ".join(f"{r['compensation']} {r['forward_ms']:.1f}"
                                                          for r, _ in timed), flush=True)
        timed.clear()

    print("\n| search | compensation | params (M) | WikiText-2 ppl | compensated / uncompensated ppl [95% CI] | "
          "ARC-Easy % [95% CI] | Δ ARC pp vs none [95% CI] | compensation s | forward ms (× vs none) |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['search']} | {r['compensation']} | – | refused: {r['error']} | | | | | |")
            continue
        arc = "n/a" if r["arc"] is None else span(r["arc_ci"], ".1f")
        lat = f"{r['forward_ms']:.1f}" + (f" (×{r['latency_ratio']:.3f})" if "latency_ratio" in r else "")
        print(f"| {r['search']} | {r['compensation']} | {r['params'] / 1e6:.2f} | {r['ppl']:.2f} | "
              f"{span(r.get('ppl_ratio'), '.3f')} | {arc} | {span(r.get('arc_diff'), '+.1f')} | "
              + (f"{r['seconds']:.1f}" if "seconds" in r else "") + f" | {lat} |")
    if args.json:
        write_json(args.json, {"args": vars(args), "ridge": ridge, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
