"""``prunelab accel MODEL --target-ratio 0.4 --phases N -o OUT``: Adapt-Accel incremental prune/train on Dolly."""

from __future__ import annotations

from pathlib import Path

import typer

from prunelab.cli._common import (DeviceOpt, DtypeOpt, JsonOpt, ModelArg, OverwriteOpt, check_outputs, console, emit_json,
                                  human, load_model)


def accel_cmd(
    model: str = ModelArg,
    output: Path = typer.Option(..., "-o", "--output", help="Output dir for the final pruned + trained model (+ accel.json in prunelab.json)."),
    target_ratio: float = typer.Option(0.4, "--target-ratio", help="Overall fraction of MLP size removed (target/start = 1 − ratio)."),
    phases: int = typer.Option(4, "--phases", help="Number N of prune/train phases; each keeps (target/start)^(1/N)."),
    mode: str = typer.Option("lora", "--mode", help="lora (the mechanism's r/α/targets, merged after each phase) or full fine-tune."),
    mechanism: str = typer.Option("ketamine", "--mechanism", "-m", help="LoRA recipe for --mode lora (its lr is replaced by the WSD schedule)."),
    pruner: str = typer.Option("width", "--pruner", help="width (uniform, --criterion) or adaptive (Adapt-Pruner)."),
    criterion: str = typer.Option("taylor", "--criterion", "-c", help="Width criterion for --pruner width."),
    samples: int = typer.Option(500, "--samples", help="Dolly training pairs, split into growing disjoint shares."),
    seq_len: int = typer.Option(512, "--seq-len", help="Max tokens per sample."),
    no_pad: bool = typer.Option(False, "--no-pad", help="Padding-free batches instead of padding to --seq-len."),
    max_lr: float = typer.Option(2e-5, "--max-lr", help="WSD peak learning rate."),
    min_lr: float = typer.Option(2e-6, "--min-lr", help="WSD final learning rate."),
    batch_size: int = typer.Option(4, "--batch-size", help="Per-device batch."),
    grad_accum: int = typer.Option(4, "--grad-accum", help="Gradient accumulation steps."),
    calibration_samples: int = typer.Option(128, "--calibration-samples", help="Calibration sequences for data-driven criteria."),
    seed: int = typer.Option(0, "--seed"),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Adapt-Accel: N phases of (prune by P → train on a growing data share) under one WSD schedule."""
    from prunelab.data import dolly_split
    from prunelab.errors import PrunelabError
    from prunelab.recover.accel import accel, data_shares
    from prunelab.recover.mechanisms import get_mechanism

    if not 0 < target_ratio < 1:
        raise PrunelabError(f"--target-ratio must be in (0, 1), got {target_ratio}")
    if mode not in ("lora", "full"):
        raise PrunelabError(f"--mode must be lora or full, got '{mode}'")
    if mode == "lora":
        get_mechanism(mechanism)
    if pruner not in ("width", "adaptive"):
        raise PrunelabError(f"unknown pruner '{pruner}'; known: width, adaptive")
    if pruner == "width":
        from prunelab.prune.criteria import CRITERIA

        CRITERIA.get(criterion)
    data_shares(samples, phases)  # validates phases and samples before loading anything
    check_outputs(overwrite, dirs=(output,), files=(json_out,))
    records = dolly_split(n_train=samples, n_held_out=0, seed=seed).train
    lm = load_model(model, dtype, device)
    res = accel(lm.model, lm.tokenizer, records, target_ratio=target_ratio, phases=phases, mode=mode,
                mechanism=mechanism, pruner=pruner, criterion=criterion, max_lr=max_lr, min_lr=min_lr,
                seq_len=seq_len, pad_to_max=not no_pad, batch_size=batch_size, grad_accum=grad_accum, seed=seed,
                calibration_samples=calibration_samples, output_dir=output, metadata={"source": lm.source})
    console.print(
        f"Adapt-Accel {res.phases} phases × keep {res.keep_ratio:.4f}: params {human(res.params_before)} → "
        f"{human(res.params_after)}; size ({res.size_measure}) {human(res.size_before)} → {human(res.size_after)} "
        f"({res.achieved_size_ratio:.3f} of start; target {1 - target_ratio:.3f})"
    )
    for p in res.phase_results:
        console.print(
            f"  phase {p.phase}: MLP width {p.widths_after[0] if len(set(p.widths_after)) == 1 else p.widths_after}, "
            f"{p.n_samples} samples, {p.steps} steps, lr {p.lr_first:.2e}→{p.lr_last:.2e}, "
            f"loss {p.loss_first:.4f}→{p.loss_last:.4f}"
        )
    console.print(f"  {res.total_steps} steps, {res.tokens:,} tokens, honest FLOPs {res.honest_flops:.3e}, "
                  f"{res.seconds:.1f}s; saved to {output}")
    emit_json(res, json_out)


def register(app: typer.Typer) -> None:
    app.command("accel")(accel_cmd)
