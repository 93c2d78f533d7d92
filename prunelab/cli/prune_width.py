"""``prunelab prune width MODEL``: uniform width pruning by a criterion, or Adapt-Pruner (``--adaptive``)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from prunelab.cli._common import (DeviceOpt, DtypeOpt, JsonOpt, ModelArg, OverwriteOpt, check_outputs, console, emit_json,
                                  err_console, human, load_model)
from prunelab.errors import PrunelabError


#: ``--amplitude auto``: the paper's ablation grid widened to the amplitudes small models need (SmolLM2-135M's
#: held-out optimum at 30 % block sparsity is 0.3, README), each run and the best on held-out text kept.
AUTO_AMPLITUDES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)


def parse_amplitudes(text: str) -> list[float]:
    """``"0,0.005,0.02"`` → [0.0, 0.005, 0.02]; each must be a number ≥ 0; ``auto`` → :data:`AUTO_AMPLITUDES`."""
    if text.strip().lower() == "auto":
        return list(AUTO_AMPLITUDES)
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise PrunelabError(f"--amplitude must be a number or a comma-separated list of numbers, got '{text}'") from None
    if not values or any(not v >= 0 for v in values):
        raise PrunelabError(f"--amplitude values must be ≥ 0, got '{text}'")
    return values


def prune_width_cmd(
    model: str = ModelArg,
    output: Path = typer.Option(None, "--output", "-o", help="Directory for the pruned model (written atomically)."),
    criterion: str = typer.Option(None, "--criterion", "-c", help="maw, vow, pon, l2, *_hybrid, taylor, random, "
                                  "obs (chosen inside --repair ls by Optimal Brain Surgeon) (default maw; with --adaptive the within-layer score, default taylor)."),
    ratio: float = typer.Option(None, "--ratio", help="Fraction of MLP neurons removed per layer, in [0, 1) "
                                "(with --adaptive: sparsity of the decoder-block parameters)."),
    expansion_ratio: float = typer.Option(None, "--expansion-ratio", help="Target intermediate/hidden (e.g. 2.0)."),
    heads_ratio: float = typer.Option(0.0, "--heads-ratio", help="Fraction of query heads removed per layer (GQA-valid)."),
    round_to: int = typer.Option(1, "--round-to", help="Round kept MLP widths down to a multiple of this (8, 64, ...)."),
    adaptive: bool = typer.Option(False, "--adaptive", help="Adapt-Pruner: layer-adaptive, progressive (Taylor "
                                  "inside layers unless --criterion)."),
    amplitude: str = typer.Option("0.02", "--amplitude", help="Adapt-Pruner amplitude A; a list (0,0.005,0.01,0.02,0.04) "
                                  "runs the ablation (params + perplexity per A); with -o the A with the lowest "
                                  "held-out perplexity is saved; 'auto' = the list 0,0.02,0.05,0.1,0.2,0.3."),
    steps: int = typer.Option(10, "--steps", help="Adapt-Pruner progressive steps T."),
    prune_heads: bool = typer.Option(True, "--prune-heads/--mlp-only", help="Adapt-Pruner: also prune attention heads."),
    calibration: str = typer.Option("lambada", "--calibration", help="Calibration text: lambada, dolly, wikipedia (BoolQ passages), wikitext2, c4 or a file."),
    calib_samples: int = typer.Option(128, "--calib-samples", help="Calibration sequences."),
    calib_seq_len: int = typer.Option(128, "--calib-seq-len", help="Tokens per calibration sequence."),
    batch_size: int = typer.Option(8, "--batch-size", help="Calibration batch size."),
    seed: int = typer.Option(0, "--seed"),
    plot: Path = typer.Option(None, "--plot", help="Adapt-Pruner sparsity profile PNG (default OUT/sparsity_profile.png)."),
    ppl_windows: int = typer.Option(8, "--ppl-windows", help="Ablation: WikiText-2 windows of 512 tokens scored."),
    heldout_samples: int = typer.Option(32, "--heldout-samples", help="Ablation: calibration-source sequences held out "
                                        "to choose A by (0: none)."),
    repair: str = typer.Option("none", "--repair", help="Repair without retraining after pruning: none, bias "
                               "(FLAP mean compensation), ls (ridge least-squares refit of down_proj/o_proj), ls+bias."),
    ridge: float = typer.Option(None, "--ridge", help="--repair ls: ridge λ relative to the mean Gram diagonal "
                                "(default: auto, 2 × kept width / calibration tokens)."),
    repair_target: str = typer.Option("layer", "--repair-target", help="--repair: what the re-fitted projections "
                                      "reproduce — layer (each dense layer on the repaired input) or model (the dense "
                                      "model's hidden states, also correcting earlier layers' drift) or layer+attn (layer, and "
                                      "every o_proj after the first pruned layer re-fitted toward the dense stream)."),
    token_weights: str = typer.Option("normalized", "--token-weights", help="--repair ls: weight of each calibration "
                                      "token in the fit — normalized (1/‖stream‖², as the next RMSNorm sees errors; "
                                      "default) or uniform."),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Remove GLU neurons (and optionally attention heads) from every layer; print params before/after."""
    from prunelab.prune.criteria import CRITERIA, check_criterion_use

    criterion = criterion or ("taylor" if adaptive else "maw")
    amplitudes = parse_amplitudes(amplitude)
    ablation = adaptive and len(amplitudes) > 1
    CRITERIA.get(criterion)
    from prunelab.prune.repair import DEFAULT_RIDGE, REPAIR_TARGETS, REPAIRS, TOKEN_WEIGHTS

    REPAIRS.get(repair)
    REPAIR_TARGETS.get(repair_target)
    TOKEN_WEIGHTS.get(token_weights)
    check_criterion_use(criterion, repair, repair_target, adaptive)
    ridge = DEFAULT_RIDGE if ridge is None else ridge
    if ridge is not None and not ridge >= 0:
        raise PrunelabError(f"--ridge must be ≥ 0, got {ridge}")
    if not adaptive:
        if len(amplitudes) > 1 or amplitude != "0.02":
            raise PrunelabError("--amplitude only applies with --adaptive")
    elif ratio is None:
        raise PrunelabError("--adaptive needs --ratio (target sparsity of the decoder-block parameters)")
    elif expansion_ratio is not None or heads_ratio:
        raise PrunelabError("--adaptive sets per-layer widths itself: drop --expansion-ratio/--heads-ratio")
    if output is None and not ablation:
        raise PrunelabError("give the output directory with -o/--output")
    if ablation and output is not None and heldout_samples < 1:
        raise PrunelabError("saving the best amplitude needs held-out text to choose it: --heldout-samples ≥ 1")
    check_outputs(overwrite, dirs=(output,), files=(plot, json_out))

    lm = load_model(model, dtype, device)
    from prunelab.models import save

    start = time.perf_counter()
    kw = dict(calibration_samples=calib_samples, calibration_seq_len=calib_seq_len, calibration_source=calibration,
              batch_size=batch_size, repair=repair, ridge=ridge, repair_target=repair_target,
              token_weights=token_weights)
    if ablation:
        abl = _ablation(lm, ratio, amplitudes, steps, prune_heads, criterion, calibration, calib_samples,
                        calib_seq_len, batch_size, seed, ppl_windows, heldout_samples, json_out,
                        keep_best=output is not None, repair_kw={"repair": repair, "ridge": ridge,
                                                                        "repair_target": repair_target,
                                                                        "token_weights": token_weights})
        if output is None:
            return
        report = abl.reports[abl.rows.index(abl.selected)]
        lm.model = abl.best_model
        meta = {"pruning": "adaptive", "source": lm.source, **_summary(report),
                "amplitude_selection": {"heldout_tokens": abl.heldout_tokens,
                                        "rows": [_summary(r) for r in abl.rows]}}
    elif adaptive:
        from prunelab.prune.adaptive import adapt_prune

        report = adapt_prune(lm.model, lm.tokenizer, ratio=ratio, amplitude=amplitudes[0], steps=steps, seed=seed,
                             prune_heads=prune_heads, criterion=criterion, **kw)
        meta = {"pruning": "adaptive", "source": lm.source, **_summary(report)}
    else:
        from prunelab.prune.width import prune_width

        report = prune_width(lm.model, lm.tokenizer, criterion=criterion, ratio=ratio, expansion_ratio=expansion_ratio,
                             heads_ratio=heads_ratio, round_to=round_to, seed=seed, **kw)
        meta = {"pruning": "width", "source": lm.source, **_summary(report)}
    save(lm.model, lm.tokenizer, output, metadata=meta)
    elapsed = time.perf_counter() - start
    if adaptive:
        from prunelab.prune.adaptive import plot_sparsity_profile

        plot_path = plot_sparsity_profile(report, plot or output / "sparsity_profile.png")
        _print_profile(report)
        err_console.print(f"sparsity profile: {plot_path}")
    console.print(
        f"{lm.source} → {output}: params {human(report.params_before)} → {human(report.params_after)} "
        f"({100 * report.params_after / report.params_before:.1f}%), non-embedding "
        f"{human(report.non_embedding_before)} → {human(report.non_embedding_after)}; "
        f"pruned in {report.seconds:.2f}s ("
        + (f"choosing A among {len(amplitudes)} amplitudes and saving: {elapsed:.1f}s)" if ablation
           else f"with saving {elapsed:.1f}s)")
    )
    if getattr(report, "repair", None) is not None:
        rr = report.repair
        console.print(f"repair {rr.method} (target {rr.target}, ridge {'auto' if rr.ridge is None else f'{rr.ridge:g}'}, {rr.tokens} tokens): mean relative reconstruction "
                      f"error of {len(rr.projections)} projections {rr.mean_error_before:.4f} → "
                      f"{rr.mean_error_after:.4f} in {rr.seconds:.1f}s")
    selection = {"amplitude_selection": meta["amplitude_selection"]} if ablation else {}
    emit_json({"model": lm.source, "output": str(output), **_summary(report), **selection, "total_seconds": elapsed},
              json_out)


def _summary(report) -> dict:
    """The report as JSON without the (large) kept-index lists."""
    from prunelab.atomic import to_jsonable

    data = to_jsonable(report)
    data.pop("kept_neurons", None)
    data.pop("kept_heads", None)
    return data


def _print_profile(report) -> None:
    t = Table(title=f"Adapt-Pruner profile (A={report.amplitude:g}, T={report.steps}, S={report.ratio:g}, "
                    f"{report.criterion})")
    for col in ("layer", "importance", "target %", "sparsity %", "MLP", "heads", "KV"):
        t.add_column(col, justify="right")
    for row in report.table():
        t.add_row(str(row["layer"]), f"{row['importance']:+.3f}", f"{100 * row['target']:.1f}",
                  f"{100 * row['sparsity']:.1f}", str(row["mlp_width"]), str(row["heads"]), str(row["kv_heads"]))
    console.print(t)


def _ablation(lm, ratio, amplitudes, steps, prune_heads, criterion, calibration, calib_samples, calib_seq_len, batch_size, seed,
              ppl_windows, heldout_samples, json_out, keep_best: bool = False, repair_kw: dict | None = None):
    from prunelab.prune.adaptive import amplitude_ablation

    if ppl_windows < 1:
        raise PrunelabError(f"--ppl-windows must be ≥ 1, got {ppl_windows}")
    if heldout_samples < 0:
        raise PrunelabError(f"--heldout-samples must be ≥ 0, got {heldout_samples}")
    rep = amplitude_ablation(lm.model, lm.tokenizer, ratio=ratio, amplitudes=amplitudes, steps=steps, seed=seed,
                             ppl_windows=ppl_windows, heldout_samples=heldout_samples, prune_heads=prune_heads,
                             criterion=criterion, keep_best=keep_best, **(repair_kw or {}),
                             calibration_source=calibration,
                             calibration_samples=calib_samples, calibration_seq_len=calib_seq_len,
                             batch_size=batch_size)
    t = Table(title=f"Adapt-Pruner amplitude ablation (S={ratio:g}, T={steps}; dense: {human(rep.params_before)} "
                    f"params, ppl {rep.perplexity_before:.2f})")
    for col in ("A", "params", "non-embedding", "block sparsity %", "held-out ppl", "WikiText-2 ppl", "seconds"):
        t.add_column(col, justify="right")
    best = rep.selected
    for r in rep.rows:
        held = "n/a" if r.heldout_perplexity is None else f"{r.heldout_perplexity:.2f}" + (" ←" if r is best else "")
        t.add_row(f"{r.amplitude:g}", human(r.params), human(r.non_embedding), f"{100 * r.sparsity:.1f}", held,
                  f"{r.perplexity:.2f}", f"{r.seconds:.1f}")
    console.print(t)
    if best is not None:
        console.print(f"selected A = {best.amplitude:g} (lowest perplexity on {rep.heldout_tokens} held-out "
                      f"{calibration} tokens, disjoint from calibration and from WikiText-2)")
    from prunelab.atomic import to_jsonable

    data = to_jsonable(rep)
    data["reports"] = [_summary(r) for r in rep.reports]
    data["selected_amplitude"] = None if best is None else best.amplitude
    data.pop("best_model", None)
    if not keep_best:  # when a model is saved, the command's own JSON (with the ablation inside) is written instead
        emit_json({"model": lm.source, **data}, json_out)
    return rep


def register(app: typer.Typer) -> None:
    from prunelab.cli._groups import prune_app

    prune_app.command("width")(prune_width_cmd)
