"""Shared CLI pieces: consoles, common options, model loading with a spinner, JSON output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from prunelab.console import console, err_console  # noqa: F401  (re-exported for the commands)

ModelArg = typer.Argument(..., help="Model: alias (smollm2-135m), local HF dir, .gguf file, or hub id.")
DtypeOpt = typer.Option("auto", "--dtype", help="auto (fp32 on CPU, bf16 on GPU), float32, float16, bfloat16.")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ...")
DataDirOpt = typer.Option(None, "--data-dir", help="Folder holding the datasets (default: $PRUNELAB_DATA, ../shared/data).")
JsonOpt = typer.Option(None, "--json", help="Also write the result as JSON to this file.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace existing outputs even if prunelab did not write them "
                            "(still atomic; never ., ~, / or a folder holding the checkout or the data).")


def check_outputs(overwrite: bool = False, dirs: tuple = (), files: tuple = (), work_dirs: tuple = ()) -> None:
    """Pre-flight check of every output of a command, before any model is loaded (see :mod:`prunelab.atomic`):
    missing or prunelab-written targets pass, anything else is one line naming the path and ``--overwrite``."""
    from prunelab.atomic import check_output_target

    for kind, paths in (("dir", dirs), ("file", files), ("work-dir", work_dirs)):
        for p in paths:
            check_output_target(p, kind, overwrite)


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
    from prunelab.atomic import resource_problem
    from prunelab.errors import PrunelabError
    from prunelab.models import load

    try:
        with err_console.status(f"loading {source} ..."):
            return load(source, dtype=dtype, device=device)
    except (MemoryError, RuntimeError, OSError) as exc:
        problem = resource_problem(exc)
        if problem is None or problem[0] != "out of memory":
            raise
        raise PrunelabError(f"out of memory loading {source}{_weights_size(source)}; {problem[1]}") from exc


def _weights_size(source: str) -> str:
    """`` (weights: 0.54 GB on disk)`` for a local model folder, so the user can see how much memory it needs."""
    p = Path(source)
    try:
        n = sum(f.stat().st_size for f in p.glob("*.safetensors")) if p.is_dir() else 0
    except OSError:
        n = 0
    return f" (weights: {n / 1e9:.2f} GB on disk)" if n else ""


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
