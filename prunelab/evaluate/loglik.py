"""Log-likelihood scoring of (context, continuation) pairs, identical to lm-evaluation-harness's ``HFLM``.

Tokenisation follows ``lm_eval.api.model.TemplateLM._encode_pair``: trailing spaces of the context move to the
continuation, the *whole* string is encoded and split at ``len(encode(context))``; an empty context becomes
``[prefix_token_id]`` (BOS, else EOS) before the continuation encoded without special tokens (or that
continuation's own first token, when it is the prefix token: ``TemplateLM.loglikelihood``). A request's score is

    loglik = Σ_t log softmax(logits_{t-1})[cont_t]        (float32, summed over the continuation tokens)
    is_greedy = all(argmax(logits_{t-1}) == cont_t)

over the input ``(context_enc + continuation_enc)[-(max_length + 1):][:-1]`` (lm-eval's left truncation).

Speed (why this is not just lm-eval's loop; measured in ``benchmarks/eval_vs_lmeval.py``):

* **Shared context once (tree attention).** An item's requests share a token prefix (the context): its
  distinct inputs become one *tree* — the prefix once, then one branch per distinct input (identical inputs,
  e.g. one-token choices, run once, as lm-eval's one-token cache does). The branches attend to the prefix
  and to themselves only (a 4-D mask), each at its own positions, so one forward computes all choices with
  the prefix's FLOPs paid once (the same computation as a KV-cached prefix, without the cache copies).
* **No padding waste.** Trees are bin-packed first-fit-decreasing into rows (several items per row,
  block-diagonal mask), rows of similar width share a forward of about ``batch_size × 256`` tokens; long
  single-input trees (BoolQ passages) run one per row, length-sorted, maskless causal (see ``_pack``).
* **LM head only where scored.** The decoder runs to hidden states; ``lm_head`` (49k × 576 on SmolLM2, about
  a fifth of a token's FLOPs) and the log-softmax are applied only to the positions predicting a
  continuation token, in chunks.
* **Little Python per item.** One batched tokenizer call over the distinct strings; per-request sums by
  ``index_add_``.

Results equal one-request-at-a-time scoring (:func:`loglikelihood_reference`) to float rounding (tested on
every tiny family); ``with use_engine("reference"):`` switches every :func:`loglikelihood_groups` caller (every
log-likelihood task, hence ``prunelab eval``, the experiment runner, the dichotomy battery) to that reference.

Layers: :func:`encode_requests` (lm-eval's tokenisation and truncation) → :func:`packed_forwards` (trees, rows,
masks) → a decoder forward → :func:`scored_logprobs` (LM head at the scored positions). The depth objective
``margin`` (:class:`prunelab.prune.depth_objectives.MarginObjective`) builds its calibration batches with
:func:`packed_forwards` from its own token sequences and scores them with :func:`scored_logprobs`, its decoder
being the depth search's cached block evaluator.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
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


def condition_on_prefix(cont: list[int], prefix: int) -> tuple[list[int], list[int]]:
    """An empty context's pair, as lm-eval 0.4.13's ``TemplateLM.loglikelihood`` builds it from the continuation
    encoded without special tokens: conditioned on the prefix token, or on the continuation's own first token when
    that already is the prefix token."""
    return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context_enc, continuation_enc)`` exactly as lm-eval's causal ``_encode_pair`` (+ empty context rule)."""
    if context == "":
        return condition_on_prefix(tokenizer.encode(continuation, add_special_tokens=False), prefix_token_id(tokenizer))
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
#: width of a packed row (tokens). Attention in a packed row is dense over the row (a block-diagonal / tree
#: mask does not make the CPU kernels skip masked blocks), so its cost per query token grows with the row
#: width; 256 keeps that under ~8 % of a SmolLM2 token's linear FLOPs while rows still fill to ~100 %.
ROW_TOKENS = 256
#: LM-head rows per chunk: bounds the [rows, vocab] fp32 logits buffer (512 × 49k ≈ 100 MB).
HEAD_CHUNK = 512

_ENGINE: contextvars.ContextVar[str] = contextvars.ContextVar("prunelab_loglik_engine", default="packed")
ENGINES = ("packed", "reference")


@contextlib.contextmanager
def use_engine(name: str) -> Iterator[None]:
    """Score every :func:`loglikelihood_groups` call inside the block with engine ``name``: ``packed`` (default,
    see module docstring) or ``reference`` (:func:`loglikelihood_reference`, one unpadded forward per request)."""
    if name not in ENGINES:
        raise PrunelabError(f"unknown log-likelihood engine '{name}'; known: {', '.join(ENGINES)}")
    token = _ENGINE.set(name)
    try:
        yield
    finally:
        _ENGINE.reset(token)


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


def lm_head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """``lm_head(h)`` with the family's final-logit soft-capping (Gemma2: ``c·tanh(z/c)``, Gemma Team 2024,
    §2) — what ``*ForCausalLM.forward`` does after the decoder, applied here only to the rows that are scored."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@dataclass
class _Tree:
    """One item's distinct model inputs as a shared prefix plus one branch per distinct input (tree attention).

    ``reqs``: ``(group, choice, branch, first, cont)`` — ``first`` is the position (in the request's own input)
    whose output predicts ``cont[0]``."""

    group: int
    prefix: list[int]
    branches: list[list[int]]
    reqs: list[tuple[int, int, int, int, list[int]]]

    @property
    def size(self) -> int:
        return len(self.prefix) + sum(len(b) for b in self.branches)

    def node(self, branch: int, q: int) -> int:
        """Offset inside the packed tree of position ``q`` of distinct input ``branch``."""
        p = len(self.prefix)
        if q < p:
            return q
        return p + sum(len(b) for b in self.branches[:branch]) + (q - p)


class _Encoder:
    """``encode_pair`` for many requests at once: one batched tokenizer call, each distinct string once."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.bos = tokenizer.decode(prefix_token_id(tokenizer))
        self.prefix = prefix_token_id(tokenizer)

    def pairs(self, reqs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        split: list[tuple[str, str]] = []
        for context, continuation in reqs:
            n_spaces = len(context) - len(context.rstrip())
            if context and n_spaces:  # lm-eval moves the context's trailing spaces to the continuation
                context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
            split.append((context, continuation))
        texts = {t for c, x in split if c for t in (c, c + x)}
        enc = self._encode(sorted(texts))
        # an empty context (encode_pair): the continuation without special tokens, after the prefix token
        bare_texts = sorted({x for c, x in split if c == ""})
        bare = dict(zip(bare_texts, self.tok(bare_texts, add_special_tokens=False)["input_ids"])) if bare_texts else {}
        out = []
        for context, continuation in split:
            if context == "":
                out.append(condition_on_prefix(bare[continuation], self.prefix))
            else:
                ctx = enc[context]
                out.append((ctx, enc[context + continuation][len(ctx):]))
        return out

    def _encode(self, texts: list[str]) -> dict[str, list[int]]:
        # tok_encode's special-token rule: strings that already start with the prefix token's text add none
        plain = [t for t in texts if not (self.bos and t.startswith(self.bos))]
        marked = [t for t in texts if self.bos and t.startswith(self.bos)]
        enc: dict[str, list[int]] = {}
        if plain:
            enc.update(zip(plain, self.tok(plain)["input_ids"]))
        if marked:
            enc.update(zip(marked, self.tok(marked, add_special_tokens=False)["input_ids"]))
        return enc


#: one request's model input: ``(input ids, first, continuation)`` — the output at position ``first`` of the
#: input predicts ``continuation[0]``, the next ``len(continuation) − 1`` positions the rest
Request = tuple[list[int], int, list[int]]


def encode_requests(tokenizer, groups: Sequence[Sequence[tuple[str, str]]], limit: int) -> list[list[Request]]:
    """Per group, per ``(context, continuation)``: its :data:`Request` under lm-eval's tokenisation
    (:func:`encode_pair`) and left truncation ``(context_enc + continuation_enc)[-(limit + 1):][:-1]``."""
    flat = [req for g in groups for req in g]
    encoded = iter(_Encoder(tokenizer).pairs(flat))
    out: list[list[Request]] = []
    for g in groups:
        reqs: list[Request] = []
        for (_, continuation), (ctx, cont) in zip(g, encoded):
            if not cont:
                raise PrunelabError(f"continuation {continuation!r} encodes to no tokens")
            if len(cont) > limit:
                raise PrunelabError(f"continuation of {len(cont)} tokens exceeds the model's {limit}-token context")
            if not ctx:
                raise PrunelabError("a non-empty context encoded to no tokens: nothing conditions the continuation")
            seq = (ctx + cont)[-(limit + 1):][:-1]  # lm-eval's left truncation
            reqs.append((seq, len(seq) - len(cont), cont))
        out.append(reqs)
    return out


def _build_trees(inputs: Sequence[Sequence[Request]], share_prefix: bool) -> list[_Tree]:
    trees: list[_Tree] = []
    for gi, group in enumerate(inputs):
        reqs = [(ci, list(seq), first, list(cont)) for ci, (seq, first, cont) in enumerate(group)]
        if not share_prefix:
            trees.extend(_Tree(gi, seq, [[]], [(gi, ci, 0, first, cont)]) for ci, seq, first, cont in reqs)
            continue
        distinct: dict[tuple[int, ...], int] = {}
        seqs: list[list[int]] = []
        keyed = []
        for ci, seq, first, cont in reqs:  # identical inputs (one-token choices, e.g. BoolQ's yes/no) run once
            k = distinct.setdefault(tuple(seq), len(seqs))
            if k == len(seqs):
                seqs.append(seq)
            keyed.append((gi, ci, k, first, cont))
        p = len(seqs[0]) if len(seqs) == 1 else _common_prefix(seqs)
        if p == 0:  # nothing shared (e.g. left-truncated windows): one tree per distinct input
            for k, seq in enumerate(seqs):
                trees.append(_Tree(gi, seq, [[]], [(g, c, 0, f, x) for g, c, kk, f, x in keyed if kk == k]))
            continue
        trees.append(_Tree(gi, seqs[0][:p], [s[p:] for s in seqs], keyed))
    return trees


def _pack(trees: list[_Tree], token_budget: int) -> Iterator[tuple[bool, list[list[int]]]]:
    """Rows of tree indices per forward, as ``(plain, rows)``.

    Long single-sequence trees (no branches, longer than half a row: BoolQ passages, LAMBADA) run *plain*:
    one per row, right-padded, length-sorted so neighbours differ little, with no mask at all — causal
    attention alone keeps the padding out of every real token's view, and the kernels' causal path computes
    half the attention a dense mask would (lm-eval's own trick). Everything else is bin-packed first-fit
    decreasing: a forward's width is its largest tree (at least ``ROW_TOKENS``) and it holds
    ``token_budget // width`` rows, so long trees run in few wide rows and short ones in many narrow ones."""
    plain = sorted((t for t, tree in enumerate(trees) if tree.branches == [[]] and tree.size > ROW_TOKENS // 2),
                   key=lambda t: -trees[t].size)
    i = 0
    while i < len(plain):
        n = max(1, token_budget // trees[plain[i]].size)
        yield True, [[t] for t in plain[i:i + n]]
        i += n
    is_plain = set(plain)
    pending = sorted((t for t in range(len(trees)) if t not in is_plain), key=lambda t: -trees[t].size)
    while pending:
        width = max(ROW_TOKENS, trees[pending[0]].size)
        n_rows = max(1, token_budget // width)
        rows: list[list[int]] = []
        free: list[int] = []
        rest: list[int] = []
        smallest = trees[pending[-1]].size
        for pos, t in enumerate(pending):
            s = trees[t].size
            for r, room in enumerate(free):
                if s <= room:
                    rows[r].append(t)
                    free[r] -= s
                    break
            else:
                if len(rows) < n_rows:
                    rows.append([t])
                    free.append(width - s)
                else:
                    rest.append(t)
            if len(rows) == n_rows and max(free) < smallest:
                rest.extend(pending[pos + 1:])
                break
        yield False, rows
        pending = rest


def _attention_masks(model, tree_id: torch.Tensor, branch: torch.Tensor, pos: torch.Tensor, dtype):
    """Additive 4-D masks ``[R, 1, W, W]`` of the packed rows: a token sees the earlier tokens of its own
    tree's prefix and of its own branch (and, in sliding-window layers, only the last ``window`` positions).
    Families with per-layer attention types (Gemma2, Qwen2) take a ``{layer type: mask}`` mapping."""
    w = tree_id.shape[1]
    col = torch.arange(w, device=tree_id.device)
    allowed = ((tree_id[:, :, None] == tree_id[:, None, :]) & (col[:, None] >= col[None, :])
               & ((branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])))

    def additive(ok: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill_(~ok, torch.finfo(dtype).min)[:, None]

    cfg = model.config
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None:
        masks = {"full_attention": additive(allowed)}
        if "sliding_attention" in layer_types:
            near = (pos[:, :, None] - pos[:, None, :]) < window if window else torch.ones_like(allowed)
            masks["sliding_attention"] = additive(allowed & near)
        return masks if len(masks) > 1 else masks["full_attention"]
    if window:  # one mask for all layers, sliding (Mistral, Phi3 with a window)
        allowed = allowed & ((pos[:, :, None] - pos[:, None, :]) < window)
    return additive(allowed)


@dataclass
class PackedForward:
    """One forward of the packed engine: rows of trees (see module docstring) and what to score in them.

    Built by :func:`packed_forwards`; run by ``model.get_decoder()(input_ids=..., attention_mask=...,
    position_ids=..., use_cache=False)`` (or any caller reproducing that decoder, e.g. the depth search's
    :class:`prunelab.prune.block_evaluator.BlockEvaluator`) and scored by :func:`scored_logprobs` on
    ``hidden.reshape(-1, H)[gather]``."""

    input_ids: torch.Tensor  #: [R, W] token ids
    #: [R, W] each token's position in its own sequence; None on plain rows (positions 0…, the model's default)
    position_ids: torch.Tensor | None
    #: additive 4-D mask [R, 1, W, W] (or ``{layer type: mask}``); None on plain rows (causal attention alone)
    attention_mask: torch.Tensor | dict[str, torch.Tensor] | None
    #: [R, W] how many requests' inputs contain each position (0 = padding): per-token statistics over the
    #: requests (e.g. block influence) weight a shared prefix by the requests that share it
    weight: torch.Tensor
    gather: torch.Tensor  #: positions in the flattened [R·W] whose outputs predict a continuation token
    targets: torch.Tensor  #: the continuation token each gathered position predicts
    owner: torch.Tensor  #: index into ``requests`` of each gathered position
    requests: list[tuple[int, int]]  #: ``(group, request)`` of every request scored in this forward
    finished: int  #: groups whose last tree is in this forward (for progress)


def packed_forwards(model, inputs: Sequence[Sequence[Request]], token_budget: int, pad_id: int,
                    share_prefix: bool = True) -> Iterator[PackedForward]:
    """The packed forwards (about ``token_budget`` tokens each) that score every :data:`Request` of every group:
    trees per group (``share_prefix``), bin-packed by ``_pack``, masks by ``_attention_masks``; tensors on the
    model's device. Lazily, so only one forward's masks exist at a time."""
    device = _model_device(model)
    dtype = model.get_output_embeddings().weight.dtype
    trees = _build_trees(inputs, share_prefix)
    trees_left = [0] * len(inputs)
    for t in trees:
        trees_left[t.group] += 1
    for plain, rows in _pack(trees, token_budget):
        w = max(sum(trees[t].size for t in row) for row in rows)  # trim the forward to its fullest row
        ids = torch.full((len(rows), w), pad_id, dtype=torch.long)
        pos = torch.zeros((len(rows), w), dtype=torch.long)
        tree_id = torch.full((len(rows), w), -1, dtype=torch.long)  # padding: a tree of its own
        branch = torch.zeros((len(rows), w), dtype=torch.long)
        weight = torch.zeros((len(rows), w), dtype=torch.long)
        gather, targets, owner, done = [], [], [], []
        n_tree = 0
        for r, row in enumerate(rows):
            col = 0
            for t in row:
                tree = trees[t]
                p = len(tree.prefix)
                ids[r, col:col + p] = torch.tensor(tree.prefix)
                pos[r, col:col + p] = torch.arange(p)
                weight[r, col:col + p] = len(tree.reqs)  # every request's input starts with the prefix
                c = col + p
                for b, suffix in enumerate(tree.branches):
                    if suffix:
                        ids[r, c:c + len(suffix)] = torch.tensor(suffix)
                        pos[r, c:c + len(suffix)] = torch.arange(p, p + len(suffix))
                        branch[r, c:c + len(suffix)] = b + 1
                        weight[r, c:c + len(suffix)] = sum(1 for req in tree.reqs if req[2] == b)
                        c += len(suffix)
                tree_id[r, col:c] = n_tree
                n_tree += 1
                base = r * w + col
                for gi, ci, b, first, cont in tree.reqs:
                    gather.extend(base + tree.node(b, q) for q in range(first, first + len(cont)))
                    targets.extend(cont)
                    owner.extend([len(done)] * len(cont))
                    done.append((gi, ci))
                col = c
        finished = 0
        for row in rows:
            for t in row:
                trees_left[trees[t].group] -= 1
                finished += trees_left[trees[t].group] == 0
        if plain:  # one sequence per row from position 0, right padding: causal attention needs no mask
            position_ids, masks = None, None
        else:
            position_ids = pos.to(device)
            masks = _attention_masks(model, tree_id.to(device), branch.to(device), position_ids, dtype)
        yield PackedForward(ids.to(device), position_ids, masks, weight.to(device),
                            torch.tensor(gather, device=device), torch.tensor(targets, device=device),
                            torch.tensor(owner, device=device), done, finished)


def scored_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(target), target ≠ argmax)`` per row of ``hidden`` [N, H] (decoder outputs at the scored
    positions): the LM head and an fp32 log-softmax in ``HEAD_CHUNK``-row chunks (bounds the [N, vocab] buffer)."""
    logp, miss = [], []
    for s in range(0, hidden.shape[0], HEAD_CHUNK):
        lp = F.log_softmax(lm_head_logits(model, hidden[s:s + HEAD_CHUNK]).float(), dim=-1)
        logp.append(lp.gather(1, targets[s:s + HEAD_CHUNK, None]).squeeze(1))
        miss.append(lp.argmax(-1) != targets[s:s + HEAD_CHUNK])
    return torch.cat(logp), torch.cat(miss)


@torch.inference_mode()
def loglikelihood_groups(model, tokenizer, groups: Sequence[Sequence[tuple[str, str]]], batch_size: int = 8,
                         share_prefix: bool = True,
                         progress: Callable[[int], None] | None = None) -> list[list[tuple[float, bool]]]:
    """Score every ``(context, continuation)`` of every group (an item's choices); see module docstring.

    Returns, per group, ``[(loglik, is_greedy), ...]`` in the requests' order. Each forward holds about
    ``batch_size × 256`` packed tokens. ``share_prefix=False`` runs every request as its own sequence (no
    sharing; same scores). ``progress(n_groups_done)`` is called per forward.
    """
    if batch_size <= 0:
        raise PrunelabError(f"batch size must be positive, got {batch_size}")
    if _ENGINE.get() == "reference":
        out_ref = []
        for group in groups:
            out_ref.append([loglikelihood_reference(model, tokenizer, c, x) for c, x in group])
            if progress:
                progress(1)
        return out_ref
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix_token_id(tokenizer)
    decoder = model.get_decoder()
    inputs = encode_requests(tokenizer, groups, max_length(model, tokenizer))
    out: list[list[tuple[float, bool] | None]] = [[None] * len(g) for g in groups]
    for fwd in packed_forwards(model, inputs, batch_size * ROW_TOKENS, pad_id, share_prefix):
        hidden = decoder(input_ids=fwd.input_ids, attention_mask=fwd.attention_mask, position_ids=fwd.position_ids,
                         use_cache=False).last_hidden_state
        logp, miss = scored_logprobs(model, hidden.reshape(-1, hidden.shape[-1])[fwd.gather], fwd.targets)
        n = len(fwd.requests)
        ll = torch.zeros(n, dtype=torch.float32, device=logp.device).index_add_(0, fwd.owner, logp)
        misses = torch.zeros(n, dtype=torch.long, device=logp.device).index_add_(0, fwd.owner, miss.long())
        for (gi, ci), value, m in zip(fwd.requests, ll.tolist(), misses.tolist()):
            out[gi][ci] = (value, m == 0)
        if progress and fwd.finished:
            progress(fwd.finished)
    return out  # type: ignore[return-value]


@torch.inference_mode()
def loglikelihood_reference(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """One request, one unpadded forward over the whole sequence: the naive reference the tests compare to."""
    ctx, cont = encode_pair(tokenizer, context, continuation)
    limit = max_length(model, tokenizer)
    seq = (ctx + cont)[-(limit + 1):][:-1]
    logits = model(input_ids=torch.tensor([seq], device=_model_device(model)), use_cache=False).logits[0]
    return _score(logits[len(seq) - len(cont):], cont)
