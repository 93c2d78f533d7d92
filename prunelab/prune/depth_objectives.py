"""Depth-pruning objectives: the calibration loss ``L(D; θ ⊙ m_S)`` of a model with blocks ``S`` removed.

A candidate is a set ``S`` of removed blocks; its value is ``L(D; θ ⊙ m_S)`` with ``(m_S)_i = 1[i ∉ S]``
("Rethinking Layer Redundancy", eq. 2). Two objectives (registry :data:`OBJECTIVES`):

* ``perplexity`` — mean token negative log-likelihood on calibration token batches
  ``L = (1/T) Σ_t −log p(x_t | x_<t)`` (lower = better; ``exp(L)`` is the calibration perplexity).
* ``margin`` — task likelihood margin on multiple-choice items (Wee et al., 2025): per item, with the
  length-normalised log-likelihood ``ℓ(c) = (1/|c|) Σ_{t∈c} log p(c_t | context, c_<t)`` of each choice,
  ``margin = max_{c≠y} ℓ(c) − ℓ(y)``; ``L`` = mean margin (more negative = better). ``|c|`` is counted in
  tokens. Its batches are forwards of the evaluation engine (:func:`prunelab.evaluate.loglik.packed_forwards`:
  an item's choices share one pass over the context, several items per row, the LM head only on choice tokens),
  so a candidate costs the context's tokens once per item, not once per choice.

An objective owns its calibration ``batches`` and reduces the final normed hidden states of those batches to
``L``; :class:`prunelab.prune.block_evaluator.BlockEvaluator` produces the hidden states. The default calibration
data comes from :mod:`prunelab.data` (:func:`prunelab.data.calibration_batch`,
:func:`prunelab.data.mc_calibration.load_mc_calibration`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.data.calibration import calibration_batch
from prunelab.data.mc_calibration import load_mc_calibration
from prunelab.errors import PrunelabError
from prunelab.evaluate.loglik import lm_head_logits
from prunelab.registry import Registry

__all__ = ["HEAD_CHUNK", "OBJECTIVES", "Batch", "MarginObjective", "Objective", "PerplexityObjective", "lm_logits"]

#: Tokens per LM-head chunk: bounds the ``[tokens, vocab]`` logits tensor (vocab 49k × 2048 × 4 B ≈ 400 MB).
HEAD_CHUNK = 1024


#: ``lm_head(h)`` with the family's final-logit soft-capping — the evaluation engine's
lm_logits = lm_head_logits


def _token_logprobs(model: nn.Module, normed: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(targets | ·)`` for rows of ``normed`` ``[T, H]`` and ``targets`` ``[T]``, chunked over T."""
    out = []
    for s in range(0, normed.shape[0], HEAD_CHUNK):
        logits = lm_logits(model, normed[s : s + HEAD_CHUNK]).float()
        out.append(-nn.functional.cross_entropy(logits, targets[s : s + HEAD_CHUNK], reduction="none"))
    return torch.cat(out) if out else normed.new_zeros(0)


@dataclass
class Batch:
    """One forward batch of the calibration set plus objective-specific bookkeeping.

    Right-padded rows (``attention_mask`` 2-D or None), or packed rows of the evaluation engine: ``attention_mask``
    an additive 4-D mask (or ``{layer type: mask}``), ``position_ids`` each token's position in its own sequence,
    ``weight`` how many calibration sequences contain each position (0 = padding)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | dict[str, torch.Tensor] | None = None
    meta: Any = field(default_factory=list)
    position_ids: torch.Tensor | None = None
    weight: torch.Tensor | None = None


class Objective:
    """An objective: calibration ``batches`` and ``reduce(model, normed_hidden_per_batch) -> float``."""

    name = ""
    lower_is_better = True
    batches: list[Batch]

    def reduce(self, model: nn.Module, normed: Sequence[torch.Tensor]) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare_bound(self, model: nn.Module, dense_normed: Sequence[torch.Tensor]) -> None:
        """Called once with the dense model's final normed states (objectives with a cheap bound set it up)."""

    def lower_bound(self, model: nn.Module, normed: Sequence[torch.Tensor]) -> float | None:
        """A cheap ``B ≤ reduce(model, normed)``, or None when the objective has none."""
        return None

    def token_weight(self, batch: Batch) -> torch.Tensor:
        """Per position, how many calibration tokens it stands for (0 = padding; for block-influence averaging)."""
        if batch.weight is not None:
            return batch.weight
        if batch.attention_mask is None:
            return torch.ones_like(batch.input_ids)
        return batch.attention_mask.long()


class PerplexityObjective(Objective):
    """Mean token NLL ``(1/T) Σ −log p(x_t | x_<t)`` over calibration windows ``tokens [n, L]``."""

    name = "perplexity"

    def __init__(self, tokens: torch.Tensor, batch_size: int = 8) -> None:
        if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
            raise PrunelabError("perplexity objective needs a non-empty calibration batch [n ≥ 1, seq_len ≥ 2]")
        self.batches = [Batch(tokens[s : s + batch_size]) for s in range(0, tokens.shape[0], batch_size)]

    def reduce(self, model, normed):
        total, count = 0.0, 0
        for b, h in zip(self.batches, normed):
            hid = h[:, :-1].reshape(-1, h.shape[-1])
            tgt = b.input_ids[:, 1:].reshape(-1)
            total -= float(_token_logprobs(model, hid, tgt).double().sum())
            count += tgt.numel()
        return total / count

    #: tokens per calibration position added to the bound's vocabulary (the dense model's most likely ones there)
    support_top_k = 64
    #: calibration positions sharing one bound vocabulary: at most ``positions × (1 + top_k)`` tokens each
    support_positions = 64

    def prepare_bound(self, model, dense_normed):
        """Bound vocabularies ``U_c``, one per run of ``support_positions`` consecutive calibration positions: every
        target token of the run plus the dense model's top-``support_top_k`` tokens at each of its positions (where
        a slightly pruned model still puts most of its probability mass).

        One vocabulary for all positions would grow with the calibration size (512 positions × 64 tokens already
        cover most of a 49k vocabulary) until the bound cost as much as the head; per-run vocabularies keep it at
        ≤ ``positions·(1 + k)/|V|`` of the head (≈ 8 % for SmolLM2), and stay tighter than per-position ones."""
        k = min(self.support_top_k, model.get_output_embeddings().weight.shape[0])
        self.support = []  # per batch: a list of (first position, U_c sorted token ids, each target's index in U_c)
        for b, h in zip(self.batches, dense_normed):
            hid = h[:, :-1].reshape(-1, h.shape[-1])
            tgt = b.input_ids[:, 1:].reshape(-1)
            runs = []
            for s in range(0, hid.shape[0], self.support_positions):
                t = tgt[s : s + self.support_positions]
                top = lm_logits(model, hid[s : s + self.support_positions]).topk(k, dim=-1).indices
                vocab = torch.unique(torch.cat([t, top.reshape(-1)]))
                runs.append((s, vocab, torch.searchsorted(vocab, t)))
            self.support.append(runs)

    def lower_bound(self, model, normed):
        """``B = (1/T) Σ_t [logsumexp_{v∈U_c(t)} z_t,v − z_t,y_t] ≤ L`` for vocabularies ``U_c(t) ∋ y_t``: dropping
        terms from a log-sum-exp can only lower it. Minus a float-rounding allowance."""
        support = getattr(self, "support", None)
        if support is None:
            return None
        head = model.get_output_embeddings()
        cap = getattr(model.config, "final_logit_softcapping", None)
        total, count = 0.0, 0
        for h, runs in zip(normed, support):
            hid = h[:, :-1].reshape(-1, h.shape[-1])
            for s, vocab, tpos in runs:
                bias = None if head.bias is None else head.bias[vocab]
                z = nn.functional.linear(hid[s : s + len(tpos)], head.weight[vocab], bias).float()
                if cap:
                    z = torch.tanh(z / cap) * cap
                nll = torch.logsumexp(z, dim=-1) - z.gather(1, tpos[:, None]).squeeze(1)
                total += float(nll.double().sum())
            count += hid.shape[0]
        bound = total / count
        return bound - 1e-5 * max(1.0, abs(bound))


class MarginObjective(Objective):
    """Mean task likelihood margin ``max_{c≠y} ℓ(c) − ℓ(y)`` (token-length-normalised ℓ) over MC items.

    A choice's sequence is ``ids = (ctx + cont)[-max_len:]`` (context and choice tokenised separately, no special
    tokens); ``ℓ`` averages ``log p`` over its choice tokens ``ids[start:]``, ``start = max(1, len(ids) − |cont|)``
    (a continuation needs ≥ 1 token of context). Scored on packed forwards of about ``batch_size × 256`` tokens
    (:func:`prunelab.evaluate.loglik.packed_forwards`; same values as one padded row per sequence)."""

    name = "margin"

    def __init__(self, model: nn.Module, tokenizer, items: Sequence, batch_size: int = 16,
                 max_len: int = 256) -> None:
        from prunelab.evaluate import loglik

        items = [it for it in items if len(it.choices) >= 2]
        if not items:
            raise PrunelabError("margin objective needs at least one multiple-choice item with ≥ 2 choices")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        inputs = []  # per item, per choice: (ids, first, choice tokens) — the engine's Request
        for it in items:
            reqs = []
            for c, choice in enumerate(it.choices):
                ctx_text = it.contexts[c] if it.contexts else it.context
                ctx = tokenizer(ctx_text, add_special_tokens=False)["input_ids"]
                cont = tokenizer(choice, add_special_tokens=False)["input_ids"]
                if not cont:
                    raise PrunelabError(f"MC item {it.id}: choice {c} tokenises to nothing")
                ids = (ctx + cont)[-max_len:]
                start = max(1, len(ids) - len(cont))
                # the whole sequence runs (its last token's output is unused), as one row per sequence ran it
                # before: the block influence over these tokens is unchanged
                reqs.append((ids, start - 1, ids[start:]))
            inputs.append(reqs)
        self.items = items
        self.batches = [Batch(f.input_ids, f.attention_mask, f, position_ids=f.position_ids, weight=f.weight)
                        for f in loglik.packed_forwards(model, inputs, batch_size * loglik.ROW_TOKENS, pad)]

    def choice_loglik(self, model, normed) -> list[list[float]]:
        """``ℓ[item][choice]``: mean log-probability of the choice tokens given the context."""
        from prunelab.evaluate.loglik import scored_logprobs

        ll: list[list[float]] = [[math.nan] * len(it.choices) for it in self.items]
        for b, h in zip(self.batches, normed):
            f = b.meta
            lp, _ = scored_logprobs(model, h.reshape(-1, h.shape[-1])[f.gather], f.targets)
            n = len(f.requests)
            total = torch.zeros(n, dtype=torch.float64, device=lp.device).index_add_(0, f.owner, lp.double())
            count = torch.zeros(n, dtype=torch.long, device=lp.device).index_add_(0, f.owner,
                                                                                  torch.ones_like(f.owner))
            for (i, c), t, k in zip(f.requests, total.tolist(), count.tolist()):
                ll[i][c] = t / k
        return ll

    def reduce(self, model, normed):
        ll = self.choice_loglik(model, normed)
        margins = []
        for it, l in zip(self.items, ll):
            gold = l[it.answer]
            margins.append(max(v for c, v in enumerate(l) if c != it.answer) - gold)
        return sum(margins) / len(margins)


def _perplexity_objective(model, tokenizer, calibration=None, n_samples: int = 32, seq_len: int = 128,
                          source: str = "lambada", seed: int = 0, batch_size: int = 8, **_) -> Objective:
    """``calibration``: a ``LongTensor [n, L]`` of token ids, else :func:`prunelab.data.calibration_batch`."""
    if calibration is None:
        calibration = calibration_batch(tokenizer, n_samples=n_samples, seq_len=seq_len, source=source, seed=seed)
    if not isinstance(calibration, torch.Tensor):
        raise PrunelabError("perplexity objective expects calibration token ids as a LongTensor [n, seq_len]")
    return PerplexityObjective(calibration.to(model.device), batch_size=batch_size)


def _margin_objective(model, tokenizer, calibration=None, n_samples: int = 64, seed: int = 0,
                      mc_source: str = "arc_easy:validation", batch_size: int = 16, max_len: int = 256,
                      **_) -> Objective:
    """``calibration``: a list of MC items, else a seeded sample of ``mc_source`` (``arc_easy:validation``
    by default — never the ``test`` split that evaluation uses)."""
    if calibration is None:
        calibration = load_mc_calibration(mc_source, n_samples, seed)
    if isinstance(calibration, torch.Tensor) or not isinstance(calibration, (list, tuple)):
        raise PrunelabError("margin objective expects a list of multiple-choice items as calibration")
    return MarginObjective(model, tokenizer, calibration, batch_size=batch_size, max_len=max_len)


#: name -> factory(model, tokenizer, calibration=None, n_samples, seq_len, seed, ...) -> Objective
OBJECTIVES: Registry[Callable[..., Objective]] = Registry("depth objective")
OBJECTIVES.register("perplexity", _perplexity_objective)
OBJECTIVES.register("margin", _margin_objective)
