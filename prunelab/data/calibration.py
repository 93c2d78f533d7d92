"""Calibration batches for data-driven criteria (Taylor, Adapt-Pruner, depth objectives).

Offline default: LAMBADA passages from the calibration pool (disjoint from every evaluated passage, see
:func:`prunelab.data.sampling.split_lambada`); ``dolly`` instruction text; ``wikipedia``: Wikipedia paragraphs,
the deduplicated BoolQ validation passages — in-domain for WikiText-2 yet disjoint from its test file (not one
13-word sequence of the test file occurs in them, measured), so evaluating BoolQ itself after calibrating on them
is contaminated; WikiText-2 is available but is an evaluation set, so using it for calibration is the user's
explicit choice; ``c4`` online; or any text file.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from prunelab.errors import PrunelabError

CALIBRATION_SOURCES = ("lambada", "dolly", "wikipedia", "wikitext2", "c4")


def calibration_texts(source: str = "lambada", seed: int = 0) -> list[str]:
    """Texts for calibration from a named source or a text-file path (shuffled with ``seed``)."""
    from prunelab.data import loaders
    from prunelab.data.sampling import split_lambada

    if source == "lambada":
        _, pool = split_lambada(loaders.load_lambada())
        texts = [f"{it.context} {it.target}" for it in pool]
    elif source == "dolly":
        texts = [f"{r.instruction}\n{r.context}\n{r.response}".strip() for r in loaders.load_dolly()]
    elif source == "wikipedia":
        # BoolQ's context is "<passage>\nQuestion: <question>?\nAnswer:"; passages repeat across questions
        passages = {it.context.rsplit("\nQuestion: ", 1)[0] for it in loaders.load_boolq()}
        texts = sorted(passages)  # set order varies between runs; the shuffle below is then seeded
    elif source == "wikitext2":
        texts = [t for t in loaders.load_wikitext2_text().split("\n") if t.strip()]
    elif source == "c4":
        texts = loaders.load_c4_texts()
    elif Path(source).suffix or Path(source).exists():
        texts = [t for t in loaders.read_text_file(source).split("\n\n") if t.strip()]
    else:
        raise PrunelabError(f"unknown calibration source '{source}'; use {', '.join(CALIBRATION_SOURCES)} or a text file")
    random.Random(seed).shuffle(texts)
    return texts


def calibration_batch(tokenizer, n_samples: int = 128, seq_len: int = 128, source: str = "lambada",
                      seed: int = 0) -> torch.Tensor:
    """``[n_samples, seq_len]`` token ids: shuffled texts joined with EOS and cut into full windows."""
    if n_samples <= 0 or seq_len <= 1:
        raise PrunelabError(f"calibration needs n_samples ≥ 1 and seq_len ≥ 2 (got {n_samples}, {seq_len})")
    texts = calibration_texts(source, seed)
    if not texts:
        raise PrunelabError(f"calibration source '{source}' is empty")
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    need = n_samples * seq_len
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise PrunelabError(
            f"calibration source '{source}' has {len(ids)} tokens, fewer than {n_samples}×{seq_len}; lower the sizes"
        )
    return torch.tensor(ids[:need], dtype=torch.long).view(n_samples, seq_len)
