"""Token-level perplexity over non-overlapping windows (WikiText-2 / C4 / any text).

``ppl = exp( Σ NLL / Σ predicted tokens )`` where the text is tokenised once and cut into windows of
``seq_len`` tokens. With the default ``stride = seq_len`` the windows do not overlap and each predicts its
tokens but its first (which has no context inside the window) — the usual pruning-literature protocol,
here keeping the final partial window. ``stride < seq_len`` gives overlapping windows that score only
their new tokens (the HF "sliding window" recipe); then every token but the text's first is predicted once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from prunelab.errors import PrunelabError


@dataclass
class PerplexityResult:
    perplexity: float
    nll_mean: float
    tokens: int
    windows: int
    seq_len: int
    stride: int
    #: per window (in text order): summed NLL of its scored tokens and their count — Σ/Σ gives ``nll_mean``
    window_nll: list[float] = field(default_factory=list)
    window_tokens: list[int] = field(default_factory=list)


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """The whole text as one 1-D tensor of ids (no special tokens)."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if ids.numel() < 2:
        raise PrunelabError("text too short for perplexity (needs at least 2 tokens)")
    return ids


def windows(ids: torch.Tensor, seq_len: int, stride: int | None = None, max_windows: int | None = None):
    """``[(input_ids, n_scored)]``: each window scores only its last ``n_scored`` targets (new tokens)."""
    if seq_len < 2:
        raise PrunelabError(f"seq_len must be ≥ 2, got {seq_len}")
    stride = stride or seq_len
    if not 0 < stride <= seq_len:
        raise PrunelabError(f"stride must be in (0, seq_len], got {stride}")
    out = []
    prev_end = 0
    begin = 0
    n = ids.numel()
    while prev_end < n - 1 or (prev_end == 0 and n > 1):
        end = min(begin + seq_len, n)
        chunk = ids[begin:end]
        # targets are chunk[1:], covering positions begin+1..end-1; score those beyond prev_end
        first_new = max(prev_end, begin + 1)
        n_scored = end - first_new
        if chunk.numel() >= 2 and n_scored > 0:
            out.append((chunk, n_scored))
        prev_end = end
        if end >= n or (max_windows is not None and len(out) >= max_windows):
            break
        begin += stride
    return out


def leading_windows(tokenizer, text: str, n: int, seq_len: int = 512) -> torch.Tensor:
    """The first ``n`` evaluation windows of ``text`` (stride ``seq_len``) as one ``[n, seq_len]`` batch.

    Window ``j`` holds exactly the tokens :func:`windows` gives its ``j``-th window, so a method calibrated on this
    batch has seen the evaluated text itself: the benchmarks use it as an in-sample *oracle* — the most favourable
    calibration a calibration-based repair can get, an upper bound on it, never a result.
    """
    return window_batch(tokenizer, text, 0, n, seq_len)


def window_batch(tokenizer, text: str, first: int, n: int, seq_len: int = 512) -> torch.Tensor:
    """Evaluation windows ``first … first + n − 1`` of ``text`` (stride ``seq_len``) as one ``[n, seq_len]`` batch.

    With ``first`` past the evaluated windows it is *held-out* text of the same file: the benchmarks calibrate on it
    when only the first windows are scored, so calibration and evaluation share the format but not the text.
    """
    ids = tokenize_text(tokenizer, text)
    full = ids.numel() // seq_len
    if n <= 0 or first < 0 or first + n > full:
        raise PrunelabError(f"the text has {full} full windows of {seq_len} tokens; asked for windows {first}–"
                            f"{first + n - 1}")
    return ids[first * seq_len : (first + n) * seq_len].view(n, seq_len).clone()


@torch.inference_mode()
def perplexity_of_ids(model, ids: torch.Tensor, seq_len: int = 512, stride: int | None = None,
                      max_windows: int | None = None, batch_size: int = 4) -> PerplexityResult:
    """Perplexity of a token sequence; windows of equal length are batched."""
    device = next(model.parameters()).device
    wins = windows(ids, seq_len, stride, max_windows)
    total_nll = 0.0
    total_tokens = 0
    window_nll: list[float] = [0.0] * len(wins)
    window_tokens: list[int] = [0] * len(wins)
    for start in range(0, len(wins), batch_size):
        group = wins[start : start + batch_size]
        by_len: dict[int, list] = {}
        for offset, (chunk, n_scored) in enumerate(group):
            by_len.setdefault(chunk.numel(), []).append((chunk, n_scored, start + offset))
        for length, items in by_len.items():
            batch = torch.stack([c for c, _, _ in items]).to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none")
            nll = nll.view(len(items), length - 1)
            for row, (_, n_scored, index) in enumerate(items):
                window = nll[row, -n_scored:].sum().item()
                total_nll += window  # accumulated in the same order as before, so ppl is unchanged
                total_tokens += n_scored
                window_nll[index], window_tokens[index] = window, n_scored
    if not math.isfinite(total_nll):
        raise PrunelabError("perplexity is not finite (the model produced NaN/inf logits)")
    mean = total_nll / total_tokens
    return PerplexityResult(perplexity=math.exp(mean), nll_mean=mean, tokens=total_tokens, windows=len(wins),
                            seq_len=seq_len, stride=stride or seq_len, window_nll=window_nll,
                            window_tokens=window_tokens)


def perplexity(model, tokenizer, text: str, seq_len: int = 512, stride: int | None = None,
               max_windows: int | None = None, batch_size: int = 4) -> PerplexityResult:
    """Perplexity of ``text`` under ``model`` (see module docstring)."""
    return perplexity_of_ids(model, tokenize_text(tokenizer, text), seq_len, stride, max_windows, batch_size)


def window_range_perplexity(model, tokenizer, text: str, first: int, stop: int | None, seq_len: int = 512,
                            batch_size: int = 4) -> PerplexityResult:
    """Perplexity over evaluation windows ``first … stop − 1`` of ``text`` (``stop=None``: to the end, the final
    partial window included), non-overlapping windows of ``seq_len``.

    Each window holds and scores exactly the tokens it holds in :func:`perplexity` of the whole text (its
    ``window_nll`` entries are those windows' entries), so the windows of a text can be scored by different models —
    cross-fitting: each half scored by a model calibrated on the other — and merged with :func:`merge_perplexity`.
    """
    ids = tokenize_text(tokenizer, text)
    total = len(windows(ids, seq_len))
    end = total if stop is None else stop
    if not 0 <= first < end <= total:
        raise PrunelabError(f"the text has {total} windows of {seq_len} tokens; asked for windows {first}–{end - 1}")
    part = ids[first * seq_len : None if end == total else end * seq_len]
    return perplexity_of_ids(model, part, seq_len, batch_size=batch_size)


def merge_perplexity(parts: list[PerplexityResult]) -> PerplexityResult:
    """One result over the windows of ``parts`` in their order: ``exp(Σ NLL / Σ tokens)`` over all of them, so
    disjoint window ranges scored by :func:`window_range_perplexity` merge into the whole text's figure."""
    if not parts or len({(p.seq_len, p.stride) for p in parts}) != 1:
        raise PrunelabError("merge_perplexity needs at least one result, all with the same seq_len and stride")
    nll = [w for p in parts for w in p.window_nll]
    tokens = [t for p in parts for t in p.window_tokens]
    mean = math.fsum(nll) / sum(tokens)
    return PerplexityResult(perplexity=math.exp(mean), nll_mean=mean, tokens=sum(tokens), windows=len(nll),
                            seq_len=parts[0].seq_len, stride=parts[0].stride, window_nll=nll, window_tokens=tokens)
