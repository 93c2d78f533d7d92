"""SmolLM2-135M end to end: log-likelihood ARC-Easy, LAMBADA generation and WikiText-2 give plausible numbers."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm():
    import prunelab

    return prunelab.load("smollm2-135m")


def test_real_model_tasks(smollm):
    from prunelab.evaluate import evaluate

    arc = evaluate(smollm.model, smollm.tokenizer, ["arc_easy"], limit=20, seed=0, batch_size=8).results["arc_easy"]
    assert arc.n == 20 and 5 <= arc.metrics["acc"] <= 95 and 5 <= arc.metrics["acc_norm"] <= 95
    lam = evaluate(smollm.model, smollm.tokenizer, ["lambada_gen"], limit=10, seed=0, batch_size=10).results["lambada_gen"]
    wiki = evaluate(smollm.model, smollm.tokenizer, ["wikitext2"], limit=2).results["wikitext2"]  # 2 windows of 512
    assert lam.n == 10 and 0 <= lam.metrics["acc"] <= 100
    # a working 135M model writes words after a LAMBADA passage, not nothing
    assert sum(bool(p) for p in lam.details["predictions"]) >= 8
    assert wiki.n == 2 and wiki.metrics["tokens"] == 2 * 511
    assert math.isfinite(wiki.metrics["ppl"]) and 5 < wiki.metrics["ppl"] < 100
