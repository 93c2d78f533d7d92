"""``prunelab prune depth MODEL --remove K --objective perplexity --search greedy -o OUT``."""

from __future__ import annotations

from pathlib import Path

import typer

from prunelab.cli._common import (DeviceOpt, DtypeOpt, JsonOpt, ModelArg, OverwriteOpt, check_outputs, console, emit_json,
                                  load_model)

SEARCH_OPTION_HELP = "Search option override KEY=VALUE (repeatable), e.g. trials=50 for bo, beam_width=3."


def parse_search_options(items: list[str] | None) -> dict[str, str]:
    """``["trials=50"]`` -> ``{"trials": "50"}`` (types are checked against the search's defaults later)."""
    from prunelab.errors import PrunelabError

    out = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise PrunelabError(f"search option must be KEY=VALUE, got '{item}'")
        out[key.strip()] = val.strip()
    return out


def calibration_options(objective: str, n_samples: int | None, seq_len: int, source: str, mc_source: str,
                        batch_size: int | None) -> dict:
    """Calibration sizing for :func:`prunelab.prune.depth.search_blocks` per objective."""
    from prunelab.errors import PrunelabError

    if n_samples is not None and n_samples <= 0:
        raise PrunelabError(f"--calib-samples must be positive, got {n_samples} (empty calibration set)")
    if objective == "margin":
        opts = {"mc_source": mc_source, "n_samples": n_samples or 64}
    else:
        opts = {"source": source, "seq_len": seq_len, "n_samples": n_samples or 32}
    if batch_size is not None:
        opts["batch_size"] = batch_size
    return opts


def prune_depth_cmd(
    model: str = ModelArg,
    remove: int = typer.Option(..., "--remove", "-k", help="Number of blocks to remove (1 ≤ K < blocks)."),
    objective: str = typer.Option("perplexity", help="Calibration objective: perplexity or margin."),
    search: str = typer.Option("greedy", help="one-shot, greedy, beam, ga, bo, cbo, fast-block-select."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for the pruned model."),
    calib_samples: int = typer.Option(None, "--calib-samples",
                                      help="Calibration size: token windows (perplexity, default 32) or MC items "
                                           "(margin, default 64)."),
    calib_seq_len: int = typer.Option(128, "--calib-seq-len", help="Tokens per calibration window (perplexity)."),
    calib_source: str = typer.Option("lambada", "--calib-source",
                                     help="Perplexity calibration text: lambada (calibration pool), dolly, "
                                          "wikipedia (BoolQ passages), c4, wikitext2 or a text file."),
    mc_source: str = typer.Option("arc_easy:validation", "--mc-source",
                                  help="Margin calibration items: arc_easy|arc_challenge:train|validation."),
    batch_size: int = typer.Option(None, "--batch-size", help="Calibration batch size."),
    search_opt: list[str] = typer.Option(None, "--search-opt", help=SEARCH_OPTION_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed for calibration sampling and stochastic searches."),
    compensate: str = typer.Option("none", "--compensate", help="Fold a compensation for the removed blocks into the "
                                   "kept weights: none, linear (ReplaceMe map merged into the preceding down_proj), "
                                   "scale (Prune&Comp magnitude rescale), refit (every later block's down_proj re-fitted "
                                   "toward the dense model's stream), refit+attn (refit, and each later block's "
                                   "o_proj re-fitted toward the dense stream after its attention)."),
    ridge: float = typer.Option(None, "--ridge", help="--compensate linear / refit / refit+attn: ridge λ relative to the mean "
                                "Gram diagonal (default: auto, 2 × width / calibration tokens)."),
    compensated_search: bool = typer.Option(False, "--compensated-search", help="Score every search candidate with "
                                            "--compensate applied (one-shot/greedy/beam, perplexity; ~2.5 uncached "
                                            "passes per candidate)."),
    token_weights: str = typer.Option("normalized", "--token-weights", help="--compensate: weight of each "
                                      "calibration token in the fit of T / α — normalized (1/‖stream‖², as the next "
                                      "RMSNorm sees errors; default) or uniform."),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Remove K whole blocks chosen by SEARCH under OBJECTIVE; save the smaller model to OUT."""
    from prunelab.models import save
    from prunelab.models.surgery import remove_layers
    from prunelab.prune.depth import OBJECTIVES, SEARCHES, search_blocks, validate_budget

    # validate everything cheap before loading anything
    SEARCHES.get(search)
    OBJECTIVES.get(objective)
    if remove <= 0:
        validate_budget(remove, remove + 1)
    opts = parse_search_options(search_opt)
    calib = calibration_options(objective, calib_samples, calib_seq_len, calib_source, mc_source, batch_size)
    from prunelab.errors import PrunelabError
    from prunelab.prune.depth_repair import COMPENSATIONS
    from prunelab.prune.repair import DEFAULT_RIDGE, TOKEN_WEIGHTS

    COMPENSATIONS.get(compensate)
    TOKEN_WEIGHTS.get(token_weights)
    ridge = DEFAULT_RIDGE if ridge is None else ridge
    if ridge is not None and not ridge >= 0:
        raise PrunelabError(f"--ridge must be ≥ 0, got {ridge}")
    if compensated_search:
        from prunelab.prune.depth_repair import COMPENSATED_SEARCHES

        if compensate == "none":
            raise PrunelabError("--compensated-search needs --compensate linear, scale, refit or refit+attn")
        if search not in COMPENSATED_SEARCHES or objective != "perplexity":
            raise PrunelabError(f"--compensated-search supports the perplexity objective with "
                                f"{', '.join(COMPENSATED_SEARCHES)} searches")
    check_outputs(overwrite, dirs=(out,), files=(json_out,))
    lm = load_model(model, dtype, device)
    from prunelab.prune.depth_repair import check_family

    check_family(lm.model, compensate)  # e.g. linear on Gemma2: refused before the search, not after it
    res = search_blocks(lm.model, remove, objective, search, tokenizer=lm.tokenizer, seed=seed, options=opts,
                        calibration_options=calib, compensate=compensate if compensated_search else "none",
                        ridge=ridge, token_weights=token_weights)
    comp = None
    if compensate == "none":
        remove_layers(lm.model, res.removed)
    else:
        from prunelab.atomic import to_jsonable
        from prunelab.data import calibration_batch
        from prunelab.prune.depth_repair import check_compensation, compensate_and_remove

        # the perplexity objective's own calibration tokens (same arguments); margin objectives: text windows
        tokens = calibration_batch(lm.tokenizer, n_samples=calib.get("n_samples", 32) if objective == "perplexity"
                                   else 32, seq_len=calib_seq_len, source=calib_source, seed=seed)
        check_compensation(lm.model, res.removed, compensate, ridge, tokens)
        comp = compensate_and_remove(lm.model, res.removed, tokens, compensate, ridge,
                                     batch_size=calib.get("batch_size", 8), token_weights=token_weights)
        res.stats["compensation"] = {k: v for k, v in to_jsonable(comp).items() if k != "transforms"}
    save(lm.model, lm.tokenizer, out, metadata={"depth_pruning": {"source": lm.source, **res.__dict__,
                                                                    "calibration": calib}})
    if comp is not None:
        console.print(f"compensation {compensate}: " + "; ".join(
            f"blocks {r.first}–{r.last} hidden-state error {r.error_before:.4f} → {r.error_after:.4f}"
            + (f" (α {r.alpha:.3f})" if r.alpha is not None else "") for r in comp.runs) + f" in {comp.seconds:.1f}s")
    console.print(
        f"{lm.source}: removed blocks [bold]{res.removed}[/] of {res.n_blocks} ({search}, {objective}); "
        f"objective {res.baseline_value:.4f} → [bold]{res.objective_value:.4f}[/]; "
        f"{res.candidates} candidates in {res.seconds:.1f}s; saved {out}"
    )
    emit_json({"model": lm.source, "out": str(out), "calibration": calib, **res.__dict__}, json_out)


def register(app: typer.Typer) -> None:
    from prunelab.cli._groups import prune_app

    prune_app.command("depth")(prune_depth_cmd)
