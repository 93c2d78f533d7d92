"""Load any supported model (alias, GGUF, local dir, hub id) and save pruned models in HF format.

Uniformly pruned models are written with updated global config fields and reload with plain
``AutoModelForCausalLM.from_pretrained``. Non-uniform ones (per-layer MLP widths / head counts) are written
in transformers' native ``per_layer_config`` schema; until the Llama-family modeling code reads that field,
:func:`load` rebuilds each layer from ``config.per_layer_config[i]`` before loading the weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunelab.atomic import atomic_dir
from prunelab.errors import PrunelabError
from prunelab.models.adapters import FamilyAdapter, adapter_for
from prunelab.models.sources import (
    ALIASES,
    looks_like_hub_id,
    resolve_alias,
    resolve_gguf,
    set_offline_if_local,
)
from prunelab.models.surgery import build_layer, layer_overrides, sync_config

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model with its tokenizer and where it came from."""

    model: nn.Module
    tokenizer: object
    source: str
    path: Path | None = None

    @property
    def adapter(self) -> FamilyAdapter:
        return adapter_for(self.model)


def resolve_device(device: str | None = None) -> torch.device:
    """``auto``/None → CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``/None → fp32 on CPU, bf16 on GPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise PrunelabError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_source(source: str | Path) -> tuple[Path | None, str]:
    """Map a user-given model source to a local HF directory (or None + hub id)."""
    text = str(source)
    if text in ALIASES:
        return resolve_alias(text), text
    path = Path(text).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix == ".gguf":
                return resolve_gguf(path), text
            raise PrunelabError(f"{path} is a file but not a .gguf model; give a model directory, .gguf file or hub id")
        if not (path / "config.json").exists():
            raise PrunelabError(f"{path} is not a model directory (no config.json)")
        return path, text
    if looks_like_hub_id(text):
        return None, text
    raise PrunelabError(
        f"model '{text}' not found: no such file or directory, and not an alias ({', '.join(ALIASES)}) or hub id"
    )


def _read_config_json(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PrunelabError(f"corrupt config.json in {path}: {exc}") from exc


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise PrunelabError(f"no *.safetensors weights in {path}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
            _raise_if_out_of_memory(exc)
            raise PrunelabError(f"corrupt checkpoint {f}: {exc}") from exc
    return state


def _raise_if_out_of_memory(exc: BaseException) -> None:
    """A failed mmap/allocation is not a corrupt file: re-raise it as :class:`MemoryError` (the CLI names it)."""
    from prunelab.atomic import resource_problem

    problem = resource_problem(exc)
    if problem is not None and problem[0] == "out of memory":
        raise MemoryError(str(exc).splitlines()[0] if str(exc) else "out of memory") from exc


def _load_heterogeneous(path: Path, dtype: torch.dtype):
    """Rebuild a per-layer pruned model: global skeleton, then each layer from ``config.per_layer_config[i]``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    config.allow_global_per_layer_attribute_access = True
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    layers = adapter_for(model).layers(model)
    for i in range(len(layers)):
        overrides = layer_overrides(config, i)
        if overrides:
            layers[i] = build_layer(model, i, overrides)
    state = _load_state_dict(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise PrunelabError(
            f"checkpoint {path} does not match its config: missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.tie_weights()
    return model.eval()


def load(source: str | Path, dtype: str | torch.dtype | None = None, device: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer from an alias, a ``.gguf`` file, a local HF directory or a hub id.

    The architecture must be one prunelab has an adapter for (Llama, Qwen2/3, Mistral, Gemma2, Phi3).
    Per-layer pruned checkpoints (``per_layer_config`` in config.json) are rebuilt layer by layer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, name = resolve_source(source)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if path is not None:
        set_offline_if_local()
        cfg = _read_config_json(path)
        adapter_for(cfg.get("model_type"))  # clear error for unsupported architectures before any loading
        where = str(path)
    else:
        where = name
    try:
        if path is not None and cfg.get("per_layer_config"):
            model = _load_heterogeneous(path, torch_dtype)
        else:
            if path is not None:
                _check_safetensors(path)
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype)
            adapter_for(model)
        tokenizer = AutoTokenizer.from_pretrained(where)
    except (PrunelabError, MemoryError):
        raise
    except OSError as exc:
        _raise_if_out_of_memory(exc)
        raise PrunelabError(f"cannot load model '{name}': {str(exc).splitlines()[0]}") from exc
    except Exception as exc:
        _raise_if_out_of_memory(exc)
        raise PrunelabError(f"cannot load model '{name}' ({type(exc).__name__}): {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dev).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=name, path=path)


def _check_safetensors(path: Path) -> None:
    """Fail with one clear line on a truncated/corrupt safetensors file (transformers' message is long)."""
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as fh:
                keys = list(fh.keys())
                if keys:
                    fh.get_slice(keys[-1])  # touches the header offsets of the last tensor
            size = f.stat().st_size
            header_end = _safetensors_data_end(f)
            if header_end > size:
                raise ValueError(f"file is truncated ({size} bytes, header needs {header_end})")
        except Exception as exc:
            _raise_if_out_of_memory(exc)
            raise PrunelabError(f"corrupt checkpoint {f}: {exc}") from exc


def _safetensors_data_end(f: Path) -> int:
    """Byte offset where the last tensor of a safetensors file ends, read from its JSON header."""
    import struct

    with open(f, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + n + (max(ends) if ends else 0)


def save(model: nn.Module, tokenizer, out_dir: str | Path, metadata: dict | None = None,
         overwrite: bool = False) -> Path:
    """Save ``model`` (+ tokenizer) in HF format, atomically (temp dir, then rename).

    The config is first synced with the actual layer shapes (:func:`~prunelab.models.surgery.sync_config`).
    ``metadata`` (e.g. how the model was pruned) is written to ``prunelab.json`` beside the weights, and a
    model card ``README.md`` (:mod:`prunelab.models.card`) describes the model in Hugging Face's format.
    An existing ``out_dir`` is replaced only if prunelab wrote it (or it is empty), unless ``overwrite``;
    the rule and the refusals are :mod:`prunelab.atomic`'s (checked on entry, before anything is written).
    """
    out = Path(out_dir)
    sync_config(model)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if metadata:
            from prunelab.atomic import to_jsonable

            (tmp / "prunelab.json").write_text(json.dumps(to_jsonable(metadata), indent=2) + "\n")
        # Hugging Face model card (README.md): recipe, shapes, how to load; inside the atomic folder
        from prunelab.models.card import write_model_card

        write_model_card(model, tmp, metadata)
    return out
