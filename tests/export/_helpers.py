"""Tiny byte-level BPE tokenizer and tiny (optionally per-layer pruned) Llama models for export tests."""

from __future__ import annotations

import torch

TEXT = ("the quick brown fox jumps over the lazy dog. pruning removes neurons, heads and blocks; "
        "llama.cpp runs what prunelab prunes. 0123456789 ") * 20


def tiny_bpe_tokenizer():
    """A GPT-2-style byte-level BPE (ByteLevel pre-tokenizer, GPT-2 regex) with 300 ids, trained in memory.

    Its ids are not in llama.cpp's fingerprint table, so exports pass ``tokenizer_pre_name="gpt-2"`` (the
    pre-tokenizer regex it actually uses).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    return fast


def tiny_llama(vocab_size: int = 300, seed: int = 0, family: str = "llama", **overrides):
    """The tests' tiny Llama (or ``family``) with a vocabulary matching :func:`tiny_bpe_tokenizer`
    (4 blocks, 4 q / 2 kv heads; tied embeddings for llama, untied for mistral)."""
    from tests.tiny import tiny_model

    model = tiny_model(family, seed=seed, vocab_size=vocab_size, **overrides)
    # random init gives near-zero norms' spread; random norm weights make a wrong tensor mapping visible
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def per_layer_pruned(model):
    """Give every block a different MLP width and (GQA-valid) head layout, and remove block 2."""
    from prunelab.models.surgery import prune_attention_heads, prune_mlp_neurons, remove_layers

    prune_mlp_neurons(model, 0, list(range(0, 48, 2)))     # 24 neurons
    prune_mlp_neurons(model, 1, list(range(40)))           # 40
    prune_attention_heads(model, 1, [0, 2])                # 2 q heads in 2 kv groups
    prune_attention_heads(model, 3, [2, 3])                # 2 q heads in 1 kv group
    prune_mlp_neurons(model, 3, [1, 5, 7, 30])             # 4
    remove_layers(model, [2])
    return model
