"""``prunelab recover MODEL --mechanism ketamine --isodose-ref ketamine:3 -o OUT``: LoRA recovery on Dolly.

OUT is the merged model itself (reload with ``prunelab.load(OUT)`` or pass OUT to any other command);
the PEFT adapter is in ``OUT/adapter`` and the run's result in ``OUT/recovery.json``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from prunelab.cli._common import (DeviceOpt, DtypeOpt, JsonOpt, ModelArg, OverwriteOpt, check_outputs, console, emit_json,
                                  human, load_model)


def recover_cmd(
    model: str = ModelArg,
    output: Path = typer.Option(..., "-o", "--output", help="Output dir: merged model (+ adapter/ and recovery.json)."),
    mechanism: str = typer.Option("ketamine", "--mechanism", "-m", help="Recovery mechanism (ketamine, ssri, neurosteroid, or one from --mechanisms-file)."),
    isodose_ref: str = typer.Option("ketamine:3", "--isodose-ref", help="Reference MECHANISM:EPOCHS fixing the FLOPs budget (the study: ketamine:3)."),
    isodose_formula: str = typer.Option("study", "--isodose-formula", help="Cost the budget equalises: study (6·P·L·N·E, trainable params only) or honest (T·(2F + 6P), frozen base included)."),
    epochs: float = typer.Option(None, "--epochs", help="Train exactly this many epochs (overrides the isodose budget)."),
    samples: int = typer.Option(500, "--samples", help="Dolly training pairs (seeded sample)."),
    held_out: int = typer.Option(100, "--held-out", help="Dolly pairs kept out of training (disjoint; for maintenance tunes)."),
    seq_len: int = typer.Option(512, "--seq-len", help="Max tokens per sample."),
    no_pad: bool = typer.Option(False, "--no-pad", help="Padding-free batches (FLOPs count the real tokens) instead of padding to --seq-len."),
    loss_on: str = typer.Option("all", "--loss-on", help="all (the study: every real token) or response (prompt masked)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the data sample, LoRA init and data order."),
    lr: float = typer.Option(None, "--lr", help="Override the mechanism's learning rate."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps (FLOPs report what ran)."),
    strict: bool = typer.Option(False, "--strict", help="Error instead of clamping to 1 epoch when the budget is below one epoch."),
    mechanisms_file: Path = typer.Option(None, "--mechanisms-file", help="YAML file with user-defined mechanisms."),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Recover a (pruned) model with a LoRA mechanism under an isodose FLOPs budget; save adapter + merged model."""
    import warnings

    from prunelab.data import dolly_split
    from prunelab.errors import PrunelabError
    from prunelab.recover import get_mechanism, load_mechanisms_yaml, parse_reference
    from prunelab.recover.train import recover_isodose

    # validate everything cheap before loading the model
    if mechanisms_file is not None:
        load_mechanisms_yaml(mechanisms_file)
    mech = get_mechanism(mechanism)
    ref = parse_reference(isodose_ref)
    get_mechanism(ref[0])
    from prunelab.recover.isodose import check_formula

    check_formula(isodose_formula)
    if epochs is not None and not epochs > 0:
        raise PrunelabError(f"--epochs must be positive, got {epochs}")
    if samples < 1:
        raise PrunelabError(f"--samples must be ≥ 1, got {samples}")
    if seq_len < 2:
        raise PrunelabError(f"--seq-len must be ≥ 2, got {seq_len}")
    # OUT.last_good receives the adapter if training diverges (NaN loss); it must be writable as well
    check_outputs(overwrite, dirs=(output, output.parent / f"{output.name}.last_good"), files=(json_out,))
    records = dolly_split(n_train=samples, n_held_out=held_out, seed=seed).train
    lm = load_model(model, dtype, device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        res = recover_isodose(lm.model, lm.tokenizer, mech, records, reference=ref, epochs=epochs, seq_len=seq_len,
                              pad_to_max=not no_pad, strict=strict, formula=isodose_formula, seed=seed, lr=lr,
                              max_steps=max_steps, loss_on=loss_on, output_dir=output,
                              metadata={"source": lm.source, "mechanism": mech.to_dict()})
    for w in caught:
        if "isodose budget" in str(w.message):
            console.print(f"[yellow]warning:[/] {w.message}", soft_wrap=True)  # one line, however narrow the terminal
    console.print(format_result(res))
    console.print(f"saved merged model to {output} (adapter: {output / 'adapter'})")
    emit_json(res, json_out)


def format_result(res) -> str:
    """One block per run: epochs and FLOPs by the study's formula and honest, side by side."""
    formula = getattr(res, "isodose_formula", None) or "study"
    budget = (f", {formula} budget {res.budget:.3e} ({res.reference}, exact epochs {res.exact_epochs:.2f})"
              if res.budget else "")
    pad = f"padded to {res.seq_len}" if res.padded else "no padding"
    return (
        f"[bold]{res.mechanism}[/] r{res.mechanism_config['r']}: {human(res.trainable_params)} trainable params, "
        f"{res.epochs:g} epochs ({res.steps} steps) on {res.n_samples} samples × {res.seq_len} tokens ({pad}){budget}\n"
        f"  FLOPs  study 6·P·L·N·E = {res.flops:.3e}   honest (incl. frozen base) = {res.honest_flops:.3e}"
        f"   ({res.honest_flops / res.flops if res.flops else float('nan'):.1f}×)\n"
        f"  loss {res.initial_loss:.4f} → {res.final_loss:.4f}   {res.tokens:,} tokens in {res.seconds:.1f}s "
        f"({res.tokens_per_second:.0f} tokens/s)"
    )


def register(app: typer.Typer) -> None:
    app.command("recover")(recover_cmd)
