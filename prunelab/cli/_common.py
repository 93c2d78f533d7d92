"""Shared CLI pieces: consoles, common options, model loading with a spinner, JSON output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

ModelArg = typer.Argument(..., help="Model: alias (smollm2-135m), local HF dir, .gguf file, or hub id.")
DtypeOpt = typer.Option("auto", "--dtype", help="auto (fp32 on CPU, bf16 on GPU), float32, float16, bfloat16.")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ...")
DataDirOpt = typer.Option(None, "--data-dir", help="Folder holding the datasets (default: $PRUNELAB_DATA, ../shared/data).")
JsonOpt = typer.Option(None, "--json", help="Also write the result as JSON to this file.")


def quiet_libraries() -> None:
    """Silence library chatter (per-layer-config warnings, weight-loading bars) so prunelab's own output reads."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()  # "Writing model shards" on every save
    except ImportError:  # pragma: no cover
        pass
    import warnings

    # transformers' own deprecation notices (e.g. is_gradient_checkpointing inside Trainer) are not the user's to fix
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def apply_data_dir(data_dir: Path | None) -> None:
    if data_dir is not None:
        from prunelab.data.paths import set_data_dir

        set_data_dir(data_dir)


def load_model(source: str, dtype: str = "auto", device: str = "auto"):
    """Load with a status spinner on stderr."""
    from prunelab.models import load

    with err_console.status(f"loading {source} ..."):
        return load(source, dtype=dtype, device=device)


def emit_json(obj: Any, path: Path | None) -> None:
    """Write ``obj`` as JSON to ``path`` atomically, if a path was given."""
    if path is not None:
        from prunelab.atomic import write_json

        write_json(path, obj)
        err_console.print(f"wrote {path}")


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"
