"""The one greedy generation loop of the evaluation: batched, LEFT-padded (every prompt's last token is the last
column), longest prompts first, output in input order, text after EOS dropped.

Two sets of rules share the loop:

- the study's short answers (``arc_easy_gen``, ``lambada_gen``; :func:`generate_greedy`): prompts encoded with
  the tokenizer's default special-token rule, never truncated;
- lm-evaluation-harness 0.4.13's ``generate_until`` (``gsm8k``, ``ifeval``; :func:`generate_until`): its
  ``HFLM.tok_encode`` rule, prompts left-truncated to the model's context minus the new-token budget, stop
  strings honoured (generation of a batch ends once every row produced EOS or a stop string; the text is cut
  at the first stop string).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from prunelab.errors import PrunelabError
from prunelab.evaluate.loglik import _left_pad, _model_device, prefix_token_id, tok_encode

__all__ = ["cut_at_stop", "generate_greedy", "generate_until"]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """lm-eval's ``until`` rule: keep the text before the first occurrence of any stop string."""
    for s in stop:
        if s and s in text:
            text = text.split(s)[0]
    return text


def _pad_id(tokenizer: Any, lm_eval_rules: bool) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if not lm_eval_rules:
        return prefix_token_id(tokenizer)
    if tokenizer.eos_token_id is None:  # lm-eval pads with EOS
        raise PrunelabError("the tokenizer has neither a pad nor an EOS token; cannot batch generation")
    return tokenizer.eos_token_id


def _encode(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
            lm_eval_rules: bool) -> list[list[int]]:
    if not lm_eval_rules:
        return [tokenizer.encode(p) for p in prompts]
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 1 << 30
    budget = max(1, max_pos - max_new_tokens)  # lm-eval left-truncates so the new tokens fit the context
    return [tok_encode(tokenizer, p)[-budget:] for p in prompts]


def _generate_kwargs(tokenizer: Any, max_new_tokens: int, pad_id: int, stop: Sequence[str],
                     lm_eval_rules: bool) -> dict[str, Any]:
    """``model.generate`` arguments for greedy decoding under either set of rules (module docstring)."""
    if not lm_eval_rules:
        # sampling knobs set to None so a model's own generation_config cannot turn sampling on
        return dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, temperature=None, top_p=None,
                    top_k=None, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                              eos_token_id=tokenizer.eos_token_id, num_beams=1)
    if stop:
        config.stop_strings = list(stop)
    return dict(generation_config=config, tokenizer=tokenizer if stop else None)


@torch.inference_mode()
def generate_greedy(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 10,
                    batch_size: int = 8, progress: Callable[[int], None] | None = None, *,
                    stop: Sequence[str] = (), lm_eval_rules: bool = False) -> list[str]:
    """Greedy (temperature 0) continuations of ``prompts``, decoded without special tokens.

    ``lm_eval_rules`` selects lm-eval's ``generate_until`` encoding, truncation and stop strings (module
    docstring); ``progress(n)`` is called after each batch of ``n`` prompts.
    """
    if max_new_tokens <= 0:
        raise PrunelabError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if batch_size <= 0:
        raise PrunelabError(f"batch size must be positive, got {batch_size}")
    if not prompts:
        return []
    pad_id = _pad_id(tokenizer, lm_eval_rules)
    encoded = _encode(model, tokenizer, prompts, max_new_tokens, lm_eval_rules)
    kwargs = _generate_kwargs(tokenizer, max_new_tokens, pad_id, stop, lm_eval_rules)
    device = _model_device(model)
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # similar lengths share a batch
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask, _ = _left_pad([encoded[i] for i in idx], pad_id, device)
        new = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1]:]
        for row, i in enumerate(idx):
            toks = new[row].tolist()
            if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in toks:
                toks = toks[:toks.index(tokenizer.eos_token_id)]  # what follows EOS is padding
            out[i] = cut_at_stop(tokenizer.decode(toks, skip_special_tokens=True), stop)
        if progress:
            progress(len(idx))
    return out


def generate_until(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 8,
                   stop: Sequence[str] = ()) -> list[str]:
    """lm-eval's ``generate_until``: :func:`generate_greedy` under its rules (module docstring)."""
    return generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, stop=stop, lm_eval_rules=True)
