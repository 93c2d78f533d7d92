"""prunelab.stats power: Connor (1987) paired MDE / sample size, binomial bound, composite, unpaired."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from prunelab import stats as S
from prunelab.errors import PrunelabError


def _connor_n(delta, psi, alpha=0.05, power=0.8):
    za, zb = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(power)
    return (za * math.sqrt(psi) + zb * math.sqrt(psi - delta ** 2)) ** 2 / delta ** 2


@pytest.mark.parametrize("n", [20, 100, 200, 1000, 5000])
@pytest.mark.parametrize("acc, disc", [(0.3, None), (0.3, 0.2), (0.8, 0.05), (0.5, None)])
def test_mde_n_needed_round_trip(n, acc, disc):
    mde = S.mde_paired(n, acc, disc)
    if math.isinf(mde):
        return
    assert abs(S.n_needed(mde, acc, disc) - n) <= 1


def test_n_needed_matches_connor_formula():
    # hand value: δ = 0.05, ψ = 0.2: [1.95996·√0.2 + 0.84162·√(0.2 − 0.0025)]² / 0.0025
    expected = (1.959964 * math.sqrt(0.2) + 0.841621 * math.sqrt(0.1975)) ** 2 / 0.0025
    assert S.n_needed(5, 0.3, 0.2) == math.ceil(expected)
    assert S.n_needed(5, 0.3) == math.ceil(_connor_n(0.05, 2 * 0.3 * 0.7))  # binomial bound ψ = 2·acc·(1−acc)


def test_mde_shrinks_with_n_and_discordance():
    assert S.mde_paired(800, 0.3) < S.mde_paired(200, 0.3)
    assert S.mde_paired(200, 0.3, 0.1) < S.mde_paired(200, 0.3, 0.3)
    # large n: MDE ≈ (z_a + z_b)·√(ψ/n)
    assert S.mde_paired(100_000, 0.3, 0.2) == pytest.approx(100 * 2.80158 * math.sqrt(0.2 / 100_000), rel=1e-3)


def test_mde_has_nominal_power_by_simulation():
    """At the MDE, McNemar's exact test rejects in ≈ 80 % of simulated studies (normal approx., so loosely)."""
    n, psi = 200, 0.2
    delta = S.mde_paired(n, 0.3, psi) / 100
    p01, p10 = (psi + delta) / 2, (psi - delta) / 2
    rng = np.random.default_rng(0)
    counts = rng.multinomial(n, [p01, p10, 1 - psi], size=2000)
    rejects = np.mean([sps.binomtest(int(c[0]), int(c[0] + c[1])).pvalue < 0.05 for c in counts])
    assert 0.72 <= rejects <= 0.86, rejects


def test_composite_single_part_equals_paired_and_two_parts_are_smaller():
    assert S.mde_composite([(200, 0.3, 0.2)]) == pytest.approx(S.mde_paired(200, 0.3, 0.2))
    two = S.mde_composite([(200, 0.27), (100, 0.17)])
    assert two < S.mde_paired(100, 0.17)  # averaging in a second task's items helps ...
    assert two > S.mde_paired(300, 0.22) * 0.9  # ... but not like pooling 300 items of one task
    assert S.critical_difference([(200, 0.3)]) == pytest.approx(100 * 1.959964 * math.sqrt(0.42 / 200), rel=1e-6)
    assert S.critical_difference([(200, 0.3)]) < S.mde_paired(200, 0.3)


def test_undetectable_is_infinite():
    assert math.isinf(S.mde_paired(3, 0.5, 0.05))


def test_unpaired_round_trip_and_close_to_independent_paired_bound():
    mde = S.mde_unpaired(200, 0.3)
    assert abs(S.n_needed_unpaired(mde, 0.3) - 200) <= 1
    # pairing with independent errors gains (almost) nothing: same MDE within a few %
    assert mde == pytest.approx(S.mde_paired(200, 0.3), rel=0.05)


@pytest.mark.parametrize("call, message", [
    (lambda: S.mde_paired(0, 0.3), "positive whole number"),
    (lambda: S.mde_paired(200, 1.0), "strictly between 0 and 1"),
    (lambda: S.mde_paired(200, 30), "fraction"),
    (lambda: S.mde_paired(200, 0.3, 0.0), "discordance"),
    (lambda: S.mde_paired(200, 0.3, 1.5), "discordance"),
    (lambda: S.mde_paired(200, 0.3, alpha=0), "alpha"),
    (lambda: S.n_needed(0, 0.3), "effect"),
    (lambda: S.n_needed(30, 0.3, 0.2), "discordant"),
    (lambda: S.mde_composite([]), "at least one"),
])
def test_bad_power_input(call, message):
    with pytest.raises(PrunelabError, match=message):
        call()


def test_composite_mde_has_nominal_power_by_simulation():
    """Two tasks (200 and 100 items) both shifted by the composite MDE: a z-test on the composite difference
    (variance from the observed discordant counts, as McNemar's) rejects in ≈ 80 % of 4000 simulated studies."""
    parts = [(200, 0.27, 0.40), (100, 0.17, 0.28)]
    delta = S.mde_composite(parts) / 100
    rng = np.random.default_rng(0)
    reps = 4000
    diff, var = np.zeros(reps), np.zeros(reps)
    for n, _, psi in parts:
        counts = rng.multinomial(n, [(psi + delta) / 2, (psi - delta) / 2, 1 - psi], size=reps)
        diff += (counts[:, 0] - counts[:, 1]) / n / len(parts)
        var += (counts[:, 0] + counts[:, 1]) / n ** 2 / len(parts) ** 2
    power = np.mean(np.abs(diff) / np.sqrt(var) > sps.norm.ppf(0.975))
    assert 0.76 <= power <= 0.84, power
    # and an effect at half the MDE is detected far less often
    assert S.mde_composite(parts) / 2 < S.critical_difference(parts)
