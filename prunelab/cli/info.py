"""``prunelab info MODEL``: architecture, per-layer widths and heads, parameter and FLOP counts."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from prunelab.cli._common import (DeviceOpt, DtypeOpt, ModelArg, OverwriteOpt, check_outputs, console, emit_json, human,
                                  load_model)


def info(
    model: str = ModelArg,
    as_json: bool = typer.Option(False, "--json", help="Print JSON to stdout instead of a table."),
    json_out: Path = typer.Option(None, "--output", "-o", help="Also write the JSON to this file."),
    context_len: int = typer.Option(512, help="Context length for the attention term of FLOPs/token."),
    overwrite: bool = OverwriteOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Print a model's layers, hidden size, MLP widths, heads, parameters and FLOPs per token."""
    from prunelab.atomic import to_jsonable
    from prunelab.models import model_info

    check_outputs(overwrite, files=(json_out,))
    lm = load_model(model, dtype, device)
    mi = model_info(lm.model, context_len=context_len)
    data = to_jsonable(mi)
    data["source"] = lm.source
    data["intermediate_size"] = mi.intermediate_size
    if as_json:
        import json

        console.print_json(json.dumps(data))
    else:
        t = Table(title=f"{lm.source} ({mi.family})", show_header=False)
        t.add_row("layers", str(mi.num_layers))
        t.add_row("hidden size", str(mi.hidden_size))
        t.add_row("MLP intermediate", _compact(mi.intermediate_sizes))
        t.add_row("query heads", _compact(mi.num_heads))
        t.add_row("KV heads", _compact(mi.num_kv_heads))
        t.add_row("head dim", str(mi.head_dim))
        t.add_row("params (total)", f"{mi.params_total:,} ({human(mi.params_total)})")
        t.add_row("params (non-embedding)", f"{mi.params_non_embedding:,}")
        t.add_row("FLOPs/token", f"{human(mi.flops_per_token)} (context {mi.flops_context_len})")
        t.add_row("tied embeddings", str(mi.tied_embeddings))
        console.print(t)
    emit_json(data, json_out)


def _compact(values: list[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else ", ".join(map(str, values))


def register(app: typer.Typer) -> None:
    app.command("info")(info)
