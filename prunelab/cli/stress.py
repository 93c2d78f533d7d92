"""``prunelab stress relapse|chronic``: acute relapse and chronic prune/maintain cycles (thin CLI layer)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from prunelab.cli._common import (DeviceOpt, DtypeOpt, JsonOpt, ModelArg, OverwriteOpt, check_outputs, console, emit_json,
                                  err_console, load_model)
from prunelab.errors import PrunelabError

TASKS_HELP = "Comma-separated eval tasks (e.g. arc_easy_gen,lambada_gen; composite is added when both ran)."


def _load(source: str, dtype: str, device: str):
    """A model like :func:`load_model`, plus PEFT adapter directories (base loaded, adapter attached unmerged)."""
    p = Path(source)
    cfg = p / "adapter_config.json"
    if p.is_dir() and cfg.is_file() and not (p / "config.json").is_file():
        from peft import PeftModel

        try:
            base = json.loads(cfg.read_text())["base_model_name_or_path"]
        except (ValueError, KeyError):
            raise PrunelabError(f"{cfg} does not name its base model (base_model_name_or_path)") from None
        lm = load_model(base, dtype, device)
        lm.model = PeftModel.from_pretrained(lm.model, str(p))
        return lm
    return load_model(source, dtype, device)


def _task_list(tasks: str | None) -> list[str] | None:
    if tasks is None:
        return None
    from prunelab.evaluate import resolve_tasks

    return resolve_tasks(tasks)


def relapse_cmd(
    model: str = ModelArg,
    fraction: float = typer.Option(0.3, "--fraction", help="Share of each decoder linear layer's remaining nonzero weights to prune, in (0, 1)."),
    out: Path = typer.Option(..., "-o", "--output", help="Directory for the pruned model (HF format, written atomically)."),
    eval_tasks: str = typer.Option(None, "--eval-tasks", help=TASKS_HELP + " Evaluated before and after."),
    limit: int = typer.Option(None, "--limit", help="Items per eval task (seeded sample)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the eval samples."),
    batch_size: int = typer.Option(8, "--batch-size", help="Eval batch size."),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Acute relapse: merge any adapter, L1-prune FRACTION of every decoder linear layer, save, report per layer."""
    from rich.table import Table

    from prunelab.models import save
    from prunelab.stress.magnitude import _check_fraction
    from prunelab.stress.relapse import relapse

    _check_fraction(fraction, "relapse fraction")  # before loading anything
    tasks = _task_list(eval_tasks)
    if limit is not None and limit <= 0:
        raise PrunelabError(f"--limit must be positive, got {limit}")
    check_outputs(overwrite, dirs=(out,), files=(json_out,))
    lm = _load(model, dtype, device)
    with err_console.status("pruning and evaluating ..." if tasks else "pruning ..."):
        rep = relapse(lm.model, fraction, tokenizer=lm.tokenizer, tasks=tasks, limit=limit, seed=seed,
                      batch_size=batch_size)
    save(rep.model, lm.tokenizer, out, metadata={"stress": "relapse", "source": lm.source, "fraction": fraction,
                                                  "overall_sparsity": rep.overall_sparsity})

    table = Table(title=f"relapse: L1-magnitude pruning of {fraction:.1%} of the remaining weights per layer")
    for col in ("block", "module", "weights", "zeros before", "zeros after", "pruned % of remaining", "sparsity %"):
        table.add_column(col, justify="left" if col == "module" else "right", overflow="fold")
    for l in rep.layers:
        # block index + leaf name (q_proj, gate_up_proj, ...) keep the table readable at 80 columns
        m = re.search(r"layers\.(\d+)\.", l.name)
        table.add_row(m.group(1) if m else "", l.name.rsplit(".", 1)[-1], f"{l.numel:,}", f"{l.zeros_before:,}",
                      f"{l.zeros_after:,}", f"{100 * l.pruned_fraction:.3f}", f"{100 * l.sparsity:.3f}")
    console.print(table)
    console.print(
        f"{len(rep.layers)} layers; pruned of remaining {rep.min_pruned_fraction:.3%} – {rep.max_pruned_fraction:.3%} "
        f"(max deviation from {fraction:.1%}: {rep.max_deviation:.4%}); overall sparsity {rep.overall_sparsity:.3%}"
        + ("; adapter merged first" if rep.merged_adapter else "")
    )
    if rep.scores_before:
        for name in rep.scores_before:
            b, a = rep.scores_before[name], rep.scores_after.get(name, float("nan"))
            console.print(f"  {name}: {b:.2f} → {a:.2f} ({a - b:+.2f})")
        if rep.relapse_drop is not None:
            console.print(f"relapse drop (composite): [bold]{rep.relapse_drop:+.2f}[/] pp")
    console.print(f"saved {out}")
    emit_json(rep, json_out)


def chronic_cmd(
    model: str = ModelArg,
    mechanism: str = typer.Option(..., "--mechanism", "-m", help="Recovery mechanism used for maintenance (ketamine, ssri, neurosteroid, or from --mechanisms-file)."),
    cycles: int = typer.Option(8, "--cycles", help="Number of prune/maintain cycles (≥ 1)."),
    step: float = typer.Option(0.1, "--step", help="Sparsity added per cycle, of the original weight count (cycles·step < 1)."),
    maintenance_epochs: float = typer.Option(3, "--maintenance-epochs", help="Epochs of each maintenance tune (study: 2–5)."),
    samples: int = typer.Option(100, "--samples", help="Held-out Dolly items for maintenance (disjoint from the --recovery-samples training items)."),
    seq_len: int = typer.Option(512, "--seq-len", help="Maintenance sequence length (padded, as in the study)."),
    tasks: str = typer.Option("arc_easy_gen,lambada_gen", "--tasks", help=TASKS_HELP),
    limit: int = typer.Option(None, "--limit", help="Items per eval task (seeded sample)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Dolly split, LoRA init and eval samples."),
    batch_size: int = typer.Option(8, "--batch-size", help="Eval batch size."),
    recovery_samples: int = typer.Option(500, "--recovery-samples", help="Dolly items the recovery trained on (same --seed); maintenance items come after them, so they are disjoint."),
    mechanisms_file: Path = typer.Option(None, "--mechanisms-file", help="YAML file with user-defined mechanisms."),
    out: Path = typer.Option(..., "-o", "--output", help="Directory for chronic.{md,csv,json,png} (written atomically)."),
    save_model: Path = typer.Option(None, "--save-model", help="Also save the final model here."),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Chronic stress: cycle 0 = evaluate; then prune STEP more, maintenance-tune, re-mask, evaluate; repeat."""
    from rich.table import Table

    from prunelab.recover.mechanisms import get_mechanism, load_mechanisms_yaml
    from prunelab.stress.chronic import chronic
    from prunelab.stress.magnitude import cumulative_schedule

    # Every check before the model is loaded.
    cumulative_schedule(cycles, step)
    if mechanisms_file is not None:
        load_mechanisms_yaml(mechanisms_file)
    mech = get_mechanism(mechanism)
    task_list = _task_list(tasks)
    for name, value in (("--samples", samples), ("--recovery-samples", recovery_samples), ("--seq-len", seq_len),
                        ("--maintenance-epochs", maintenance_epochs)):
        if value <= 0:
            raise PrunelabError(f"{name} must be positive, got {value:g}")
    if limit is not None and limit <= 0:
        raise PrunelabError(f"--limit must be positive, got {limit}")
    check_outputs(overwrite, dirs=(out, save_model), files=(json_out,))
    lm = _load(model, dtype, device)
    rep = chronic(lm.model, lm.tokenizer, mech, cycles, step, maintenance_epochs, samples=samples,
                  recovery_samples=recovery_samples, seq_len=seq_len, tasks=task_list, limit=limit, seed=seed,
                  batch_size=batch_size)
    rep.write(out)
    if save_model is not None:
        from prunelab.models import save

        save(rep.model, lm.tokenizer, save_model, metadata={"stress": "chronic", "source": lm.source,
                                                              "mechanism": mech.name, "cycles": cycles, "step": step})

    header, rows = rep.table()
    table = Table(title=f"chronic: {mech.name}, {cycles} cycles × {step:.1%}, maintenance {maintenance_epochs:g} "
                        f"epochs on {rep.samples} items × {seq_len} tokens, eval limit {limit or 'all'}")
    for col in header:
        table.add_column(col, justify="right", overflow="fold")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    if rep.decline:
        console.print("longitudinal decline (cycle 0 − last): "
                      + ", ".join(f"{k} {v:+.2f}" for k, v in rep.decline.items()))
    console.print(f"wrote {out}/chronic.md, .csv, .json, .png in {rep.seconds:.0f}s")
    emit_json(rep, json_out)


def register(app: typer.Typer) -> None:
    from prunelab.cli._groups import stress_app

    stress_app.command("relapse")(relapse_cmd)
    stress_app.command("chronic")(chronic_cmd)
