"""``prunelab bench MODEL``: parameters, FLOPs/token, latency, throughput, peak memory, energy per token."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from prunelab.cli._common import (DeviceOpt, DtypeOpt, JsonOpt, ModelArg, OverwriteOpt, check_outputs, console,
                                  emit_json, err_console, human, load_model)


def bench_cmd(
    model: str = ModelArg,
    new_tokens: int = typer.Option(128, "--new-tokens", help="Greedy tokens generated per request."),
    batch: int = typer.Option(16, "--batch", help="Batch size of the throughput run."),
    prompt_len: int = typer.Option(32, "--prompt-len", help="Prompt length in tokens."),
    context_len: int = typer.Option(512, "--context-len", help="Context length for the attention term of FLOPs/token."),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Measure efficiency: single-request latency (batch 1), batch throughput, peak memory, energy (if readable)."""
    from prunelab.errors import PrunelabError
    from prunelab.evaluate.efficiency import measure_efficiency

    for name, v in (("--new-tokens", new_tokens), ("--batch", batch), ("--prompt-len", prompt_len)):
        if v <= 0:
            raise PrunelabError(f"{name} must be positive, got {v}")
    check_outputs(overwrite, files=(json_out,))
    lm = load_model(model, dtype, device)
    with err_console.status("measuring latency and throughput ..."):
        rep = measure_efficiency(lm.model, lm.tokenizer, new_tokens=new_tokens, batch_size=batch,
                                 prompt_len=prompt_len, context_len=context_len)
    t = Table(title=f"{lm.source} on {rep.device} ({rep.dtype}, {rep.threads} threads)", show_header=False)
    t.add_row("params", f"{rep.params_total:,} ({human(rep.params_total)}); non-embedding {rep.params_non_embedding:,}")
    t.add_row("FLOPs/token", f"{human(rep.flops_per_token)} (context {rep.flops_context_len})")
    t.add_row("latency (batch 1)", f"{rep.latency_s:.2f} s for {rep.new_tokens} tokens = {rep.latency_ms_per_token:.1f} ms/token")
    t.add_row(f"throughput (batch {rep.batch_size})", f"{rep.throughput_tok_s:.1f} tokens/s")
    t.add_row("peak memory", f"{rep.peak_memory_mb:.0f} MB ({rep.memory_kind})")
    t.add_row("energy", rep.energy_source if rep.energy_j_per_token is None
              else f"{rep.energy_j_per_token:.4f} J/token — {rep.energy_source}")
    console.print(t)
    emit_json({"model": lm.source, **rep.__dict__}, json_out)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)
