"""Evaluation time of the studies before and after the packed log-likelihood engine (issue 18).

    .venv/bin/python benchmarks/study_eval_time.py [--repeats 3 --threads 2]
    .venv/bin/python benchmarks/study_eval_time.py --repeats 1 --arc-limit 20 --lambada-limit 20   # smoke check

* **The model of the main job.** ``prunelab.load("smollm2-135m")`` (fp32 on CPU, as ``dtype: auto``), width-pruned
  as ``examples/quickstart.yaml``'s pruning says (``prune_width(criterion="maw_hybrid", ratio=0.2,
  calibration_samples=32, calibration_seq_len=128, calibration_source="wikitext2", seed=0)`` — the arguments
  the experiment runner's prepare stage, ``prunelab.experiments.stages._prune``, passes for that spec).
* **One evaluation phase, as the runner runs it.** ``prunelab.experiments.stages.real_evaluate`` with the spec's
  ``eval`` section (ARC-Easy 250 + LAMBADA 200 items, log-likelihood, batch 8, item seed 0), called once per task
  so each task's time is known (``real_evaluate`` already makes one ``evaluate`` call per distinct item limit,
  i.e. one per task here, so the sum is the phase). ``--arc-limit`` / ``--lambada-limit`` shrink it.
* **Two engines.** ``packed`` (default; :mod:`prunelab.evaluate.loglik`: shared context once per item, bin-packed
  rows, LM head only where scored) and ``reference`` (``with use_engine("reference")``: one unpadded forward per
  request, :func:`prunelab.evaluate.loglik.loglikelihood_reference`). One untimed packed warm-up phase (data
  loading caches), then ``--repeats`` repeats alternating which engine goes first, medians; same torch threads
  (``--threads``). Wall and process-CPU seconds (CPU time is the steadier one on a shared machine).
* **Same verdicts.** Every repeat asserts identical per-item predictions and correctness between the engines
  (exit 1 otherwise) and prints the largest |Δ log-likelihood|.
* **The studies' evaluation time.** Phases counted from ``prunelab.experiments.spec.expand(load_spec(path))``
  for ``examples/quickstart.yaml`` (the main job) and ``examples/cpu-study.yaml``, as
  ``prunelab.experiments.execute.execute_run`` runs them: a baseline evaluates once (all eval tasks); a treated
  run evaluates after recovery, again after relapse (when ``stress.relapse`` is set), and once per chronic cycle
  ``1..cycles`` on ``chronic.tasks`` (cycle 0 reuses the eval phase when it covers those tasks,
  ``stages.real_chronic(before=...)``). Implied time = Σ phases × the measured per-task medians. Runs on other
  prunings (cpu-study's transfer part: 40 % width, 6 blocks removed, Adapt-Pruner) are smaller models, so
  their share is an upper bound.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAIN_SPEC = ROOT / "examples" / "quickstart.yaml"
STUDIES = {"main job (quickstart.yaml)": MAIN_SPEC, "CPU study (cpu-study.yaml)": ROOT / "examples" / "cpu-study.yaml"}
ENGINES = ("packed", "reference")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per engine (alternating order)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--arc-limit", type=int, default=None, help="ARC-Easy items (default: the spec's, 250)")
    ap.add_argument("--lambada-limit", type=int, default=None, help="LAMBADA items (default: the spec's, 200)")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        ap.error("--repeats and --threads must be ≥ 1")
    return args


def prune_like_main_job(spec):
    """The main job's pruned model: its first (only) pruning, seed 0, as ``stages._prune`` calls ``prune_width``."""
    import prunelab
    from prunelab.prune.width import prune_width

    p = spec.pruning[0]
    lm = prunelab.load(spec.models[0].source, dtype=spec.models[0].dtype)
    prune_width(lm.model, lm.tokenizer, criterion=p.criterion, ratio=p.ratio, expansion_ratio=p.expansion_ratio,
                heads_ratio=p.heads_ratio, round_to=p.round_to, seed=0, calibration_samples=p.calibration.samples,
                calibration_seq_len=p.calibration.seq_len, calibration_source=p.calibration.source,
                repair=p.repair, ridge=p.ridge, progress=False)
    lm.model.eval()
    return lm


def run_phase(lm, eval_spec, engine: str) -> tuple[dict[str, tuple[float, float]], dict[str, list]]:
    """One evaluation phase under ``engine``: per task (wall s, CPU s) and its per-item outcomes."""
    from prunelab.evaluate.loglik import use_engine
    from prunelab.experiments.stages import real_evaluate

    seconds, outcomes = {}, {}
    with use_engine(engine):
        for task in eval_spec.tasks:
            c0, w0 = time.process_time(), time.perf_counter()
            result = real_evaluate(lm.model, lm.tokenizer, eval_spec, [task])
            seconds[task] = (time.perf_counter() - w0, time.process_time() - c0)
            outcomes[task] = result.outcomes[task]
    return seconds, outcomes


def compare(a: dict[str, list], b: dict[str, list]) -> tuple[int, float]:
    """(items whose prediction or verdict differs, max |Δ log-likelihood|) between two phases' outcomes."""
    differ, delta = 0, 0.0
    for task in a:
        for x, y in zip(a[task], b[task], strict=True):
            differ += (x.item_id, x.prediction, x.correct) != (y.item_id, y.prediction, y.correct)
            delta = max([delta, *(abs(u - v) for u, v in zip(x.logliks or (), y.logliks or ()))])
    return differ, delta


def count_phases(path: Path) -> dict[str, object]:
    """Evaluation phases of a study (see module docstring): ``{"runs", "baselines", "treated", "phases": {tasks
    tuple: count}, "evals": {eval spec json}}``."""
    from prunelab.experiments.spec import expand, load_spec

    phases: dict[tuple[str, ...], int] = {}
    baselines = treated = 0
    evals = set()
    for run in expand(load_spec(path)):
        ev = run.config.eval
        evals.add(ev.model_dump_json())
        tasks = tuple(ev.tasks)
        phases[tasks] = phases.get(tasks, 0) + 1  # the eval phase (a baseline's only one)
        if run.config.treatment is None:
            baselines += 1
            continue
        treated += 1
        stress = run.config.treatment.stress
        if stress.relapse is not None:
            phases[tasks] += 1
        if stress.chronic is not None:
            ch = tuple(stress.chronic.tasks)
            reused = all(t in tasks for t in ch)  # cycle 0 = the eval phase's outcomes (stages.real_chronic)
            phases[ch] = phases.get(ch, 0) + stress.chronic.cycles + (0 if reused else 1)
    return {"runs": baselines + treated, "baselines": baselines, "treated": treated, "phases": phases,
            "evals": evals}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from prunelab.experiments.spec import load_spec

    torch.set_num_threads(args.threads)
    spec = load_spec(MAIN_SPEC)
    limits = dict(spec.eval.limits)
    for task, given in (("arc_easy", args.arc_limit), ("lambada", args.lambada_limit)):
        if given is not None:
            limits[task] = given
    eval_spec = spec.eval.model_copy(update={"limits": limits})
    t0 = time.perf_counter()
    lm = prune_like_main_job(spec)
    phase = ", ".join(f"{t} {limits.get(t, eval_spec.limit)}" for t in eval_spec.tasks)
    print(f"{spec.models[0].source} pruned as {MAIN_SPEC.name} ({spec.pruning[0].name}) in "
          f"{time.perf_counter() - t0:.0f} s; phase: {phase} items, batch {eval_spec.batch_size}, item seed "
          f"{eval_spec.seed}; {torch.get_num_threads()} threads; {args.repeats} repeats, alternating; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    run_phase(lm, eval_spec, "packed")  # warm-up, untimed: data files parsed, allocator warmed
    times = {e: {t: [] for t in eval_spec.tasks} for e in ENGINES}
    worst_delta, failed = 0.0, False
    for rep in range(args.repeats):
        order = ENGINES if rep % 2 == 0 else ENGINES[::-1]
        got = {}
        for engine in order:
            seconds, got[engine] = run_phase(lm, eval_spec, engine)
            for task, wc in seconds.items():
                times[engine][task].append(wc)
            print(f"  repeat {rep + 1} {engine:9s} " + "  ".join(f"{t} {w:6.1f} s" for t, (w, _) in seconds.items()),
                  flush=True)
        differ, delta = compare(got["packed"], got["reference"])
        worst_delta = max(worst_delta, delta)
        if differ:
            failed = True
            print(f"  repeat {rep + 1}: {differ} items differ between the engines", flush=True)

    med = {e: {t: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
               for t, v in times[e].items()} for e in ENGINES}
    print(f"\nper-item predictions {'DIFFER' if failed else 'identical'} between the engines; "
          f"max |Δ log-likelihood| {worst_delta:.2e}")
    print(f"\n{'phase':34s} {'reference s':>12s} {'packed s':>10s} {'ratio':>7s}   (CPU s: reference / packed)")
    rows = [(f"{t} ({limits.get(t, eval_spec.limit)} items)", (t,)) for t in eval_spec.tasks]
    rows.append(("eval phase (all tasks)", tuple(eval_spec.tasks)))
    for label, tasks in rows:
        ref = sum(med["reference"][t][0] for t in tasks)
        new = sum(med["packed"][t][0] for t in tasks)
        ref_c = sum(med["reference"][t][1] for t in tasks)
        new_c = sum(med["packed"][t][1] for t in tasks)
        print(f"{label:34s} {ref:12.1f} {new:10.1f} {ref / new:6.1f}×   ({ref_c:.1f} / {new_c:.1f})")

    print(f"\n{'study':28s} {'runs':>5s} {'phases (tasks × n)':34s} {'reference':>10s} {'packed':>9s} {'saved':>9s}"
          "   (CPU: reference / packed)")
    for name, path in STUDIES.items():
        c = count_phases(path)
        if c["evals"] != {spec.eval.model_dump_json()}:
            print(f"  note: {path.name} has an eval section other than {MAIN_SPEC.name}'s; per-task times reused")
        missing = {t for tasks in c["phases"] for t in tasks} - set(eval_spec.tasks)
        if missing:
            print(f"  {name}: tasks {', '.join(sorted(missing))} were not timed; skipped")
            continue
        total = {(e, k): sum(n * sum(med[e][t][k] for t in tasks) for tasks, n in c["phases"].items())
                 for e in ENGINES for k in (0, 1)}  # k: 0 wall, 1 CPU
        desc = ", ".join(f"{'+'.join(tasks)} × {n}" for tasks, n in c["phases"].items())
        ref, new = total["reference", 0], total["packed", 0]
        print(f"{name:28s} {c['runs']:5d} {desc:34s} {ref / 60:8.1f} m {new / 60:7.1f} m {(ref - new) / 60:7.1f} m"
              f"   ({total['reference', 1] / 60:.1f} m / {total['packed', 1] / 60:.1f} m)")
        print(f"{'':28s} ({c['baselines']} baselines, {c['treated']} treated)")
    if args.arc_limit is not None or args.lambada_limit is not None:
        print("(item limits shrunk: the study totals scale the shrunk phase, not the real one)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
