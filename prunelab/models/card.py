"""Model cards: the ``README.md`` in every model folder prunelab saves, in Hugging Face's model-card format.

The card has YAML front matter (``base_model``, ``library_name: transformers``, ``tags: [pruned, prunelab]``,
``license`` when the source states one — https://huggingface.co/docs/hub/model-cards) and says how the model
was made (from the metadata :func:`prunelab.save` also writes to ``prunelab.json``), what it contains
(parameter counts, per-block shapes read from the weights) and how to load it. It lists metrics only when the
metadata carries results prunelab measured on this model (a ``metrics`` mapping); it never estimates any.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from prunelab.models.counts import count_parameters
from prunelab.models.surgery import layer_shapes

#: prunelab aliases → the Hugging Face model they are a copy of (for ``base_model``).
ALIAS_BASE_MODELS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


@dataclass
class SourceInfo:
    """What is known about the model a saved model was derived from."""

    source: str | None
    base_model: str | None
    license: str | None


def _front_matter(readme: Path) -> dict:
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    m = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.S)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _gguf_license(path: Path) -> str | None:
    try:
        import gguf

        field = gguf.GGUFReader(str(path)).get_field("general.license")
        return field.contents() if field is not None else None
    except Exception:  # a card is best-effort about licences: an unreadable file just means "unknown"
        return None


def source_of(metadata: dict | None) -> str | None:
    """The source model named in prunelab's save metadata (top level, or inside a stage's record)."""
    if not metadata:
        return None
    if isinstance(metadata.get("source"), str):
        return metadata["source"]
    for value in metadata.values():
        if isinstance(value, dict) and isinstance(value.get("source"), str):
            return value["source"]
    return None


def source_info(source: str | None) -> SourceInfo:
    """Base model and licence of ``source``: an alias, a local folder (its own model card) or a hub id."""
    if not source:
        return SourceInfo(None, None, None)
    from prunelab.models.sources import ALIASES, cache_dir, looks_like_hub_id

    if source in ALIASES:
        cached = cache_dir() / "gguf-files" / Path(ALIASES[source].gguf_member).name  # never downloads here
        return SourceInfo(source, ALIAS_BASE_MODELS.get(source), _gguf_license(cached) if cached.is_file() else None)
    path = Path(source).expanduser()
    if path.is_dir():
        fm = _front_matter(path / "README.md")
        base = fm.get("base_model")
        if isinstance(base, list):
            base = base[0] if base else None
        return SourceInfo(source, base if isinstance(base, str) else None,
                          fm.get("license") if isinstance(fm.get("license"), str) else None)
    if path.suffix == ".gguf" and path.is_file():
        return SourceInfo(source, None, _gguf_license(path))
    if looks_like_hub_id(source):
        return SourceInfo(source, source, None)
    return SourceInfo(source, None, None)


def _fmt(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f} M)"


def _recipe_lines(metadata: dict) -> list[str]:
    """Readable lines for the records prunelab's commands store (the full record follows as JSON)."""
    lines: list[str] = []
    kind = metadata.get("pruning")
    if kind in ("width", "adaptive"):
        what = "Adapt-Pruner per-layer width pruning" if kind == "adaptive" else "uniform width pruning"
        lines.append(f"- **Method**: {what}, criterion `{metadata.get('criterion')}`")
        for key, label in (("ratio", "target ratio"), ("expansion_ratio", "expansion ratio"),
                           ("heads_ratio", "heads ratio"), ("amplitude", "amplitude A"), ("steps", "steps"),
                           ("round_to", "widths rounded to")):
            if metadata.get(key) not in (None, 0, 0.0) or (key == "ratio" and metadata.get(key) is not None):
                lines.append(f"- **{label[0].upper() + label[1:]}**: {metadata[key]}")
    elif isinstance(kind, dict):  # experiment specs store their pruning block
        lines.append("- **Method**: " + ", ".join(f"{k} `{v}`" for k, v in kind.items() if v is not None))
    depth = metadata.get("depth_pruning")
    if isinstance(depth, dict):
        lines.append(f"- **Method**: depth pruning — removed blocks {depth.get('removed')} of "
                     f"{depth.get('n_blocks')} ({depth.get('search')} search, {depth.get('objective')} objective)")
        comp = (depth.get("stats") or {}).get("compensation")
        if comp:
            lines.append(f"- **Compensation**: {comp.get('method', comp)}" if isinstance(comp, dict)
                         else f"- **Compensation**: {comp}")
    calib = metadata.get("calibration_shape")
    if calib is None and isinstance(depth, dict):
        calib = depth.get("calibration")
    if isinstance(calib, list) and len(calib) == 2:
        src = metadata.get("calibration_source")
        lines.append(f"- **Calibration**: {calib[0]} samples × {calib[1]} tokens"
                     + (f" from {src}" if src else ""))
    elif isinstance(calib, dict) and calib:
        lines.append("- **Calibration**: " + ", ".join(f"{k} {v}" for k, v in calib.items()))
    repair = metadata.get("repair")
    if isinstance(repair, dict):
        lines.append(f"- **Repair**: {repair.get('method')} (ridge {repair.get('ridge')}, {repair.get('tokens')} "
                     "tokens)")
    elif kind in ("width", "adaptive"):
        lines.append("- **Repair**: none")
    rec = metadata.get("recovery")
    if isinstance(rec, dict):
        lines.append(f"- **Recovery**: LoRA `{rec.get('mechanism')}`, {rec.get('epochs')} epochs on "
                     f"{rec.get('n_samples')} samples × {rec.get('seq_len')} tokens; training loss "
                     f"{rec.get('initial_loss')} → {rec.get('final_loss')}")
    if metadata.get("stress"):
        lines.append(f"- **Stress**: {metadata['stress']}")
    if "padded_uniform" in metadata:
        pad = metadata["padded_uniform"]
        lines.append(f"- **Padded to uniform shapes** with exact zeros (MLP width {pad.get('intermediate_size')}, "
                     f"{pad.get('num_heads')} query / {pad.get('num_kv_heads')} KV heads): same outputs as the "
                     "per-layer model, dense-model cost")
    return lines


def model_card(model: nn.Module, metadata: dict | None = None, name: str | None = None) -> str:
    """The README.md text for ``model`` saved with ``metadata`` (see the module docstring)."""
    from prunelab.atomic import to_jsonable

    metadata = to_jsonable(metadata) if metadata else {}
    info = source_info(source_of(metadata))
    inherited = metadata.get("base_model") if isinstance(metadata.get("base_model"), str) else None
    base = inherited or info.base_model
    license_ = metadata.get("license") if isinstance(metadata.get("license"), str) else info.license
    front: dict[str, Any] = {}
    if base:
        front["base_model"] = base
    front["library_name"] = "transformers"
    if license_:
        front["license"] = license_
    front["pipeline_tag"] = "text-generation"
    front["tags"] = ["pruned", "prunelab"]

    shapes = layer_shapes(model)
    counts = count_parameters(model)
    cfg = model.config
    title = name or (f"{base.split('/')[-1]} (pruned with prunelab)" if base else "Model saved by prunelab")
    out = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {title}", ""]
    if base:
        out += [f"Derived from [{base}](https://huggingface.co/{base}) with "
                "prunelab (structured pruning and recovery).", ""]
    elif info.source:
        out += [f"Derived from `{info.source}` with prunelab (structured pruning and recovery).", ""]

    out += ["## How it was made", ""]
    recipe = _recipe_lines(metadata)
    out += recipe or ["- No pruning recipe was recorded with this model."]
    record = json.dumps(metadata, indent=2)
    if metadata and len(record) <= 20000:  # long search records stay in prunelab.json only
        out += ["", "<details><summary>Full record (also in <code>prunelab.json</code>)</summary>", "",
                "```json", record, "```", "", "</details>"]
    elif metadata:
        out += ["", "The full record is in `prunelab.json`."]

    out += ["", "## What it contains", "", "| | parameters |", "|---|---|",
            f"| total (tied embeddings once) | {_fmt(counts.total)} |", f"| embedding | {_fmt(counts.embedding)} |",
            f"| non-embedding | {_fmt(counts.non_embedding)} |", "",
            f"{len(shapes)} decoder blocks, hidden size {cfg.hidden_size}, vocabulary {cfg.vocab_size}.", ""]
    uniform = len({tuple(s.values()) for s in shapes}) == 1
    # read from the weights: transformers' config.per_layer_config is a view object even on uniform models
    # (a uniform head count that does not divide the hidden size also stays per-layer, see sync_config)
    per_layer = not uniform or (bool(shapes) and cfg.hidden_size % shapes[0]["num_attention_heads"] != 0)
    if uniform and shapes:
        s = shapes[0]
        out += [f"Every block: MLP width {s['intermediate_size']}, {s['num_attention_heads']} query heads, "
                f"{s['num_key_value_heads']} KV heads.", ""]
    else:
        out += ["| block | MLP width | query heads | KV heads |", "|---|---|---|---|"]
        out += [f"| {i} | {s['intermediate_size']} | {s['num_attention_heads']} | {s['num_key_value_heads']} |"
                for i, s in enumerate(shapes)]
        out.append("")

    out += ["## How to load", ""]
    if per_layer:
        out += ["Blocks differ in width, which plain `transformers` cannot build yet; load it with prunelab:", "",
                "```python", "import prunelab", "", 'lm = prunelab.load("path/to/this/folder")',
                "model, tokenizer = lm.model, lm.tokenizer", "```", "",
                "or make a copy that any Llama-compatible engine loads (exact zeros pad every block to one shape, "
                "identical outputs):", "", "```bash", "prunelab export hf --pad-uniform path/to/this/folder -o padded",
                "```", ""]
    else:
        out += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
                'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")', "```", "",
                "(`prunelab.load` works too.)", ""]
    out += ["For llama.cpp (per-layer widths included): `prunelab export gguf path/to/this/folder -o model.gguf`.",
            "", "## Evaluation", ""]
    metrics = metadata.get("metrics")
    if isinstance(metrics, dict) and metrics:
        out += ["Measured on this model by prunelab:", "", "| metric | value |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        out.append("No evaluation results were measured on this model by prunelab; none are reported here.")
    return "\n".join(out) + "\n"


def write_model_card(model: nn.Module, folder: str | Path, metadata: dict | None = None) -> Path:
    """Write :func:`model_card` to ``folder/README.md`` (``folder`` is a save's temporary folder, so the
    write is part of that save's atomic rename)."""
    path = Path(folder) / "README.md"
    path.write_text(model_card(model, metadata), encoding="utf-8")
    return path
