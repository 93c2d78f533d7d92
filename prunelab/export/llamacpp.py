"""Run an exported GGUF in real llama.cpp (through ``llama-cpp-python``): logits, greedy decoding, perplexity.

Used by the export tests, the WikiText-2 agreement check and ``benchmarks/llamacpp_speed.py``. All inputs are
token ids (the Hugging Face tokenizer's), so a comparison with prunelab measures the model, not two
tokenizers. ``llama-cpp-python`` is an optional dependency: without it these functions raise one line.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunelab.errors import PrunelabError


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise PrunelabError("llama.cpp is not installed: pip install llama-cpp-python==0.3.36 (builds llama.cpp "
                            "once with cmake)") from exc
    return llama_cpp


@contextlib.contextmanager
def _model_params(**fields):
    """Set ``llama_model_params`` fields that ``llama_cpp.Llama`` has no argument for, while it is built."""
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def patched():
        params = default()
        for key, value in fields.items():
            setattr(params, key, value)
        return params

    lib.llama_model_default_params = patched
    try:
        yield
    finally:
        lib.llama_model_default_params = default


def open_gguf(path: str | Path, n_ctx: int = 512, n_threads: int | None = None, logits_all: bool = True,
              n_batch: int = 512, repack: bool = False, kv_f32: bool = True):
    """A ``llama_cpp.Llama`` on ``path`` (CPU, quiet). ``logits_all`` keeps every position's logits.

    ``kv_f32`` keeps the KV cache in f32 (llama.cpp's default is f16, which alone moves SmolLM2's logits by
    ~1e-2): right for checking an f32 export against PyTorch; pass False to measure what users run.

    ``repack=False`` turns off llama.cpp's CPU weight repacking (``use_extra_bufts``): in the llama.cpp that
    llama-cpp-python 0.3.36 builds, decoding any Q4/Q8 file (SmolLM2's own Q4_1 GGUF included) with repacked
    weights segfaults on the AVX-512 machine this was developed on, while f32/f16 files are unaffected.
    """
    llama_cpp = _llama_cpp()
    import os

    threads = n_threads or min(2, os.cpu_count() or 1)
    try:
        with _model_params(use_extra_bufts=repack):
            return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_batch, n_ctx),
                                   n_ubatch=min(n_batch, n_ctx), n_threads=threads, n_threads_batch=threads,
                                   logits_all=logits_all, verbose=False, n_gpu_layers=0,
                                   **({"type_k": 0, "type_v": 0} if kv_f32 else {}))  # 0 = GGML_TYPE_F32
    except (ValueError, RuntimeError) as exc:
        raise PrunelabError(f"llama.cpp cannot load {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc


def logits(llm, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits ``[len(ids), vocab]`` for one sequence (fresh context, every position)."""
    llm.reset()
    llm.eval(list(map(int, ids)))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def greedy(llm, ids: list[int], n_new: int) -> tuple[list[int], np.ndarray]:
    """Greedy continuation of ``ids`` by ``n_new`` tokens, and the logits each choice was made from."""
    llm.reset()
    llm.eval(list(map(int, ids)))
    out, steps = [], []
    for _ in range(n_new):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        tok = int(row.argmax())
        out.append(tok)
        steps.append(row)
        llm.eval([tok])
    return out, np.stack(steps)


@dataclass
class LlamaCppPerplexity:
    perplexity: float
    nll_mean: float
    tokens: int
    windows: int


def perplexity_of_ids(llm, ids, seq_len: int = 512, max_windows: int | None = None) -> LlamaCppPerplexity:
    """Perplexity over exactly the windows :func:`prunelab.evaluate.perplexity.perplexity_of_ids` scores
    (non-overlapping, each window's first token unscored), computed from llama.cpp's logits."""
    import torch

    from prunelab.evaluate.perplexity import windows

    ids = torch.as_tensor(ids)
    total, count = 0.0, 0
    wins = windows(ids, seq_len, None, max_windows)
    for chunk, n_scored in wins:
        toks = chunk.tolist()
        lg = logits(llm, toks)[:-1].astype(np.float64)
        lse = np.log(np.exp(lg - lg.max(axis=1, keepdims=True)).sum(axis=1)) + lg.max(axis=1)
        nll = lse - lg[np.arange(len(toks) - 1), toks[1:]]
        total += float(nll[-n_scored:].sum())
        count += n_scored
    mean = total / count
    return LlamaCppPerplexity(perplexity=math.exp(mean), nll_mean=mean, tokens=count, windows=len(wins))
