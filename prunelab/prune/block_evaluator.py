"""The cached candidate evaluator of depth pruning: ``BlockEvaluator(removed) -> L(S)`` for an objective.

With ``cached=True`` (default) nothing is computed twice:

* values are memoised per removed set (beam/GA/BO revisit sets);
* hidden states are cached per *kept prefix* (the tuple of kept block indices run so far, which fully
  determines the hidden state), LRU-bounded by ``cache_bytes``; a candidate starts from the longest cached
  prefix of its kept sequence — at worst the hidden states entering its first removed block, which the dense
  trajectory provides — and runs only the remaining kept blocks, then final norm + LM head.

Decoder layers are called directly with the *exact* keyword arguments the model's own forward passed to them
(captured once with forward pre-hooks): rotary ``position_embeddings``, ``position_ids`` and the attention
mask of that layer's type (Gemma2 alternates sliding/full masks per ``layer_types[i]``; a kept block keeps
its own mask type after removal, as :func:`prunelab.models.surgery.remove_layers` keeps its ``layer_types``
entry). The captured input of block 0 already includes family-specific embedding scaling (Gemma2's
``√hidden``), and the head applies Gemma2's final-logit soft-capping, so the cached path is exact for every
supported family (tested against ``cached=False``, which runs the HF decoder forward with the blocks swapped
out by :func:`blocks_removed`, on all tiny families).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for
from prunelab.prune.depth_objectives import Objective

__all__ = ["BlockEvaluator", "blocks_removed"]

#: Keyword arguments of a decoder-layer call whose tensors are batch-first (stacked with the hidden states).
_BATCH_FIRST_KWARGS = frozenset({"attention_mask", "position_ids", "position_embeddings"})


@contextmanager
def blocks_removed(model: nn.Module, removed: Iterable[int]):
    """Temporarily run ``model`` without blocks ``removed`` (layers list, ``num_hidden_layers`` and
    ``layer_types`` swapped, restored on exit). Weights are shared, nothing is copied."""
    adapter = adapter_for(model)
    dec = adapter.decoder(model)
    cfg = model.config
    old_layers = dec.layers
    drop = set(removed)
    kept = [i for i in range(len(old_layers)) if i not in drop]
    had_n, old_n = "num_hidden_layers" in cfg.__dict__, cfg.__dict__.get("num_hidden_layers")
    had_t, old_t = "layer_types" in cfg.__dict__, cfg.__dict__.get("layer_types")
    dec.layers = nn.ModuleList([old_layers[i] for i in kept])
    # __dict__ writes bypass config validators that would compare layer_types to num_hidden_layers mid-update.
    cfg.__dict__["num_hidden_layers"] = len(kept)
    if old_t is not None:
        cfg.__dict__["layer_types"] = [old_t[i] for i in kept]
    try:
        yield model
    finally:
        dec.layers = old_layers
        for name, had, val in (("num_hidden_layers", had_n, old_n), ("layer_types", had_t, old_t)):
            if had:
                cfg.__dict__[name] = val
            else:
                cfg.__dict__.pop(name, None)


class BlockEvaluator:
    """``evaluator(removed) -> L(S)``, cached (default) or naive (HF forward from the embeddings each time).

    Counters: ``candidates`` (distinct sets evaluated), ``requests`` (calls), ``blocks_run`` (decoder-block
    forward passes over the whole calibration set), ``cache_hits``, ``screened`` (candidates :meth:`best_of` ruled
    out by their lower bound, without the full LM head).
    """

    def __init__(self, model: nn.Module, objective: Objective, cached: bool = True,
                 cache_bytes: int = 2 << 30, on_evaluate: Callable[[int], None] | None = None,
                 batch_tokens: int = 8192, screen: bool = True) -> None:
        if not objective.batches:
            raise PrunelabError("empty calibration set: the objective has no batches")
        self.model = model
        self.objective = objective
        self.cached = cached
        self.cache_bytes = int(cache_bytes)
        self.batch_tokens = int(batch_tokens)
        self.screen = bool(screen)
        self.screened = 0
        self._bound_ready: bool | None = None
        self.on_evaluate = on_evaluate
        self.adapter = adapter_for(model)
        self.layers = list(self.adapter.layers(model))
        self.n_blocks = len(self.layers)
        self.memo: dict[frozenset[int], float] = {}
        self.notes: dict[str, object] = {}
        self.seen: set[frozenset[int]] = set()
        self.requests = 0
        self.blocks_run = 0
        self.cache_hits = 0
        self._states: OrderedDict[tuple[int, ...], list[torch.Tensor]] = OrderedDict()
        self._used = 0
        self._captured = False
        self._influence: list[float] | None = None

    # ----- capture ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _capture(self) -> None:
        """One dense forward per batch recording each block's input and call kwargs (pre-hooks)."""
        if self._captured:
            return
        n = self.n_blocks
        self._kwargs: list[list[dict]] = []
        inputs: list[list[torch.Tensor]] = [[] for _ in range(n + 1)]
        current: dict = {}

        def hook(idx):
            def pre(module, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                current[idx] = (h, kw)

            return pre

        handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        try:
            for b in self.objective.batches:
                current.clear()
                self.adapter.decoder(self.model)(input_ids=b.input_ids, attention_mask=b.attention_mask,
                                                 position_ids=b.position_ids, use_cache=False)
                self._kwargs.append([current[i][1] for i in range(n)])
                for i in range(n):
                    inputs[i].append(current[i][0])
                inputs[n].append(self._run_block(n - 1, len(self._kwargs) - 1, current[n - 1][0]))
        finally:
            for h in handles:
                h.remove()
        self._dense = inputs
        self._captured = True
        if self.cached and self.screen:
            norm = self.adapter.final_norm(self.model)
            self.objective.prepare_bound(self.model, [norm(h) for h in inputs[n]])
            self._bound_ready = self.objective.lower_bound(self.model, [norm(h) for h in inputs[n]]) is not None
        if self.cached:
            # the dense trajectory: the state after kept prefix (0..i-1) is the input of block i
            self._root = inputs[0]
            for i in range(1, n):
                self._put(tuple(range(i)), inputs[i])

    def _run_block(self, idx: int, batch: int, h: torch.Tensor) -> torch.Tensor:
        out = self.layers[idx](h, **self._kwargs[batch][idx])
        return out[0] if isinstance(out, tuple) else out

    # ----- LRU state cache -------------------------------------------------------------------------------
    def _put(self, key: tuple[int, ...], states: list[torch.Tensor]) -> None:
        size = sum(s.numel() * s.element_size() for s in states)
        if size > self.cache_bytes or key in self._states:
            return
        while self._used + size > self.cache_bytes and self._states:
            _, old = self._states.popitem(last=False)
            self._used -= sum(s.numel() * s.element_size() for s in old)
        self._states[key] = states
        self._used += size

    def _longest_prefix(self, kept: tuple[int, ...]) -> tuple[int, list[torch.Tensor]]:
        for i in range(len(kept), 0, -1):
            st = self._states.get(kept[:i])
            if st is not None:
                self._states.move_to_end(kept[:i])
                self.cache_hits += 1
                return i, st
        return 0, self._root

    # ----- evaluation ------------------------------------------------------------------------------------
    def _check(self, removed: Iterable[int]) -> frozenset[int]:
        s = frozenset(int(i) for i in removed)
        if any(i < 0 or i >= self.n_blocks for i in s):
            raise PrunelabError(f"block index out of range [0, {self.n_blocks})")
        if len(s) >= self.n_blocks:
            raise PrunelabError(f"cannot remove {len(s)} of {self.n_blocks} blocks: at least one must remain")
        return s

    @torch.inference_mode()
    def _cached_normed(self, s: frozenset[int]) -> list[torch.Tensor]:
        self._capture()
        kept = tuple(i for i in range(self.n_blocks) if i not in s)
        start, states = self._longest_prefix(kept)
        for j in range(start, len(kept)):
            states = [self._run_block(kept[j], b, h) for b, h in enumerate(states)]
            self.blocks_run += 1
            if j + 1 < len(kept):  # the full kept sequence is memoised by value instead
                self._put(kept[: j + 1], states)
        norm = self.adapter.final_norm(self.model)
        return [norm(h) for h in states]

    @torch.inference_mode()
    def _naive_normed(self, s: frozenset[int]) -> list[torch.Tensor]:
        dec = self.adapter.decoder(self.model)
        with blocks_removed(self.model, s):
            outs = [dec(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                        use_cache=False).last_hidden_state for b in self.objective.batches]
        self.blocks_run += self.n_blocks - len(s)
        return outs

    def __call__(self, removed: Iterable[int]) -> float:
        s = self._check(removed)
        self.requests += 1
        if self.cached and s in self.memo:
            return self.memo[s]
        with torch.inference_mode():
            normed = self._cached_normed(s) if self.cached else self._naive_normed(s)
            value = float(self.objective.reduce(self.model, normed))
        self._record(s, value)
        if not self.cached:
            self.memo.pop(s, None)
        return value

    def evaluate_many(self, sets: Iterable[Iterable[int]]) -> list[float]:
        """``[L(S) for S in sets]`` — with the cache, the not-yet-memoised candidates run *together*.

        Candidates advance in lock-step through the blocks: at each round the lowest next block ``m`` runs once on
        the hidden states of every candidate (lane) that keeps it next, stacked along the batch dimension, so a
        block's weights are streamed once per round instead of once per candidate and small calibration batches
        fill the matrix units. Lanes with the same kept prefix are one lane (their states are identical), and every
        lane starts from the longest cached prefix. Row ``r`` of a stacked batch is computed exactly as it would be
        alone (decoder blocks are row-independent), so values equal :meth:`__call__`'s up to float summation order.
        At most ``batch_tokens`` calibration tokens are stacked per block call (larger sets run in groups).
        """
        checked = [self._check(s) for s in sets]
        if not self.cached:
            return [self(s) for s in checked]
        todo = list(dict.fromkeys(s for s in checked if s not in self.memo))
        per_candidate = max(1, sum(b.input_ids.numel() for b in self.objective.batches))
        group = max(1, self.batch_tokens // per_candidate)
        if group > 1 and len(todo) > 1:
            with torch.inference_mode():
                for g in range(0, len(todo), group):
                    chunk = todo[g : g + group]
                    for s, normed in zip(chunk, self._stacked_normed(chunk)):
                        self._record(s, float(self.objective.reduce(self.model, normed)))
        values = []
        for s in checked:  # memo hits now, or one-at-a-time when stacking does not apply
            values.append(self(s))
        return values

    def best_of(self, sets: Iterable[Iterable[int]], n: int) -> list[tuple[frozenset[int], float]]:
        """The ``n`` best candidates of ``sets`` with their exact values, best first (ties: the smaller sorted set),
        exactly as if every candidate had been evaluated — but candidates whose cheap lower bound
        (:meth:`Objective.lower_bound`, perplexity: log-sum-exp over a small vocabulary) already exceeds the
        ``n``-th best exact value so far skip the full LM head (``screen=True``, cached mode only)."""
        distinct = list(dict.fromkeys(self._check(s) for s in sets))
        self.requests += len(distinct)
        key = lambda item: (item[1], tuple(sorted(item[0])))  # noqa: E731
        exact = {s: self.memo[s] for s in distinct if self.cached and s in self.memo}
        todo = [s for s in distinct if s not in exact]
        if todo and self.cached and self.screen:
            self._capture()
        if not todo or not self.cached or not self.screen or self._bound_ready is False:
            self.requests -= len(todo)
            exact.update(zip(todo, self.evaluate_many(todo)))
            return sorted(exact.items(), key=key)[:n]
        per_candidate = max(1, sum(b.input_ids.numel() for b in self.objective.batches))
        group = max(1, self.batch_tokens // per_candidate)

        def threshold() -> float:
            vals = sorted(exact.values())
            return vals[n - 1] if len(vals) >= n else math.inf

        with torch.inference_mode():
            for g in range(0, len(todo), group):
                chunk = todo[g : g + group]
                normed = self._stacked_normed(chunk) if len(chunk) > 1 else [self._cached_normed(chunk[0])]
                bounds = [self.objective.lower_bound(self.model, h) for h in normed]
                for i in sorted(range(len(chunk)), key=lambda i: (bounds[i], tuple(sorted(chunk[i])))):
                    s = chunk[i]
                    if bounds[i] > threshold():  # exact ≥ bound > n-th best: cannot be among the n best
                        self.screened += 1
                        self._record(s, None)
                        continue
                    value = float(self.objective.reduce(self.model, normed[i]))
                    self._record(s, value)
                    exact[s] = value
        return sorted(exact.items(), key=key)[:n]

    def _record(self, s: frozenset[int], value: float | None) -> None:
        """Count ``s`` as evaluated; memoise its exact ``value`` (None: only bounded, not memoised)."""
        if value is None:
            if s not in self.seen:
                self.seen.add(s)
                if self.on_evaluate:
                    self.on_evaluate(len(self.seen))
            return
        if not math.isfinite(value):
            raise PrunelabError(f"objective is not finite ({value}) for removed blocks {sorted(s)}")
        if s not in self.seen:
            self.seen.add(s)
            if self.on_evaluate:
                self.on_evaluate(len(self.seen))
        self.memo[s] = value

    def _stacked_kwargs(self, batch: int, idx: int, lanes: int) -> dict:
        """Block ``idx``'s captured kwargs for ``lanes`` copies of calibration batch ``batch`` stacked on dim 0:
        batch-first tensors (mask, position ids, rotary cos/sin) are repeated when the batch has > 1 row; with one
        row they broadcast as they are."""
        rows = self.objective.batches[batch].input_ids.shape[0]
        kw = self._kwargs[batch][idx]
        if rows == 1 or lanes == 1:
            return kw

        def rep(v):
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == rows:
                return v.repeat(lanes, *([1] * (v.dim() - 1)))
            if isinstance(v, tuple):
                return tuple(rep(x) for x in v)
            return v

        return {k: (rep(v) if k in _BATCH_FIRST_KWARGS else v) for k, v in kw.items()}

    def _stacked_normed(self, chunk: list[frozenset[int]]) -> list[list[torch.Tensor]]:
        self._capture()
        kept = [tuple(i for i in range(self.n_blocks) if i not in s) for s in chunk]
        starts: dict[tuple[int, ...], tuple[list[torch.Tensor], list[int]]] = {}
        for c, kp in enumerate(kept):
            start, states = self._longest_prefix(kp)
            starts.setdefault(kp[:start], (states, []))[1].append(c)
        # a lane: (kept prefix run so far, its hidden states per calibration batch, member candidates)
        lanes = [(prefix, states, members) for prefix, (states, members) in starts.items()]
        finished: dict[int, list[torch.Tensor]] = {}
        while True:
            # split lanes whose members want different next blocks; members at the end of their sequence finish
            pending = []  # (prefix, states, members, next block)
            for prefix, states, members in lanes:
                by_next: dict[int, list[int]] = {}
                for c in members:
                    if len(kept[c]) == len(prefix):
                        finished[c] = states
                    else:
                        by_next.setdefault(kept[c][len(prefix)], []).append(c)
                pending.extend((prefix, states, mem, nb) for nb, mem in by_next.items())
            if not pending:
                break
            m = min(p[3] for p in pending)
            run = [p for p in pending if p[3] == m]
            lanes = [p[:3] for p in pending if p[3] != m]
            outs: list[list[torch.Tensor]] = [[] for _ in run]
            for b in range(len(self.objective.batches)):
                stacked = torch.cat([p[1][b] for p in run]) if len(run) > 1 else run[0][1][b]
                out = self.layers[m](stacked, **self._stacked_kwargs(b, m, len(run)))
                out = out[0] if isinstance(out, tuple) else out
                for r, piece in enumerate(out.split(run[0][1][b].shape[0]) if len(run) > 1 else (out,)):
                    outs[r].append(piece)
            self.blocks_run += len(run)
            for (prefix, _, members, _), states in zip(run, outs):
                key = prefix + (m,)
                if any(len(kept[c]) > len(key) for c in members):  # full kept sequences are memoised by value
                    self._put(key, states)
                lanes.append((key, states, members))
        norm = self.adapter.final_norm(self.model)
        return [[norm(h) for h in finished[c]] for c in range(len(chunk))]

    @property
    def candidates(self) -> int:
        """Distinct removed sets evaluated."""
        return len(self.seen)

    @torch.inference_mode()
    def block_influence(self) -> list[float]:
        """ShortGPT block influence ``BI_i = 1 − E_t[cos(x_i,t, x_{i+1},t)]`` (input vs output of block i,
        averaged over real calibration tokens — a position shared by several calibration sequences, e.g. the
        margin objective's packed context of an item's choices, counts once per sequence), from one dense forward
        pass."""
        if self._influence is None:
            self._capture()
            bi = []
            for i in range(self.n_blocks):
                num, den = 0.0, 0
                for b, (x, y) in enumerate(zip(self._dense[i], self._dense[i + 1])):
                    w = self.objective.token_weight(self.objective.batches[b]).to(x.device)
                    cos = nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
                    num += float((cos.double() * w).sum())
                    den += int(w.sum())
                bi.append(1.0 - num / den)
            self._influence = bi
        return list(self._influence)
