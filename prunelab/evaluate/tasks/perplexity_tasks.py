"""Perplexity tasks: WikiText-2 test and a C4 validation sample (token-level, non-overlapping 512 windows).

``limit`` is the number of windows scored (the first ``limit`` windows of the text; ``seed`` is unused as
the windows are deterministic).
"""

from __future__ import annotations

import time

from prunelab.evaluate.perplexity import perplexity_of_ids, tokenize_text
from prunelab.evaluate.progress import Counter
from prunelab.evaluate.registry import ItemOutcome, TaskResult, TaskSpec, register_task

SEQ_LEN = 512


def _ppl_task(name: str, text: str, model, tokenizer, limit, batch_size) -> TaskResult:
    start = time.perf_counter()
    ids = tokenize_text(tokenizer, text)
    counter = Counter(name, 1)
    res = perplexity_of_ids(model, ids, seq_len=SEQ_LEN, max_windows=limit, batch_size=max(1, batch_size // 2))
    counter(1)
    window_ids = [f"{name}-w{i}" for i in range(res.windows)]
    return TaskResult(name, {"ppl": res.perplexity, "nll": res.nll_mean, "tokens": float(res.tokens)}, "ppl",
                      res.windows, window_ids, time.perf_counter() - start,
                      {"seq_len": SEQ_LEN, "windows": res.windows},
                      outcomes=[ItemOutcome(i, nll=v, tokens=t)
                                for i, v, t in zip(window_ids, res.window_nll, res.window_tokens)])


@register_task(TaskSpec("wikitext2", "perplexity", "ppl", higher_is_better=False, label="WikiText-2 ppl"))
def wikitext2(model, tokenizer, limit, seed, batch_size) -> TaskResult:
    """WikiText-2 test (the whole text tokenised once), ppl = exp(Σ NLL / Σ tokens) over 512-token windows."""
    from prunelab.data import load_wikitext2_text

    return _ppl_task("wikitext2", load_wikitext2_text(), model, tokenizer, limit, batch_size)


@register_task(TaskSpec("c4", "perplexity", "ppl", higher_is_better=False, label="C4 ppl"))
def c4(model, tokenizer, limit, seed, batch_size) -> TaskResult:
    """C4 validation sample (256 documents joined by blank lines), same windows; needs internet (no offline copy)."""
    from prunelab.data.loaders import load_c4_texts

    return _ppl_task("c4", "\n\n".join(load_c4_texts(256)), model, tokenizer, limit, batch_size)
