"""``prunelab run EXP.yaml --db results.sqlite``: execute an experiment, resuming from the store."""

from __future__ import annotations

from pathlib import Path

import typer

from prunelab.cli._common import JsonOpt, OverwriteOpt, check_outputs, console, emit_json


def run_cmd(
    spec: Path = typer.Argument(..., help="Experiment YAML (see examples/)."),
    db: Path = typer.Option(..., "--db", help="SQLite results database (created if missing; finished runs are skipped)."),
    work_dir: Path = typer.Option(None, "--work-dir", help="Cache for pruned checkpoints (default: <db>.work/)."),
    ray: str = typer.Option(None, "--ray", help="Ray cluster address (e.g. ray://head:10001 or auto): one task per run."),
    max_runs: int = typer.Option(None, "--max-runs", min=1, help="Stop after this many new runs."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and list the runs (stored or pending); do nothing."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failing run."),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Run every not-yet-stored run of the experiment; each finished run is committed immediately."""
    from prunelab.errors import PrunelabError
    from prunelab.atomic import claim_work_dir
    from prunelab.experiments import plan, run_experiment

    # the work folder is reused across runs (never replaced): missing, empty or prunelab's own; --overwrite adopts
    # a foreign one without deleting anything in it. Same default as run_experiment's.
    work = work_dir if work_dir is not None else db.with_name(db.name + ".work")
    check_outputs(overwrite, files=(json_out,), work_dirs=() if dry_run else (work,))
    if dry_run:
        from prunelab.runs.store import Store

        exp, runs = plan(spec)
        stored = Store(db, readonly=True).stored_hashes() if db.is_file() else set()
        for r in runs:
            mark = "stored " if r.hash in stored else "pending"
            console.print(f"{mark}  {r.hash}  {r.label}", highlight=False)
        n_stored = sum(r.hash in stored for r in runs)
        console.print(f"{exp.name}: {len(runs)} runs ({n_stored} stored, {len(runs) - n_stored} pending)")
        emit_json({"experiment": exp.name, "runs": [{"hash": r.hash, "label": r.label, "stored": r.hash in stored}
                                                   for r in runs]}, json_out)
        return
    plan(spec)  # a bad spec is reported before the work folder is created
    claim_work_dir(work, overwrite)
    summary = run_experiment(spec, db, work_dir=work, ray_address=ray, max_runs=max_runs, fail_fast=fail_fast)
    console.print(
        f"{summary.experiment}: {summary.completed} run(s) completed, {summary.already_stored} already stored, "
        f"{summary.failed} failed, of {summary.total} — {summary.seconds:.1f}s → {summary.db}", highlight=False)
    emit_json(summary, json_out)
    if summary.failed:
        raise PrunelabError(f"{summary.failed} run(s) failed (first: {summary.failures[0]}); rerun to retry them")


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
