"""Batched greedy generation with LEFT padding (so every prompt's last token is the last column)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from prunelab.errors import PrunelabError
from prunelab.evaluate.loglik import _left_pad, _model_device, prefix_token_id


@torch.inference_mode()
def generate_greedy(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 10, batch_size: int = 8,
                    progress: Callable[[int], None] | None = None) -> list[str]:
    """Greedy (temperature 0) continuations of ``prompts``, decoded without special tokens.

    Prompts are encoded with the tokenizer's default special-token rule, sorted by length (less padding),
    left-padded, and generated ``batch_size`` at a time; generation stops at EOS or ``max_new_tokens``.
    """
    if max_new_tokens <= 0:
        raise PrunelabError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if batch_size <= 0:
        raise PrunelabError(f"batch size must be positive, got {batch_size}")
    device = _model_device(model)
    encoded = [tokenizer.encode(p) for p in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix_token_id(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask, _ = _left_pad([encoded[i] for i in idx], pad_id, device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             num_beams=1, temperature=None, top_p=None, top_k=None, pad_token_id=pad_id,
                             eos_token_id=tokenizer.eos_token_id)
        new = gen[:, ids.shape[1]:]
        for row, i in enumerate(idx):
            toks = new[row].tolist()
            if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in toks:
                toks = toks[:toks.index(tokenizer.eos_token_id)]  # padding after EOS is not output
            out[i] = tokenizer.decode(toks, skip_special_tokens=True)
        if progress:
            progress(len(idx))
    return out
