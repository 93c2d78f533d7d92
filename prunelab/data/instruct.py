"""Instruction formatting and the Dolly train / held-out split used by recovery and chronic stress."""

from __future__ import annotations

import random
from dataclasses import dataclass

from prunelab.data.loaders import DollyRecord, load_dolly
from prunelab.errors import PrunelabError


def format_prompt(instruction: str, context: str = "") -> str:
    """The study's single prompt format (``### Instruction:`` / ``### Context:`` if any / ``### Response:``)."""
    prompt = f"### Instruction:\n{instruction.strip()}\n\n"
    if context and context.strip():
        prompt += f"### Context:\n{context.strip()}\n\n"
    return prompt + "### Response:\n"


def format_example(record: DollyRecord) -> tuple[str, str]:
    """``(prompt, response)`` for one record."""
    return format_prompt(record.instruction, record.context), record.response.strip()


@dataclass
class DollySplit:
    """Seeded, disjoint train and held-out (maintenance) sets."""

    train: list[DollyRecord]
    held_out: list[DollyRecord]


def dolly_split(n_train: int = 500, n_held_out: int = 100, seed: int = 0) -> DollySplit:
    """``n_train`` random records for recovery and ``n_held_out`` disjoint ones for maintenance tunes."""
    records = load_dolly()
    if n_train <= 0 or n_held_out < 0:
        raise PrunelabError(f"need n_train ≥ 1 and n_held_out ≥ 0 (got {n_train}, {n_held_out})")
    if n_train + n_held_out > len(records):
        raise PrunelabError(f"Dolly has {len(records)} records, fewer than {n_train} + {n_held_out} requested")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    train = [records[i] for i in order[:n_train]]
    held = [records[i] for i in order[n_train : n_train + n_held_out]]
    return DollySplit(train=train, held_out=held)
