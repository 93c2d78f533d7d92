"""``prunelab depth-study MODEL --remove 7,9 --objectives perplexity,margin --searches all -o DIR``."""

from __future__ import annotations

from pathlib import Path

import typer

from prunelab.cli._common import (DeviceOpt, DtypeOpt, JsonOpt, ModelArg, OverwriteOpt, check_outputs, console, emit_json,
                                  err_console, load_model)


def _int_list(text: str, what: str) -> list[int]:
    from prunelab.errors import PrunelabError

    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise PrunelabError(f"{what} must be comma-separated integers, got '{text}'") from None
    if not vals:
        raise PrunelabError(f"{what} is empty")
    return vals


def _study_search_options(items: list[str] | None) -> dict[str, dict[str, str]]:
    """``["bo.trials=50"]`` -> ``{"bo": {"trials": "50"}}``."""
    from prunelab.errors import PrunelabError

    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        lhs, sep, val = item.partition("=")
        search, dot, key = lhs.partition(".")
        if not sep or not dot or not search or not key:
            raise PrunelabError(f"--search-opt must be SEARCH.KEY=VALUE (e.g. bo.trials=50), got '{item}'")
        out.setdefault(search.strip(), {})[key.strip()] = val.strip()
    return out


def depth_study_cmd(
    model: str = ModelArg,
    remove: str = typer.Option("7,9", "--remove", "-k", help="Budgets: blocks to remove, comma-separated."),
    objectives: str = typer.Option("perplexity,margin", help="Objectives, comma-separated, or 'all'."),
    searches: str = typer.Option("all", help="Searches, comma-separated, or 'all'."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (tables, figures, results.json)."),
    calib_samples: int = typer.Option(32, "--calib-samples", help="Perplexity calibration windows."),
    calib_seq_len: int = typer.Option(128, "--calib-seq-len", help="Tokens per perplexity calibration window."),
    calib_source: str = typer.Option("lambada", "--calib-source", help="Perplexity calibration text source."),
    margin_items: int = typer.Option(64, "--margin-items", help="Margin calibration MC items."),
    mc_source: str = typer.Option("arc_easy:validation", "--mc-source",
                                  help="Margin calibration items: arc_easy|arc_challenge:train|validation."),
    search_opt: list[str] = typer.Option(None, "--search-opt",
                                         help="SEARCH.KEY=VALUE override (repeatable), e.g. bo.trials=50."),
    acc_tasks: str = typer.Option("arc_easy", "--acc-tasks", help="Accuracy tasks (percent), comma-separated."),
    ppl_tasks: str = typer.Option("wikitext2", "--ppl-tasks", help="Perplexity tasks, comma-separated."),
    eval_limit: int = typer.Option(100, "--eval-limit", help="Items per accuracy task (seeded sample)."),
    ppl_windows: int = typer.Option(8, "--ppl-windows", help="512-token windows per perplexity task."),
    seed: int = typer.Option(0, "--seed"),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Objectives × searches × budgets: masks, accuracy/perplexity tables, time vs accuracy, rank correlation."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from prunelab.errors import PrunelabError
    from prunelab.prune.depth import OBJECTIVES, SEARCHES
    from prunelab.studies.depth import run_depth_study, study_table_objects, write_study

    removes = _int_list(remove, "--remove")
    objs = OBJECTIVES.parse_list(objectives)
    srch = SEARCHES.parse_list(searches)
    sopts = _study_search_options(search_opt)
    for s in sopts:
        SEARCHES.get(s)
    for name, val in (("--calib-samples", calib_samples), ("--margin-items", margin_items),
                      ("--eval-limit", eval_limit), ("--ppl-windows", ppl_windows)):
        if val <= 0:
            raise PrunelabError(f"{name} must be positive, got {val}")
    if any(k <= 0 for k in removes):
        raise PrunelabError(f"--remove must be at least 1 block, got {remove}")
    calib = {"perplexity": {"n_samples": calib_samples, "seq_len": calib_seq_len, "source": calib_source},
             "margin": {"n_samples": margin_items, "mc_source": mc_source}}
    tasks_a = [t.strip() for t in acc_tasks.split(",") if t.strip()]
    tasks_p = [t.strip() for t in ppl_tasks.split(",") if t.strip()]
    check_outputs(overwrite, dirs=(out,), files=(json_out,))
    lm = load_model(model, dtype, device)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                  transient=True) as bar:
        task = bar.add_task("depth study")
        study = run_depth_study(lm.model, lm.tokenizer, removes, objs, srch, acc_tasks=tasks_a, ppl_tasks=tasks_p,
                                eval_limit=eval_limit, ppl_windows=ppl_windows, seed=seed,
                                calibration_options={o: calib[o] for o in objs}, search_options=sopts,
                                model_name=lm.source, progress=lambda msg: bar.update(task, description=msg))
    tables = study_table_objects(study)  # built once: the comparison bootstraps are the slow part
    write_study(study, out, tables)
    console.print(tables["time_vs_accuracy"].markdown())
    console.print(f"depth study of {lm.source} finished in {study.seconds:.0f}s; wrote {out}")
    emit_json(study, json_out)


def register(app: typer.Typer) -> None:
    app.command("depth-study")(depth_study_cmd)
