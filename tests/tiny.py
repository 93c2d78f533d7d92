"""Tiny random models of each supported family and a tiny tokenizer, for fast unit tests."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "phi3")

_COMMON = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def tiny_config(family: str = "llama", **overrides):
    """A small random config of ``family`` (4 layers, hidden 32, 4 q heads / 2 KV heads, GLU 48)."""
    from transformers import Gemma2Config, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config

    kw = dict(_COMMON, **overrides)
    if family == "llama":
        return LlamaConfig(**kw, head_dim=8, tie_word_embeddings=True)
    if family == "qwen2":
        return Qwen2Config(**kw)
    if family == "qwen3":  # the Qwen2 adapter's second model type: explicit head_dim, per-head q/k RMSNorm
        return Qwen3Config(**kw, head_dim=8)
    if family == "mistral":
        return MistralConfig(**kw, head_dim=8, sliding_window=None)
    if family == "gemma2":
        return Gemma2Config(**kw, head_dim=8, query_pre_attn_scalar=8, sliding_window=16)
    if family == "phi3":
        kw.pop("num_key_value_heads")
        return Phi3Config(**kw, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    raise ValueError(family)


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A tiny random causal LM in eval mode (fp32, CPU, eager-free default attention)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides))
    return model.eval()


def tiny_tokenizer():
    """A byte-level-ish tokenizer with 128 ids built in memory (no files, no hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for i, ch in enumerate(" abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()\n#_/"):
        vocab[ch] = 3 + i
    vocab["<unk>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    return fast


def save_tiny(folder, family: str = "llama", **overrides):
    """Save a tiny model + tokenizer to ``folder/tiny`` (the path CLI tests pass as MODEL) and return it."""
    import prunelab

    path = Path(folder) / "tiny"
    prunelab.save(tiny_model(family, **overrides), tiny_tokenizer(), path)
    return path
