"""``prunelab report --db results.sqlite -o report/``: the study's Tables 1–6 and figures."""

from __future__ import annotations

from pathlib import Path

import typer

from prunelab.cli._common import JsonOpt, OverwriteOpt, check_outputs, console, emit_json


def report_cmd(
    db: Path = typer.Option(..., "--db", help="SQLite results database written by `prunelab run`."),
    out: Path = typer.Option(Path("report"), "-o", "--out", help="Output directory (replaced atomically if prunelab wrote it)."),
    experiment: str = typer.Option(None, "--experiment", help="Only runs of this experiment (default: all)."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Tables only."),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Tables 1–6 as Markdown + CSV + JSON (each difference with its 95 % CI, * p < 0.05) and PNG figures."""
    from prunelab.report import build_report

    check_outputs(overwrite, dirs=(out,), files=(json_out,))
    res = build_report(db, out, experiment=experiment, figures=not no_figures)
    console.print(f"{res.runs} runs → {res.out_dir}/tables.md and {res.out_dir}/report.html", highlight=False)
    for t in res.tables:
        console.print(f"  {t}", highlight=False)
    for o in res.omitted:
        console.print(f"  [dim]omitted {o}[/]", highlight=False)
    for f in res.figures:
        console.print(f"  {res.out_dir}/{f}", highlight=False)
    emit_json(res, json_out)


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
