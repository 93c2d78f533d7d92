"""``prunelab eval MODEL --tasks a,b --limit N``: accuracy / perplexity tasks, as a table and JSON."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from prunelab.cli._common import (DeviceOpt, DtypeOpt, JsonOpt, ModelArg, OverwriteOpt, check_outputs, console,
                                  emit_json, err_console, load_model)


def eval_cmd(
    model: str = ModelArg,
    tasks: str = typer.Option("arc_easy,arc_easy_gen,lambada_gen,wikitext2", "--tasks", "-t",
                              help="Comma-separated task names, or 'all'."),
    limit: int = typer.Option(None, "--limit", "-n", help="Items per task (seeded sample); windows for wikitext2/c4."),
    seed: int = typer.Option(0, "--seed", help="Seed of the item sample."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Items per forward pass."),
    backend: str = typer.Option("prunelab", "--backend", help="prunelab (fast, built in) or lm-eval (the harness's tasks, prompts and metrics on the local data; its log-likelihood requests on prunelab's packed engine unless --lm-eval-engine hflm)."),
    lmeval_engine: str = typer.Option("packed", "--lm-eval-engine", help="With --backend lm-eval: packed (log-likelihood requests on prunelab's packed engine) or hflm (lm-eval's own HFLM scoring)."),
    protocol: str = typer.Option("auto", "--protocol", help="Prompt protocol of arc_easy_gen / lambada_gen / composite: raw, chat (the tokenizer's chat template) or auto (chat iff the model has one)."),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Evaluate MODEL on tasks; accuracies in percent, perplexities raw; results name the exact items used."""
    from prunelab.errors import PrunelabError

    if limit is not None and limit <= 0:
        raise PrunelabError(f"--limit must be a positive number of items, got {limit}")
    if batch_size <= 0:
        raise PrunelabError(f"--batch-size must be positive, got {batch_size}")
    if backend not in ("prunelab", "lm-eval"):
        raise PrunelabError(f"unknown backend '{backend}'; known: prunelab, lm-eval")
    from prunelab.evaluate.lmeval_bridge import ENGINES

    if lmeval_engine not in ENGINES:
        raise PrunelabError(f"unknown --lm-eval-engine '{lmeval_engine}'; known: {', '.join(ENGINES)}")
    from prunelab.evaluate.generative_tasks import check_protocol

    check_protocol(protocol)
    if backend == "prunelab":
        from prunelab.evaluate import resolve_tasks

        names = resolve_tasks(tasks)
    else:
        from prunelab.evaluate.lmeval_bridge import BRIDGE_TASKS

        names = list(BRIDGE_TASKS) if tasks.strip() == "all" else [t.strip() for t in tasks.split(",") if t.strip()]
        for n in names or [""]:
            if n not in BRIDGE_TASKS:
                raise PrunelabError(f"unknown lm-eval bridge task '{n}'; known: {', '.join(BRIDGE_TASKS)}")
    # tasks read their data after the model loads: check a named data folder (binding) holds it first
    from prunelab.data import check_task_data, require_file

    if backend == "prunelab":
        check_task_data(names)
    else:  # the bridge reads local files only
        for n in names:
            for f in BRIDGE_TASKS[n].files.values():
                require_file(*f)
    check_outputs(overwrite, files=(json_out,))
    lm = load_model(model, dtype, device)
    if backend == "prunelab":  # chat on a tokenizer without a template: one line before any evaluation
        from prunelab.evaluate.generative_tasks import protocol_tasks, resolve_protocol

        if set(names) & protocol_tasks():
            resolve_protocol(lm.tokenizer, protocol)
    report = _run(lm, names, limit, seed, batch_size, backend, protocol, lmeval_engine)
    used = getattr(report, "protocol", None)
    table = Table(title=f"{lm.source} — limit {limit if limit is not None else 'all'}, seed {seed} ({backend}"
                        + (f", engine {lmeval_engine}" if backend == "lm-eval" else "")
                        + (f", protocol {used}" if used else "") + ")")
    for col in ("task", "score", "metrics", "n", "seconds"):
        table.add_column(col, justify="left" if col in ("task", "metrics") else "right")
    for name, r in report.results.items():
        others = ", ".join(f"{k} {v:.2f}" for k, v in r.metrics.items() if k != r.primary and "stderr" not in k)
        table.add_row(name, f"{r.primary} {r.score:.2f}", others, str(r.n), f"{r.seconds:.1f}")
    console.print(table)
    emit_json({"model": lm.source, "backend": backend,
               **({"lm_eval_engine": lmeval_engine} if backend == "lm-eval" else {}), **_jsonable(report)}, json_out)


def _run(lm, names, limit, seed, batch_size, backend, protocol="auto", lmeval_engine="packed"):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if backend == "lm-eval":
        from prunelab.evaluate.lmeval_bridge import lmeval_evaluate

        with err_console.status(f"lm-eval ({lmeval_engine}): {', '.join(names)} ..."):
            return lmeval_evaluate(lm.model, lm.tokenizer, names, limit=limit, seed=seed, batch_size=batch_size,
                                   engine=lmeval_engine)
    from prunelab.evaluate import evaluate

    bars: dict[str, int] = {}
    with Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as progress:
        def update(task: str, done: int, total: int) -> None:
            if task not in bars:
                bars[task] = progress.add_task(task, total=total)
            progress.update(bars[task], completed=done, total=total)

        return evaluate(lm.model, lm.tokenizer, names, limit=limit, seed=seed, batch_size=batch_size, progress=update,
                        protocol=protocol)


def _jsonable(report) -> dict:
    from prunelab.atomic import to_jsonable

    data = to_jsonable(report)
    # per-item outcomes as compact dicts (only the fields the task fills; ItemOutcome.from_dict reads them back)
    for group in ("results", "dependencies"):
        for name, res in getattr(report, group, {}).items():
            data[group][name]["outcomes"] = [o.to_dict() for o in res.outcomes]
    return data


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
