"""``PackedHFLM``: lm-eval's ``HFLM`` whose log-likelihood requests run on prunelab's packed engine.

lm-eval builds the requests (its task configs, prompts, choices, few-shot contexts) and computes the metrics
from the answers; only ``loglikelihood`` is replaced: the requests are grouped per document (an item's choices:
``(task_name, doc_id)``, else the same context string), in first-appearance order, scored by
:func:`prunelab.evaluate.loglik.loglikelihood_groups` (HFLM's ``_encode_pair`` tokenisation, left truncation
and ``(loglik, is_greedy)``; the tree mask encodes each item's shared context once) and returned in the
original request order, each answer also handed to lm-eval's ``cache_hook`` as ``HFLM`` does.
``use_engine("reference")`` switches it to one request at a time, as for every other engine caller.

Left to ``HFLM``: ``loglikelihood_rolling`` and ``generate_until``. Empty contexts follow lm-eval 0.4.13's
``TemplateLM.loglikelihood`` rule in :func:`prunelab.evaluate.loglik.encode_pair` (continuation without special
tokens, conditioned on the prefix token, or on its own first token when that is the prefix token).
"""

from __future__ import annotations

from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from prunelab.errors import PrunelabError
from prunelab.evaluate import loglik


class PackedHFLM(HFLM):
    """``HFLM(pretrained=model, tokenizer=tokenizer, batch_size=...)`` with :meth:`loglikelihood` on the engine.

    ``batch_size`` is the engine's (about ``batch_size × 256`` packed tokens per forward). Only HFLM's default
    causal tokenisation is reproduced: a seq2seq backend, ``max_length``, ``add_bos_token`` or ``prefix_token_id``
    that differ from what the engine derives from the model and tokenizer raise :class:`PrunelabError`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        differs = []
        if self.backend != "causal":
            differs.append(f"backend {self.backend!r}")
        if self.add_bos_token is not None:
            differs.append(f"add_bos_token={self.add_bos_token}")
        if self.max_length != loglik.max_length(self.model, self.tokenizer):
            differs.append(f"max_length {self.max_length}")
        if self.prefix_token_id != loglik.prefix_token_id(self.tokenizer):
            differs.append(f"prefix_token_id {self.prefix_token_id}")
        if differs:
            raise PrunelabError("the packed lm-eval engine reproduces HFLM's default causal tokenisation only; "
                                f"got {', '.join(differs)} (use engine 'hflm')")

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if getattr(self, "enable_thinking", False) or not requests:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)  # HFLM's own error / empty answer
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: dict[object, list[int]] = {}  # insertion order = first appearance
        for i, r in enumerate(requests):
            key = ("doc", r.task_name, r.doc_id) if r.doc_id is not None else ("context", r.args[0])
            groups.setdefault(key, []).append(i)
        order = list(groups.values())
        batch = self.batch_size if isinstance(self.batch_size, int) else 8  # "auto": the engine's default
        with tqdm(total=len(order), desc="Running loglikelihood requests (packed)",
                  disable=disable_tqdm or self.rank != 0) as bar:
            scored = loglik.loglikelihood_groups(self.model, self.tokenizer,
                                                 [[tuple(requests[i].args[:2]) for i in g] for g in order],
                                                 batch_size=batch, progress=bar.update)
        for g, results in zip(order, scored):
            for i, (ll, greedy) in zip(g, results):
                answer = (float(ll), bool(greedy))
                answers[i] = answer
                self.cache_hook.add_partial("loglikelihood", requests[i].args, answer)
        return answers  # type: ignore[return-value]
