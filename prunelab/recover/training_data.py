"""The recovery's training data: instruction–response records tokenised for the causal-LM loss, and their collator.

Each record becomes ``prompt + response + EOS`` in the study's one prompt format (:func:`prunelab.data.format_example`),
truncated to ``seq_len`` tokens. ``pad_to_max=True`` (the study) pads every sample to ``seq_len``, so an epoch is
``N·L`` tokens as the isodose formula assumes; ``pad_to_max=False`` packs each micro-batch into one row with
position ids restarting per sample (HF ``DataCollatorWithFlattening``; the attention mask is block-diagonal, so
samples never see each other).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prunelab.errors import PrunelabError

__all__ = ["collator", "prompt_response", "tokenize_records"]


def prompt_response(record: Any) -> tuple[str, str]:
    """``(prompt, response)`` from a DollyRecord-like object, a ``(prompt, response)`` pair or a dict."""
    from prunelab.data import format_example

    if isinstance(record, (tuple, list)) and len(record) == 2:
        return str(record[0]), str(record[1])
    if isinstance(record, dict):
        if "prompt" in record:
            return str(record["prompt"]), str(record.get("response", ""))
        from prunelab.data import format_prompt

        return format_prompt(record.get("instruction", ""), record.get("context", "")), str(record.get("response", "")).strip()
    if hasattr(record, "instruction") and hasattr(record, "response"):
        return format_example(record)
    raise PrunelabError(f"cannot use a {type(record).__name__} as a training record (need instruction/response)")


def tokenize_records(tokenizer, records: Sequence[Any], seq_len: int = 512, pad_to_max: bool = True,
                     loss_on: str = "all") -> list[dict[str, list[int]]]:
    """Tokenise ``prompt + response + EOS`` per record, truncated to ``seq_len`` (padded to it if asked).

    ``labels`` are the input ids with padding (and, for ``loss_on="response"``, the prompt) set to -100.
    Padding is decided by the attention mask, not by token id, because many tokenizers pad with EOS.
    """
    if loss_on not in ("all", "response"):
        raise PrunelabError(f"loss_on must be 'all' or 'response', got '{loss_on}'")
    if seq_len < 2:
        raise PrunelabError(f"seq_len must be ≥ 2, got {seq_len}")
    if not records:
        raise PrunelabError("no training records given")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = tokenizer.eos_token or ""
    out = []
    for rec in records:
        prompt, response = prompt_response(rec)
        ids = tokenizer(prompt + response + eos, add_special_tokens=True, truncation=True, max_length=seq_len)["input_ids"]
        labels = list(ids)
        if loss_on == "response":
            n_prompt = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
            labels[: min(n_prompt, len(labels))] = [-100] * min(n_prompt, len(labels))
        mask = [1] * len(ids)
        if pad_to_max and len(ids) < seq_len:
            pad = seq_len - len(ids)
            ids = list(ids) + [tokenizer.pad_token_id] * pad
            labels = labels + [-100] * pad
            mask = mask + [0] * pad
        out.append({"input_ids": list(ids), "attention_mask": mask, "labels": labels})
    return out


def collator(pad_to_max: bool):
    """The Trainer's collator: stack the padded samples, or pack a micro-batch into one row (padding-free)."""
    from transformers import DataCollatorWithFlattening, default_data_collator

    if pad_to_max:
        return default_data_collator

    flatten = DataCollatorWithFlattening(return_position_ids=True)

    def collate(features):
        # DataCollatorWithFlattening wants no attention_mask (the packed mask comes from position_ids)
        return flatten([{k: v for k, v in f.items() if k != "attention_mask"} for f in features])

    return collate
