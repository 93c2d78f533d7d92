"""``prunelab perplexity MODEL``: token-level perplexity of WikiText-2 (or a text file)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from prunelab.cli._common import (DeviceOpt, DtypeOpt, JsonOpt, ModelArg, OverwriteOpt, check_outputs, console,
                                  emit_json, load_model)


def perplexity_cmd(
    model: str = ModelArg,
    text_file: Path = typer.Option(None, "--text", help="Text file to score (default: WikiText-2 test)."),
    seq_len: int = typer.Option(512, help="Window length in tokens."),
    stride: int = typer.Option(None, help="Window stride (default: seq_len, non-overlapping)."),
    windows: int = typer.Option(None, "--windows", help="Score only the first N windows (a slice)."),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Perplexity over non-overlapping windows of the whole text."""
    from prunelab.data import load_wikitext2_text
    from prunelab.data.loaders import read_text_file
    from prunelab.evaluate.perplexity import perplexity

    if windows is not None and windows <= 0:
        from prunelab.errors import PrunelabError

        raise PrunelabError(f"--windows must be positive, got {windows}")
    check_outputs(overwrite, files=(json_out,))
    lm = load_model(model, dtype, device)
    text = read_text_file(text_file) if text_file else load_wikitext2_text()
    start = time.perf_counter()
    res = perplexity(lm.model, lm.tokenizer, text, seq_len=seq_len, stride=stride, max_windows=windows)
    elapsed = time.perf_counter() - start
    console.print(
        f"{lm.source}: perplexity [bold]{res.perplexity:.3f}[/] over {res.tokens:,} tokens "
        f"({res.windows} windows × {res.seq_len}) in {elapsed:.1f}s"
    )
    emit_json({"model": lm.source, "text": str(text_file) if text_file else "wikitext2", **res.__dict__,
               "seconds": elapsed}, json_out)


def register(app: typer.Typer) -> None:
    app.command("perplexity")(perplexity_cmd)
