"""``prunelab dichotomy MODEL``: the width-pruning dichotomy study (expansion-ratio sweep × battery × efficiency)."""

from __future__ import annotations

from pathlib import Path

import typer

from prunelab.cli._common import (DeviceOpt, DtypeOpt, JsonOpt, ModelArg, OverwriteOpt, check_outputs, console, emit_json,
                                  err_console, load_model)


def dichotomy_cmd(
    model: str = ModelArg,
    expansion_ratios: str = typer.Option(..., "--expansion-ratios", "-e",
                                         help="Comma-separated expansion ratios (intermediate/hidden), each below the "
                                              "model's own; the dense point is always included."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (written atomically)."),
    criterion: str = typer.Option("maw", "--criterion", help="Width-pruning criterion (maw, vow, pon, l2, ...)."),
    limit: int = typer.Option(100, "--limit", help="Items per task (seeded sample); wikitext2: 512-token windows."),
    full: bool = typer.Option(False, "--full", help="Use every item of every task (overrides the limits)."),
    gen_limit: int = typer.Option(None, "--gen-limit", help="Items for the generative tasks (IFEval, GSM8K); "
                                                            "default: --limit."),
    ppl_windows: int = typer.Option(None, "--ppl-windows", help="WikiText-2 windows; default: --limit."),
    tasks: str = typer.Option(None, "--tasks", help="Comma-separated subset of the battery (default: all of it)."),
    ifeval_tokens: int = typer.Option(256, "--ifeval-max-new-tokens", help="IFEval generation budget."),
    gsm8k_tokens: int = typer.Option(256, "--gsm8k-max-new-tokens", help="GSM8K generation budget."),
    gsm8k_shots: int = typer.Option(5, "--gsm8k-shots", help="GSM8K few-shot exemplars (lm-eval: 5)."),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template",
                                       help="Wrap IFEval prompts in the tokenizer's chat template (if it has one)."),
    efficiency: bool = typer.Option(True, "--efficiency/--no-efficiency", help="Measure efficiency per ratio."),
    eff_new_tokens: int = typer.Option(None, "--eff-new-tokens",
                                       help="Efficiency: tokens generated per latency/throughput run."),
    eff_batch: int = typer.Option(None, "--eff-batch", help="Efficiency: batch size of the throughput run."),
    round_to: int = typer.Option(1, "--round-to", help="Round kept widths down to a multiple of this."),
    seed: int = typer.Option(0, "--seed", help="Seed of every sample."),
    batch_size: int = typer.Option(8, "--batch-size", help="Evaluation batch size."),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Prune fresh copies of MODEL to each expansion ratio, evaluate the capability battery grouped by kind
    (knowledge, language, commonsense, instruction following, truthfulness, math), measure efficiency, and
    write the ratio × task table, the normalised-capability figure and the Pearson correlation matrix."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from prunelab.errors import PrunelabError
    from prunelab.studies.dichotomy import BATTERY, parse_ratios, run_dichotomy, write_outputs

    # everything checkable without the model is checked first
    ratios = parse_ratios(expansion_ratios)
    for name, value in (("--limit", limit), ("--gen-limit", gen_limit), ("--ppl-windows", ppl_windows),
                        ("--ifeval-max-new-tokens", ifeval_tokens), ("--gsm8k-max-new-tokens", gsm8k_tokens),
                        ("--batch-size", batch_size), ("--round-to", round_to), ("--eff-new-tokens", eff_new_tokens),
                        ("--eff-batch", eff_batch)):
        if value is not None and value <= 0:
            raise PrunelabError(f"{name} must be positive, got {value}")
    if gsm8k_shots < 0:
        raise PrunelabError(f"--gsm8k-shots must be ≥ 0, got {gsm8k_shots}")
    check_outputs(overwrite, dirs=(out,), files=(json_out,))
    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else [t for ts in BATTERY.values() for t in ts]
    from prunelab.evaluate import resolve_tasks, task_spec
    from prunelab.prune.width import CRITERIA

    names = resolve_tasks(names)
    CRITERIA.get(criterion)
    base = None if full else limit
    limits = {t: base for t in names}
    if not full:
        for t in names:
            if task_spec(t).open_ended and gen_limit is not None:
                limits[t] = gen_limit
            if t == "wikitext2" and ppl_windows is not None:
                limits[t] = ppl_windows
    eff_kw = {k: v for k, v in (("new_tokens", eff_new_tokens), ("batch_size", eff_batch)) if v is not None}

    lm = load_model(model, dtype, device)
    from prunelab.studies.dichotomy import validate_expansion_ratios

    plan = validate_expansion_ratios(lm.model, ratios, round_to)  # before any pruning or evaluation
    err_console.print(f"{lm.source}: dense expansion ratio {plan.dense_ratio:.4g} "
                      f"({plan.dense_width}/{plan.hidden_size}); sweep "
                      + ", ".join(f"{r:g}→{w}" for r, w in plan.points[1:]) + f"; {len(names)} tasks")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        job = bar.add_task("dichotomy", total=None)

        def progress(label: str, done: int, total: int) -> None:
            bar.update(job, description=label, completed=done, total=total or None)

        result = run_dichotomy(
            lm.model, lm.tokenizer, ratios, criterion=criterion, tasks=names, limit=base, limits=limits, seed=seed,
            batch_size=batch_size, round_to=round_to, efficiency=efficiency, efficiency_kwargs=eff_kw,
            generation={"ifeval_max_new_tokens": ifeval_tokens, "gsm8k_max_new_tokens": gsm8k_tokens,
                        "gsm8k_shots": gsm8k_shots, "chat_template": chat_template},
            model_name=lm.source, progress=progress,
            log=lambda line: bar.console.print(line, highlight=False, markup=False, soft_wrap=True))
    write_outputs(result, out)
    console.print((out / "table.md").read_text(encoding="utf-8"))
    for t, why in result.absent.items():
        err_console.print(f"[yellow]absent:[/] {t} — {why}", highlight=False)
    console.print(f"wrote {out}/ ({', '.join(Path(f).name for f in result.files)}) in {result.seconds:.0f}s")
    emit_json(result, json_out)


def register(app: typer.Typer) -> None:
    app.command("dichotomy")(dichotomy_cmd)
