"""prunelab.stats: paired bootstrap CIs (coverage on synthetic data), McNemar, refusals, degenerate cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from prunelab import stats as S
from prunelab.errors import PrunelabError

# Joint distribution of (a correct, b correct) per item: P(11), P(10), P(01), P(00). acc_a = 0.30, acc_b = 0.40,
# so the true paired difference is +10 pp and the discordance ψ = 0.20.
CELLS = [0.25, 0.05, 0.15, 0.55]
TRUE_PP = 10.0


def _paired_sample(rng: np.random.Generator, n: int) -> tuple[dict, dict]:
    cells = rng.choice(4, size=n, p=CELLS)
    a = (cells <= 1).astype(int)
    b = ((cells == 0) | (cells == 2)).astype(int)
    return {f"i{k}": int(a[k]) for k in range(n)}, {f"i{k}": int(b[k]) for k in range(n)}


def _coverage(draw, reps: int, true_value: float, **kw) -> float:
    hits = 0
    for rep in range(reps):
        d = draw(np.random.default_rng(rep), seed=rep, **kw)
        hits += d.low <= true_value <= d.high
    return hits / reps


def test_paired_bootstrap_coverage_single_seed():
    """500 replications of n = 120 items: the 95 % CI covers the true +10 pp at about the nominal rate."""
    def draw(rng, seed):
        a, b = _paired_sample(rng, 120)
        return S.accuracy_difference(a, b, n_resamples=499, seed=seed)

    cov = _coverage(draw, 500, TRUE_PP)
    assert 0.91 <= cov <= 0.98, cov


@pytest.mark.slow
def test_cluster_bootstrap_coverage_several_seeds():
    """Three seeds per arm on the same 100 items, with an item-dependent effect (+50 pp on half the items,
    −30 pp on the rest; +10 pp on average), so the seeds of one item are correlated. With the item as the
    resampling unit the 95 % CI keeps its coverage; treating the 300 seed × item pairs as independent items
    does not — which shows the tolerance can fail."""
    n, k = 100, 3
    cluster = naive = 0
    reps = 500
    for rep in range(reps):
        rng = np.random.default_rng(rep)
        effect = np.where(rng.random(n) < 0.5, 0.5, -0.3)
        a = [{f"i{i}": int(rng.random() < 0.4) for i in range(n)} for _ in range(k)]
        b = [{f"i{i}": int(rng.random() < 0.4 + effect[i]) for i in range(n)} for _ in range(k)]
        d = S.accuracy_difference(a, b, n_resamples=499, seed=rep)
        cluster += d.low <= TRUE_PP <= d.high
        flat_a = {f"{s}:{i}": v for s, run in enumerate(a) for i, v in run.items()}
        flat_b = {f"{s}:{i}": v for s, run in enumerate(b) for i, v in run.items()}
        d = S.accuracy_difference(flat_a, flat_b, n_resamples=499, seed=rep)
        naive += d.low <= TRUE_PP <= d.high
    assert 0.91 <= cluster / reps <= 0.98, cluster / reps
    assert naive / reps < 0.91, naive / reps


@pytest.mark.slow
def test_composite_stratified_coverage():
    """Composite of a 120-item and a 60-item task, each with a true +10 pp: stratified CI coverage ≈ 95 %."""
    def draw(rng, seed):
        return S.composite_difference([_paired_sample(rng, 120), _paired_sample(rng, 60)], n_resamples=499,
                                      seed=seed)

    cov = _coverage(draw, 500, TRUE_PP)
    assert 0.91 <= cov <= 0.98, cov


def test_composite_estimate_is_mean_of_task_differences():
    rng = np.random.default_rng(3)
    (a1, b1), (a2, b2) = _paired_sample(rng, 200), _paired_sample(rng, 100)
    comp = S.composite_difference([(a1, b1), (a2, b2)], n_resamples=199)
    d1, d2 = S.accuracy_difference(a1, b1, n_resamples=199), S.accuracy_difference(a2, b2, n_resamples=199)
    assert comp.estimate == pytest.approx((d1.estimate + d2.estimate) / 2)
    assert comp.n == 300 and comp.low < comp.estimate < comp.high


@pytest.mark.parametrize("seed", range(5))
def test_mcnemar_equals_binomtest_on_discordant_counts(seed):
    rng = np.random.default_rng(seed)
    a = rng.random(150) < 0.4
    b = np.where(rng.random(150) < 0.25, ~a, a)
    n01 = int(np.sum(~a & b))
    n10 = int(np.sum(a & ~b))
    expected = sps.binomtest(n01, n01 + n10, 0.5).pvalue
    assert S.mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-12)
    ids = [f"q{k}" for k in range(150)]
    d = S.accuracy_difference(dict(zip(ids, a.astype(int))), dict(zip(ids, b.astype(int))), n_resamples=199)
    assert d.p == pytest.approx(expected, rel=1e-12) and "McNemar" in d.method
    assert d.estimate == pytest.approx(100 * (n01 - n10) / 150)


def test_mcnemar_no_discordance_is_one_and_rejects_fractions():
    assert S.mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0
    with pytest.raises(PrunelabError, match="0/1"):
        S.mcnemar_exact([0.5, 1], [1, 1])
    with pytest.raises(PrunelabError, match="equal length"):
        S.mcnemar_exact([1, 0], [1])


@pytest.mark.parametrize("seeds", [1, 3])
def test_model_against_itself_is_exactly_null(seeds):
    rng = np.random.default_rng(7)
    runs = [{f"i{k}": int(rng.random() < 0.3) for k in range(80)} for _ in range(seeds)]
    arm = runs[0] if seeds == 1 else runs
    d = S.accuracy_difference(arm, arm)
    assert (d.estimate, d.low, d.high, d.p) == (0.0, 0.0, 0.0, 1.0)
    assert not d.significant and d.markdown() == "+0.0 [+0.0, +0.0]"
    c = S.composite_difference([(arm, arm), (arm, arm)])
    assert (c.estimate, c.low, c.high, c.p) == (0.0, 0.0, 0.0, 1.0)


def test_all_items_flip_one_way_is_degenerate_but_significant():
    a = {f"i{k}": 0 for k in range(30)}
    b = {f"i{k}": 1 for k in range(30)}
    d = S.accuracy_difference(a, b)
    assert (d.estimate, d.low, d.high) == (100.0, 100.0, 100.0)
    assert d.p == pytest.approx(2 * 0.5 ** 30) and d.significant
    # the composite has no zero-variance shortcut for a non-zero constant: scipy's BCa returns NaN on the
    # degenerate bootstrap distribution, and the percentile fallback gives the (degenerate) point interval
    c = S.composite_difference([(a, b), (a, b)], n_resamples=199)
    assert (c.estimate, c.low, c.high) == (100.0, 100.0, 100.0) and "percentile" in c.method


def test_few_discordant_items_still_give_a_finite_interval():
    """One discordant item in 100: a lumpy bootstrap distribution, still a finite CI around the estimate."""
    a = {f"i{k}": int(k < 30) for k in range(100)}
    b = dict(a, i99=1)
    d = S.accuracy_difference(a, b, n_resamples=999)
    assert d.estimate == pytest.approx(1.0)
    assert math.isfinite(d.low) and math.isfinite(d.high) and d.low <= d.estimate <= d.high
    assert d.p == 1.0 and not d.significant


def test_refuses_unpaired_items():
    a = {f"i{k}": 1 for k in range(10)}
    b = {f"i{k}": 1 for k in range(5, 15)}
    with pytest.raises(PrunelabError, match=r"not evaluated on the same items \(5 of 15 shared\)"):
        S.accuracy_difference(a, b)
    with pytest.raises(PrunelabError, match="same items"):
        S.paired_outcomes(a, b)
    with pytest.raises(PrunelabError, match="same items"):
        S.composite_difference([(a, a), (a, b)])
    with pytest.raises(PrunelabError, match="seed runs"):
        S.accuracy_difference([a, b], [a, a])
    with pytest.raises(PrunelabError, match="same windows"):
        S.perplexity_ratio({"w0": (1.0, 2)}, {"w1": (1.0, 2)})


def test_rejects_outcomes_outside_unit_interval():
    with pytest.raises(PrunelabError, match=r"\[0, 1\]"):
        S.accuracy_difference({"a": 100.0}, {"a": 0.0})


def test_unpaired_difference_is_labelled():
    rng = np.random.default_rng(1)
    a = (rng.random(150) < 0.3).astype(int).tolist()
    b = (rng.random(90) < 0.5).astype(int).tolist()
    d = S.unpaired_accuracy_difference(a, b, n_resamples=999)
    assert d.paired is False and d.n == 240 and "unpaired" in d.method
    assert d.estimate == pytest.approx(100 * (np.mean(b) - np.mean(a)))
    assert d.low < d.estimate < d.high and 0 < d.p <= 1
    assert d.markdown().endswith("(unpaired)")


def _windows(rng, n, scale=1.0):
    return {f"w{k}": (float(rng.uniform(300, 400)) * scale, 128) for k in range(n)}


def test_perplexity_ratio_identical_windows_is_one():
    w = _windows(np.random.default_rng(0), 20)
    d = S.perplexity_ratio(w, dict(w))
    assert (d.estimate, d.low, d.high, d.p) == (1.0, 1.0, 1.0, 1.0) and d.unit == "ratio"
    assert d.markdown() == "×1.00 [1.00, 1.00]"


def test_perplexity_ratio_estimate_and_ci():
    rng = np.random.default_rng(2)
    a = _windows(rng, 40)
    b = {k: (nll * 0.97 + float(rng.normal(0, 2)), tok) for k, (nll, tok) in a.items()}
    d = S.perplexity_ratio(a, b, n_resamples=999)
    na, ta = sum(v[0] for v in a.values()), sum(v[1] for v in a.values())
    nb, tb = sum(v[0] for v in b.values()), sum(v[1] for v in b.values())
    ppl_a, ppl_b = math.exp(na / ta), math.exp(nb / tb)
    assert d.estimate == pytest.approx(ppl_b / ppl_a)
    assert d.low < d.estimate < d.high < 1.0 and d.significant
    assert d.markdown().startswith("×0.") and d.markdown().endswith("*")


def test_mean_ci_wilson_for_binary():
    values = {f"i{k}": int(k < 60) for k in range(200)}
    iv = S.mean_ci(values)
    ci = sps.binomtest(60, 200).proportion_ci(method="wilson")
    assert iv.estimate == pytest.approx(30.0)
    assert (iv.low, iv.high) == pytest.approx((100 * ci.low, 100 * ci.high))
    assert iv.markdown() == f"30.0 [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"


def test_markdown_and_dict_formats():
    d = S.Difference(2.14, -1.3, 5.44, 0.21, 300, "test")
    assert d.markdown() == "+2.1 [\u22121.3, +5.4]"
    assert S.Difference(2.14, 0.3, 5.44, 0.01, 300, "test").markdown() == "+2.1 [+0.3, +5.4]*"
    # p unknown: significance from the CI
    assert S.Difference(-3.0, -5.0, -1.0, None, 10, "t").significant
    assert not S.Difference(-3.0, -5.0, 1.0, None, 10, "t").significant
    assert S.Difference(0.93, 0.90, 0.97, None, 10, "t", unit="ratio").markdown() == "×0.93 [0.90, 0.97]*"
    row = d.as_dict()
    assert set(row) == {"estimate", "low", "high", "p", "n", "method", "paired", "unit", "significant"}
    json.dumps(row)  # JSON-serialisable


def test_single_unit_has_no_interval():
    d = S.accuracy_difference({"x": 0}, {"x": 1})
    assert math.isnan(d.low) and math.isnan(d.high) and d.p == 1.0  # McNemar on 1 discordant item
    assert d.markdown() == "+100.0 [n/a]"
    r = S.perplexity_ratio({"w": (10.0, 5)}, {"w": (9.0, 5)})
    assert r.estimate == pytest.approx(math.exp(-0.2)) and math.isnan(r.low) and r.p is None


def test_several_seeds_average_per_item():
    a = [{"x": 0, "y": 1, "z": 0}, {"x": 1, "y": 1, "z": 0}]
    b = [{"x": 1, "y": 1, "z": 1}, {"x": 1, "y": 0, "z": 1}, {"x": 1, "y": 1, "z": 1}]
    d = S.accuracy_difference(a, b, n_resamples=199)
    # per-item means: a = (0.5, 1, 0), b = (1, 2/3, 1) -> mean difference (0.5 − 1/3 + 1) / 3
    assert d.estimate == pytest.approx(100 * (0.5 - 1 / 3 + 1) / 3)
    assert d.n == 3 and "permutation" in d.method and "cluster" in d.method
    assert S.observed_discordance(a, b) == pytest.approx((0.25 + 1 / 9 + 1) / 3)
