"""Export a (pruned) Llama-family model to a self-contained GGUF file that llama.cpp runs.

The file follows llama.cpp's own converter (``convert_hf_to_gguf.py``, ``LlamaModel``/``DeciModel``) and is
written with the ``gguf`` package's :class:`gguf.GGUFWriter`:

* **Uniform models** (every block has the same MLP width and head counts; blocks may have been removed) use
  the ``llama`` architecture with scalar ``feed_forward_length`` / ``head_count`` / ``head_count_kv``.
* **Per-layer models** (Adapt-Pruner, per-layer head pruning) use llama.cpp's ``deci`` architecture — the
  Llama graph of DeciLM / Llama-Nemotron-NAS, which reads those three keys as per-layer arrays and sizes every
  block's tensors from them. llama.cpp's ``llama`` architecture accepts the arrays in its metadata but builds
  every block with layer 0's sizes, so a per-layer model cannot run under that name.
* Removed blocks are simply absent (``block_count`` = kept blocks); tied embeddings omit ``output.weight``
  (llama.cpp then reuses ``token_embd``).
* q/k rows are permuted per layer from Hugging Face's rotate-half RoPE layout to llama.cpp's interleaved one
  (``LlamaModel.permute``: ``reshape(n_head, 2, head_dim/2, hidden).swapaxes(1, 2)``), with each layer's own
  head counts.
* The tokenizer (GPT-2-style byte-level BPE → ``tokenizer.ggml.model = gpt2``; byte-fallback BPE/SentencePiece
  → ``llama``), special-token ids, merges and chat template are carried over, so the file is self-contained.

Families whose modelling llama.cpp's Llama graph does not reproduce are refused with the supported list.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunelab.atomic import atomic_file
from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for
from prunelab.models.surgery import base_config, layer_shapes
from prunelab.registry import Registry

#: model_type → why llama.cpp's Llama graph cannot represent it (everything not listed and not supported too).
UNSUPPORTED_FAMILIES = {
    "qwen2": "its q/k/v projections have biases, which this exporter does not write (llama.cpp runs Qwen2 "
             "under its own qwen2 architecture, with no per-layer widths)",
    "qwen3": "it normalises q and k per head (q_norm/k_norm), which llama.cpp's llama architecture lacks",
    "gemma2": "it soft-caps logits and attention, scales embeddings and has four norms per block",
    "phi3": "its fused qkv/gate_up projections and partial rotary layout are a different llama.cpp architecture",
}
SUPPORTED_FAMILIES = ("llama", "mistral")


@dataclass(frozen=True)
class OutType:
    """How 2-D weight matrices are stored (1-D norms always stay F32, as in llama.cpp's converter)."""

    name: str
    file_type: int  # gguf.LlamaFileType value written to general.file_type
    encode: Callable[[np.ndarray], tuple[np.ndarray, object | None]]  # → (data, raw_dtype or None)
    #: row block of the storage type; MLP widths are zero-padded up to a multiple of it (exact, see gguf_tensors)
    block: int = 1


def _f32(a: np.ndarray):
    return a.astype(np.float32, copy=False), None


def _f16(a: np.ndarray):
    return a.astype(np.float16), None


def _quant(kind: str):
    def enc(a: np.ndarray):
        import gguf

        qtype = getattr(gguf.GGMLQuantizationType, kind)
        try:
            return gguf.quants.quantize(a.astype(np.float32, copy=False), qtype), qtype
        except gguf.QuantError:
            # Q8_0 packs rows in blocks of 32; a pruned width that is not a multiple of 32 cannot be packed.
            # llama.cpp's converter falls back to F16 for such tensors; so do we (recorded in the report).
            return a.astype(np.float16), None
    return enc


#: ``--outtype`` registry.
OUTTYPES: Registry[OutType] = Registry("GGUF outtype")
OUTTYPES.register("f32", OutType("f32", 0, _f32))
OUTTYPES.register("f16", OutType("f16", 1, _f16))
OUTTYPES.register("bf16", OutType("bf16", 32, _quant("BF16")))
OUTTYPES.register("q8_0", OutType("q8_0", 7, _quant("Q8_0"), block=32))


@dataclass
class GGUFExportReport:
    """What :func:`export_gguf` wrote."""

    path: Path
    architecture: str  # "llama" (uniform) or "deci" (per-layer arrays)
    outtype: str
    n_layers: int
    intermediate_sizes: list[int]  # as written (zero-padded up to a multiple of pad_to / the quantisation block)
    num_heads: list[int]
    num_kv_heads: list[int]
    tokenizer_model: str
    tokenizer_pre: str | None
    n_tensors: int
    bytes: int
    #: tensors stored as F16 because their rows do not fit the quantisation block (Q8_0: 32)
    f16_fallback: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- validation
def check_exportable(model: nn.Module) -> None:
    """Raise one line unless ``model`` is a family/layout llama.cpp's Llama graph reproduces exactly."""
    cfg = base_config(model.config)
    model_type = getattr(cfg, "model_type", None)
    if model_type in UNSUPPORTED_FAMILIES:
        raise PrunelabError(f"cannot export a {model_type} model to GGUF: {UNSUPPORTED_FAMILIES[model_type]}; "
                            f"supported families: {', '.join(SUPPORTED_FAMILIES)}")
    if model_type not in SUPPORTED_FAMILIES:
        raise PrunelabError(f"cannot export model type '{model_type}' to GGUF; supported families: "
                            f"{', '.join(SUPPORTED_FAMILIES)}")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise PrunelabError(f"cannot export to GGUF: llama.cpp's Llama graph uses SiLU, this model uses "
                            f"{cfg.hidden_act}")
    adapter = adapter_for(model)
    for i, layer in enumerate(adapter.layers(model)):
        for name, lin in adapter.linear_modules(layer).items():
            if lin.bias is not None:
                raise PrunelabError(f"cannot export to GGUF: layer {i} {name} has a bias, which llama.cpp's "
                                    "Llama graph does not apply to every projection")
    rope = _rope(cfg)
    if rope["rope_type"] not in ("default", "linear"):
        raise PrunelabError(f"cannot export to GGUF: RoPE scaling '{rope['rope_type']}' is not supported by this "
                            "exporter (supported: default, linear)")


def _rope(cfg) -> dict:
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    params = dict(params)
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return params


# ---------------------------------------------------------------------------------------------- tensors
def permute_rotary(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Hugging Face rotate-half q/k rows → llama.cpp interleaved pairs (``LlamaModel.permute`` in
    llama.cpp's ``convert_hf_to_gguf.py``), for a matrix holding ``w.shape[0] // head_dim`` heads."""
    n_head = w.shape[0] // head_dim
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def padded_width(width: int, block: int) -> int:
    """``width`` rounded up to a multiple of ``block``."""
    return -(-width // block) * block


def _pad_neurons(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, width: int):
    """Zero neurons up to ``width``: zero gate/up rows and down columns give exactly zero MLP output
    (``silu(0) · 0 = 0``), so the padded MLP computes the same function."""
    extra = width - down.shape[1]
    if extra == 0:
        return gate, up, down
    zrows = gate.new_zeros(extra, gate.shape[1])
    return torch.cat([gate, zrows]), torch.cat([up, zrows]), torch.cat([down, down.new_zeros(down.shape[0], extra)], 1)


def gguf_tensors(model: nn.Module, mlp_block: int = 1) -> list[tuple[str, torch.Tensor]]:
    """``(gguf name, fp32 tensor in PyTorch [out, in] layout)`` in llama.cpp's order.

    ``mlp_block > 1`` zero-pads every MLP width up to a multiple of it, so a block-quantised type (Q8_0: 32)
    can pack ``ffn_down``, whose rows are as long as the width, instead of leaving it in f16.
    """
    adapter = adapter_for(model)
    out: list[tuple[str, torch.Tensor]] = [("token_embd.weight", adapter.embeddings(model).weight)]
    for i, layer in enumerate(adapter.layers(model)):
        d = adapter.head_layout(layer).head_dim
        wq, wk, wv, wo = adapter.attention_weights(layer)
        gate, up, down = adapter.mlp_weights(layer)
        gate, up, down = _pad_neurons(gate, up, down, padded_width(down.shape[1], mlp_block))
        out += [
            (f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight),
            (f"blk.{i}.attn_q.weight", permute_rotary(wq, d)),
            (f"blk.{i}.attn_k.weight", permute_rotary(wk, d)),
            (f"blk.{i}.attn_v.weight", wv),
            (f"blk.{i}.attn_output.weight", wo),
            (f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight),
            (f"blk.{i}.ffn_gate.weight", gate),
            (f"blk.{i}.ffn_up.weight", up),
            (f"blk.{i}.ffn_down.weight", down),
        ]
    out.append(("output_norm.weight", adapter.final_norm(model).weight))
    head = getattr(model, "lm_head", None)
    if head is not None and head.weight is not adapter.embeddings(model).weight:
        out.append(("output.weight", head.weight))
    return out


# ---------------------------------------------------------------------------------------------- tokenizer
@dataclass
class GGUFVocab:
    """The tokenizer as GGUF metadata (tokens, types, scores) plus the special vocabulary from ``gguf``."""

    model: str  # tokenizer.ggml.model: gpt2 | llama
    pre: str | None
    tokens: list[str | bytes]
    token_types: list[int]
    scores: list[float] | None
    special: object  # gguf.SpecialVocab


def tokenizer_pre(tokenizer) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer, found the way its converter does."""
    from prunelab.export._bpe_pre import CHECK_TEXT, PRE_TOKENIZER_BY_HASH

    digest = sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    try:
        return PRE_TOKENIZER_BY_HASH[digest]
    except KeyError:
        raise PrunelabError(
            f"cannot tell which llama.cpp pre-tokenizer this BPE tokenizer needs (fingerprint {digest[:12]}… is "
            "not in llama.cpp's table); pass --tokenizer-pre NAME (e.g. gpt-2, llama-bpe, smollm, qwen2)") from None


def _tokenizer_json(folder: Path) -> dict:
    try:
        return json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PrunelabError("cannot export to GGUF: the tokenizer is not a fast (tokenizers) tokenizer with a "
                            "tokenizer.json") from None


def gguf_vocab(tokenizer, vocab_size: int, pre: str | None = None) -> GGUFVocab:
    """Tokens, token types and special vocabulary of ``tokenizer`` in llama.cpp's scheme.

    Token types follow llama.cpp's ``TextModel.get_vocab_base``: added tokens that are special (or look like
    ``<|…|>``) are CONTROL, other added tokens USER_DEFINED, ids the tokenizer does not define UNUSED ``[PADi]``.
    """
    import gguf

    with tempfile.TemporaryDirectory(prefix="prunelab-tok-") as tmp:
        folder = Path(tmp)
        tokenizer.save_pretrained(folder)
        tj = _tokenizer_json(folder)
        model = tj.get("model", {})
        decoder = (tj.get("decoder") or {}).get("type")
        if model.get("type") == "BPE" and not model.get("byte_fallback") and decoder == "ByteLevel":
            kind = "gpt2"
        elif model.get("type") == "BPE" and model.get("byte_fallback"):
            kind = "llama"
        else:
            raise PrunelabError(f"cannot export this tokenizer to GGUF (model {model.get('type')}, decoder "
                                f"{decoder}); supported: byte-level BPE (GPT-2 style) and byte-fallback BPE "
                                "(Llama/Mistral SentencePiece style)")
        special = gguf.SpecialVocab(folder, load_merges=kind == "gpt2", n_vocab=vocab_size)
        if kind == "llama":
            try:
                hf = gguf.LlamaHfVocab(folder)
            except (FileNotFoundError, TypeError) as exc:
                raise PrunelabError(f"cannot export this byte-fallback BPE tokenizer to GGUF: {exc}") from exc
            tokens, scores, types = [], [], []
            for text, score, ttype in hf.all_tokens():
                tokens.append(text)
                scores.append(score)
                types.append(int(ttype))
            _pad(tokens, types, vocab_size, scores)
            return GGUFVocab("llama", "default", tokens, types, scores, special)
    pre = pre or tokenizer_pre(tokenizer)
    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= vocab_size:
        raise PrunelabError(f"the tokenizer has ids up to {max(vocab.values())} but the model's vocabulary has "
                            f"{vocab_size} rows")
    reverse = {i: t for t, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder_map = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
            continue
        tok = reverse[i]
        if tok in added:
            info = decoder_map.get(i)
            if info is not None and not info.normalized:
                # llama.cpp expects added tokens pre-normalised (as its converter does)
                tok = tokenizer.decode(tokenizer.encode(tok, add_special_tokens=False))
            looks_special = tok.startswith("<|") and tok.endswith("|>")
            if (info is not None and info.special) or looks_special:
                types.append(int(gguf.TokenType.CONTROL))
            else:
                types.append(int(gguf.TokenType.USER_DEFINED))
        else:
            types.append(int(gguf.TokenType.NORMAL))
        tokens.append(tok)
    return GGUFVocab("gpt2", pre, tokens, types, None, special)


def _adds_special(tokenizer) -> dict[str, bool]:
    """Whether the HF tokenizer adds BOS / EOS to encoded text (read from its behaviour, not its config)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    extra = len(with_special) > len(plain)
    return {"bos": bool(extra and tokenizer.bos_token_id is not None and with_special[0] == tokenizer.bos_token_id),
            "eos": bool(extra and tokenizer.eos_token_id is not None and with_special[-1] == tokenizer.eos_token_id)}


def _pad(tokens: list, types: list, vocab_size: int, scores: list) -> None:
    import gguf

    if len(tokens) > vocab_size:
        raise PrunelabError(f"the tokenizer has {len(tokens)} tokens but the model's vocabulary has {vocab_size} rows")
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(int(gguf.TokenType.UNUSED))
        scores.append(-1000.0)


# ---------------------------------------------------------------------------------------------- export
#: MLP widths are zero-padded to a multiple of this by default. Measured in llama.cpp (llama-cpp-python 0.3.36,
#: 2 threads, 128-token prompt, SmolLM2-135M 40 % maw_hybrid, f32): 922-wide MLPs process prompts at 0.85x dense,
#: the same model padded to 928 at 1.28x: llama.cpp's fast f32 matrix kernels need widths that are multiples of
#: their tile, and other widths fall back to a slower path. The padding is exact (zero rows/columns).
DEFAULT_PAD_TO = 32


def export_gguf(model: nn.Module, tokenizer, out: str | Path, outtype: str = "f32", name: str | None = None,
                tokenizer_pre_name: str | None = None, extra_metadata: dict | None = None,
                license: str | None = None, overwrite: bool = False,
                pad_to: int = DEFAULT_PAD_TO) -> GGUFExportReport:
    """Write ``model`` + ``tokenizer`` to ``out`` as a llama.cpp GGUF file (atomic; see the module docstring).

    ``outtype`` is one of :data:`OUTTYPES` (f32, f16, bf16, q8_0). ``tokenizer_pre_name`` overrides the
    pre-tokenizer detection for BPE tokenizers llama.cpp's table does not know. ``extra_metadata`` (e.g. the
    pruning recipe) is stored as JSON under ``prunelab.metadata``; ``license`` as ``general.license``. The target follows :mod:`prunelab.atomic`'s
    rule (an existing file is replaced only if prunelab wrote it, unless ``overwrite``). ``pad_to`` zero-pads
    every MLP width up to a multiple of it (exact; :data:`DEFAULT_PAD_TO` explains the default; 1 = the widths
    as they are); block-quantised types also pad to their block.
    """
    import math

    import gguf

    ot = OUTTYPES.get(outtype)
    if not (isinstance(pad_to, int) and pad_to >= 1):
        raise PrunelabError(f"pad_to must be a positive whole number of neurons, got {pad_to!r}")
    block = math.lcm(ot.block, pad_to)
    check_exportable(model)
    cfg = base_config(model.config)
    shapes = layer_shapes(model)
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    head_dim = adapter.head_layout(layers[0]).head_dim
    ffn = [padded_width(s["intermediate_size"], block) for s in shapes]
    heads = [s["num_attention_heads"] for s in shapes]
    kv = [s["num_key_value_heads"] for s in shapes]
    uniform = len(set(ffn)) == 1 and len(set(heads)) == 1 and len(set(kv)) == 1
    arch = "llama" if uniform else "deci"
    vocab_size = int(adapter.embeddings(model).weight.shape[0])
    vocab = gguf_vocab(tokenizer, vocab_size, tokenizer_pre_name)  # validates before anything is written
    rope = _rope(cfg)
    tensors = gguf_tensors(model, block)

    target = Path(out)
    fallback: list[str] = []
    with atomic_file(target, suffix=".gguf", overwrite=overwrite) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name or str(getattr(cfg, "_name_or_path", "") or "prunelab model"))
        if license:
            w.add_license(license)
        w.add_block_count(len(shapes))
        w.add_context_length(int(getattr(cfg, "max_position_embeddings", 2048)))
        w.add_embedding_length(int(cfg.hidden_size))
        w.add_feed_forward_length(ffn[0] if uniform else ffn)
        w.add_head_count(heads[0] if uniform else heads)
        w.add_head_count_kv(kv[0] if uniform else kv)
        # head_dim cannot be derived as hidden/heads once heads are pruned, so it is always written
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(float(rope["rope_theta"]))
        if rope["rope_type"] == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(rope["factor"]))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_vocab_size(vocab_size)
        w.add_file_type(ot.file_type)
        w.add_tokenizer_model(vocab.model)
        if vocab.pre is not None:
            w.add_tokenizer_pre(vocab.pre)
        w.add_token_list(vocab.tokens)
        w.add_token_types(vocab.token_types)
        if vocab.scores is not None:
            w.add_token_scores(vocab.scores)
        vocab.special.add_to_gguf(w, quiet=True)
        for kind, value in _adds_special(tokenizer).items():
            if kind not in vocab.special.add_special_token:  # llama.cpp's default would be "add"
                getattr(w, f"add_add_{kind}_token")(value)
        if vocab.model == "gpt2":
            w.add_add_space_prefix(False)
        if extra_metadata:
            from prunelab.atomic import to_jsonable

            w.add_string("prunelab.metadata", json.dumps(to_jsonable(extra_metadata)))
        for tname, t in tensors:
            data = t.detach().to(torch.float32).cpu().contiguous().numpy()
            if data.ndim == 1:
                w.add_tensor(tname, data)
                continue
            encoded, raw = ot.encode(data)
            if raw is None and ot.name in ("bf16", "q8_0"):
                fallback.append(tname)
            if raw is None:
                w.add_tensor(tname, encoded)
            else:
                w.add_tensor(tname, encoded, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        size = tmp.stat().st_size
    return GGUFExportReport(path=target, architecture=arch, outtype=ot.name, n_layers=len(shapes),
                            intermediate_sizes=ffn, num_heads=heads, num_kv_heads=kv, tokenizer_model=vocab.model,
                            tokenizer_pre=vocab.pre, n_tensors=len(tensors), bytes=size, f16_fallback=fallback)
