"""``prunelab export gguf|hf``: run pruned models where users deploy (thin CLI layer over :mod:`prunelab.export`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prunelab.cli._common import (DeviceOpt, JsonOpt, ModelArg, OverwriteOpt, check_outputs, console, emit_json,
                                  human, load_model)
from prunelab.errors import PrunelabError

export_app = typer.Typer(help="Export a model for inference engines: GGUF for llama.cpp, or plain HF Llama.",
                         no_args_is_help=True)


def _stored_metadata(path: Path | None) -> dict:
    """The source folder's ``prunelab.json`` (how it was pruned), if it has one."""
    if path is None or not (path / "prunelab.json").is_file():
        return {}
    try:
        data = json.loads((path / "prunelab.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _precheck_family(model: str) -> None:
    """Refuse an unsupported family from a local folder's config.json before loading any weights."""
    from prunelab.export.gguf import SUPPORTED_FAMILIES, UNSUPPORTED_FAMILIES

    cfg = Path(model).expanduser() / "config.json"
    if not cfg.is_file():
        return
    try:
        model_type = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return  # prunelab.load reports the corrupt config in its own words
    if model_type in UNSUPPORTED_FAMILIES:
        raise PrunelabError(f"cannot export a {model_type} model to GGUF: {UNSUPPORTED_FAMILIES[model_type]}; "
                            f"supported families: {', '.join(SUPPORTED_FAMILIES)}")


@export_app.command("gguf")
def gguf_cmd(
    model: str = ModelArg,
    out: Path = typer.Option(..., "-o", "--output", help="The .gguf file to write (atomically)."),
    outtype: str = typer.Option("f32", "--outtype", help="Weight storage: f32, f16, bf16 or q8_0 (norms stay f32)."),
    tokenizer_pre: str = typer.Option(None, "--tokenizer-pre", help="llama.cpp pre-tokenizer name, for BPE "
                                      "tokenizers its fingerprint table does not know (e.g. gpt-2, llama-bpe)."),
    pad_to: int = typer.Option(32, "--pad-to", help="Zero-pad MLP widths to a multiple of this (exact; llama.cpp's "
                               "fast kernels need it: 0.85x → 1.28x dense prompt speed at 40 % pruning). 1 = as is."),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
    device: str = DeviceOpt,
) -> None:
    """Write a llama.cpp GGUF (llama architecture; per-layer widths/heads as llama.cpp's deci architecture)."""
    from prunelab.export._bpe_pre import PRE_TOKENIZER_BY_HASH
    from prunelab.export.gguf import OUTTYPES, export_gguf

    OUTTYPES.get(outtype)
    known_pre = sorted(set(PRE_TOKENIZER_BY_HASH.values()) | {"default"})
    if tokenizer_pre is not None and tokenizer_pre not in known_pre:
        raise PrunelabError(f"unknown --tokenizer-pre '{tokenizer_pre}'; llama.cpp knows: {', '.join(known_pre)}")
    if pad_to < 1:
        raise PrunelabError(f"--pad-to must be at least 1 (no padding), got {pad_to}")
    if out.suffix != ".gguf":
        raise PrunelabError(f"the output must be a .gguf file, got {out}")
    check_outputs(overwrite, files=(out, json_out))
    _precheck_family(model)
    lm = load_model(model, "float32", device)
    from prunelab.models.card import source_info

    meta = _stored_metadata(lm.path)
    src = source_info(str(lm.path) if lm.path is not None and (lm.path / "README.md").is_file() else lm.source)
    base = meta.get("base_model") or src.base_model
    rep = export_gguf(lm.model, lm.tokenizer, out, outtype=outtype, tokenizer_pre_name=tokenizer_pre,
                      name=f"{base or lm.source} (prunelab export)", license=src.license,
                      extra_metadata={"source": lm.source, **meta}, overwrite=overwrite, pad_to=pad_to)
    layout = "uniform" if rep.architecture == "llama" else "per-layer arrays"
    console.print(f"{lm.source} → {out}: {rep.architecture} architecture ({layout}), {rep.n_layers} blocks, "
                  f"{rep.outtype}, {human(rep.bytes)}B, tokenizer {rep.tokenizer_model}/{rep.tokenizer_pre}")
    if rep.f16_fallback:
        console.print(f"[yellow]note:[/] {len(rep.f16_fallback)} tensors kept as f16 (rows not a multiple of the "
                      f"{rep.outtype} block of 32), e.g. {rep.f16_fallback[0]}")
    emit_json(rep, json_out)


@export_app.command("hf")
def hf_cmd(
    model: str = ModelArg,
    out: Path = typer.Option(..., "-o", "--output", help="Directory for the HF model (written atomically)."),
    pad_uniform: bool = typer.Option(False, "--pad-uniform", help="Pad per-layer widths and head counts back to "
                                     "one shape with exact zeros, so plain transformers loads it."),
    json_out: Path = JsonOpt,
    overwrite: bool = OverwriteOpt,
    device: str = DeviceOpt,
) -> None:
    """Write a plain Hugging Face checkpoint (with --pad-uniform: loadable by vanilla transformers, same logits)."""
    from prunelab.atomic import to_jsonable
    from prunelab.export.hf_pad import pad_uniform as pad
    from prunelab.models import save

    check_outputs(overwrite, dirs=(out,), files=(json_out,))
    lm = load_model(model, "float32", device)
    meta = {"source": lm.source, **{k: v for k, v in _stored_metadata(lm.path).items() if k != "source"}}
    if lm.path is not None:  # keep the chain back to the original model in the card
        from prunelab.models.card import source_info

        base = source_info(str(lm.path)).base_model
        if base:
            meta.setdefault("base_model", base)
    if pad_uniform:
        rep = pad(lm.model)
        meta["padded_uniform"] = {k: v for k, v in to_jsonable(rep).items()}
    else:
        from prunelab.models import layer_shapes

        if len({tuple(s.values()) for s in layer_shapes(lm.model)}) > 1:
            raise PrunelabError(f"{model} has per-layer widths, which plain transformers cannot load; pass "
                                "--pad-uniform to pad it to one shape with exact zeros")
        rep = None
    save(lm.model, lm.tokenizer, out, metadata=meta, overwrite=overwrite)
    if rep is not None:
        console.print(f"{lm.source} → {out}: padded every block to MLP width {rep.intermediate_size}, "
                      f"{rep.num_heads} query / {rep.num_kv_heads} KV heads; params {human(rep.params_before)} → "
                      f"{human(rep.params_after)} (plain AutoModelForCausalLM.from_pretrained loads it)")
    else:
        console.print(f"{lm.source} → {out}")
    emit_json({"model": lm.source, "output": str(out), "padded": to_jsonable(rep)}, json_out)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
