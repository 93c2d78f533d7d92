"""Log-likelihood scoring of (context, continuation) pairs, identical to lm-evaluation-harness's ``HFLM``.

Tokenisation follows ``lm_eval.api.model.TemplateLM._encode_pair``: trailing spaces of the context move to the
continuation, the *whole* string is encoded and split at ``len(encode(context))``; an empty context becomes
``[prefix_token_id]`` (BOS, else EOS). A request's score is

    loglik = Σ_t log softmax(logits_{t-1})[cont_t]        (float32, summed over the continuation tokens)
    is_greedy = all(argmax(logits_{t-1}) == cont_t)

over the input ``(context_enc + continuation_enc)[-(max_length + 1):][:-1]`` (lm-eval's left truncation).

Speed (why this is not just lm-eval's loop): the requests of one item (its choices) share a token prefix —
the context — so it is run *once*: a left-padded batch of prefixes fills a KV cache, the cache rows are
repeated per choice, and only the choice tokens run in a second forward. Only the logits needed for scoring
are materialised (``logits_to_keep``), items are sorted by length to minimise padding, and everything runs
under ``torch.inference_mode()``. Results equal the unshared computation up to float rounding (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prunelab.errors import PrunelabError


# ------------------------------------------------------------------------------------------------ tokenising
def prefix_token_id(tokenizer) -> int:
    """lm-eval's conditioning token for an empty context: BOS, else EOS."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise PrunelabError("the tokenizer has neither a BOS nor an EOS token to condition an empty context on")
    return tid


def tok_encode(tokenizer, text: str) -> list[int]:
    """``HFLM.tok_encode`` with its defaults: the tokenizer's own special-token rule, unless the string
    already starts with the prefix token's text."""
    bos = tokenizer.decode(prefix_token_id(tokenizer))
    kwargs = {"add_special_tokens": False} if bos and text.startswith(bos) else {}
    return tokenizer.encode(text, **kwargs)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context_enc, continuation_enc)`` exactly as lm-eval's causal ``_encode_pair`` (+ empty context rule)."""
    if context == "":
        return [prefix_token_id(tokenizer)], tok_encode(tokenizer, continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation)
    ctx = tok_encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def max_length(model, tokenizer=None, default: int = 2048) -> int:
    """The model's context length as lm-eval resolves it (config first, then the tokenizer, then 2048)."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value:
            return int(value)
    tml = getattr(tokenizer, "model_max_length", None)
    if tml and tml < 1e10:  # transformers' "infinity" placeholder means unset
        return int(tml)
    return default


# ------------------------------------------------------------------------------------------------ scoring
@dataclass
class _Req:
    item: int
    choice: int
    seq: list[int]  # model input: (ctx + cont)[-(L+1):][:-1]
    cont: list[int]


def _score(logits: torch.Tensor, cont: list[int]) -> tuple[float, bool]:
    """``logits``: [len(cont), V] rows predicting each continuation token."""
    logp = F.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(cont, device=logits.device)
    ll = logp.gather(1, target[:, None]).squeeze(1).sum()
    return float(ll), bool((logp.argmax(-1) == target).all())


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def _common_prefix(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    p = 0
    while p < n and all(s[p] == first[p] for s in seqs[1:]):
        p += 1
    return p


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _forward(model, **kwargs):
    return model(**kwargs, return_dict=True)


@torch.inference_mode()
def loglikelihood_groups(model, tokenizer, groups: Sequence[Sequence[tuple[str, str]]], batch_size: int = 8,
                         share_prefix: bool = True,
                         progress: Callable[[int], None] | None = None) -> list[list[tuple[float, bool]]]:
    """Score every ``(context, continuation)`` of every group (an item's choices); see module docstring.

    Returns, per group, ``[(loglik, is_greedy), ...]`` in the requests' order. ``batch_size`` counts groups
    per forward (the choice forward holds all their choices). ``progress(n_groups_done)`` is called per batch.
    """
    if batch_size <= 0:
        raise PrunelabError(f"batch size must be positive, got {batch_size}")
    device = _model_device(model)
    limit = max_length(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix_token_id(tokenizer)
    out: list[list[tuple[float, bool] | None]] = [[None] * len(g) for g in groups]

    shared: list[tuple[int, list[_Req], int]] = []  # (item, requests, prefix length)
    solo: list[_Req] = []
    for gi, group in enumerate(groups):
        reqs = []
        for ci, (context, continuation) in enumerate(group):
            ctx, cont = encode_pair(tokenizer, context, continuation)
            if not cont:
                raise PrunelabError(f"continuation {continuation!r} encodes to no tokens")
            if len(cont) > limit:
                raise PrunelabError(f"continuation of {len(cont)} tokens exceeds the model's {limit}-token context")
            seq = (ctx + cont)[-(limit + 1):][:-1]
            reqs.append(_Req(gi, ci, seq, cont))
        truncated = any(len(r.seq) >= limit for r in reqs)
        p = min(_common_prefix([r.seq for r in reqs]), min(len(r.seq) for r in reqs) - 1) if len(reqs) > 1 else 0
        if share_prefix and len(reqs) > 1 and p >= 1 and not truncated:
            shared.append((gi, reqs, p))
        else:
            solo.extend(reqs)

    # solo requests: one left-padded forward per batch, keeping only the continuation logits
    solo.sort(key=lambda r: -len(r.seq))
    step = batch_size * 4  # a request is ~ one choice; keep forwards about the size of the shared path's
    for start in range(0, len(solo), step):
        chunk = solo[start:start + step]
        ids, mask, pos = _left_pad([r.seq for r in chunk], pad_id, device)
        keep = max(len(r.cont) for r in chunk)
        logits = _forward(model, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                          logits_to_keep=keep).logits
        for row, r in enumerate(chunk):
            out[r.item][r.choice] = _score(logits[row, keep - len(r.cont):], r.cont)
        if progress:
            progress(len({r.item for r in chunk}))

    # shared-prefix groups: prefix once (KV cache), then all choices' suffixes in one forward
    shared.sort(key=lambda s: -len(s[1][0].seq))
    for start in range(0, len(shared), batch_size):
        chunk = shared[start:start + batch_size]
        prefixes = [reqs[0].seq[:p] for _, reqs, p in chunk]
        ids, mask, pos = _left_pad(prefixes, pad_id, device)
        width = ids.shape[1]
        # prefix logits needed: real positions >= min(start of scoring) (= len(seq) - len(cont)) and < p
        need = [p - min(len(r.seq) - len(r.cont) for r in reqs) for _, reqs, p in chunk]
        keep = max(1, max(need))
        res = _forward(model, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                       logits_to_keep=keep)
        prefix_logits, cache = res.logits, res.past_key_values
        rows = [(bi, r) for bi, (_, reqs, _) in enumerate(chunk) for r in reqs]
        index = torch.tensor([bi for bi, _ in rows], device=device)
        cache.batch_select_indices(index)
        suffixes = [r.seq[chunk[bi][2]:] for bi, r in rows]
        s_width = max(len(s) for s in suffixes)
        s_ids = torch.full((len(rows), s_width), pad_id, dtype=torch.long)
        s_mask = torch.zeros((len(rows), s_width), dtype=torch.long)
        for i, s in enumerate(suffixes):
            s_ids[i, :len(s)] = torch.tensor(s)
            s_mask[i, :len(s)] = 1
        p_col = torch.tensor([chunk[bi][2] for bi, _ in rows])
        s_pos = p_col[:, None] + torch.arange(s_width)[None, :]
        logits = _forward(model, input_ids=s_ids.to(device),
                          attention_mask=torch.cat([mask[index], s_mask.to(device)], dim=1),
                          position_ids=s_pos.to(device), past_key_values=cache, use_cache=True).logits
        for i, (bi, r) in enumerate(rows):
            p = chunk[bi][2]
            first = len(r.seq) - len(r.cont)  # real position whose logits predict cont[0]
            parts = []
            if first < p:  # kept prefix column for real position q is q - p + keep
                parts.append(prefix_logits[bi, first - p + keep:])
            parts.append(logits[i, max(0, first - p):len(r.seq) - p])
            out[r.item][r.choice] = _score(torch.cat(parts, 0), r.cont)
        del cache
        if progress:
            progress(len(chunk))
    return out  # type: ignore[return-value]


@torch.inference_mode()
def loglikelihood_reference(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """One request, one unpadded forward over the whole sequence: the naive reference the tests compare to."""
    ctx, cont = encode_pair(tokenizer, context, continuation)
    limit = max_length(model, tokenizer)
    seq = (ctx + cont)[-(limit + 1):][:-1]
    logits = model(input_ids=torch.tensor([seq], device=_model_device(model)), use_cache=False).logits[0]
    return _score(logits[len(seq) - len(cont):], cont)
