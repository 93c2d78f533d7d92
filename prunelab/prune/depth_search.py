"""Search algorithms for ``S* = argmin_{|S|=k} L(D; θ ⊙ m_S)`` (registry :data:`SEARCHES`).

Every search takes an *evaluator* ``ev`` (``ev(removed) -> float``, lower = better, ``ev.n_blocks``;
``ev.block_influence()`` for fast-block-select), the budget ``k``, a ``seed`` and its own options, and
returns the removed blocks (sorted). Searches never touch the model, so they are tested on synthetic
objectives where the optimum is known. Ties are broken by the lexicographically smallest sorted set, so a
search is deterministic given its seed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from prunelab.errors import PrunelabError
from prunelab.registry import Registry

SearchFn = Callable[..., list[int]]
SEARCHES: Registry[SearchFn] = Registry("depth search")

#: Default options of each search (the study's settings); ``search_blocks(..., options=)`` overrides them.
SEARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "one-shot": {},
    "greedy": {},
    "beam": {"beam_width": 5},
    "ga": {"population": 16, "elitism": 0.2, "mutation": 0.15, "generations": 10},
    "bo": {"trials": 200, "n_startup": 10},
    "cbo": {"max_enumerate": 20_000_000},
    "fast-block-select": {},
}


def _key(val: float, s) -> tuple:
    return (val, tuple(sorted(s)))


def evaluate_all(ev, sets: list) -> list[float]:
    """``[ev(s) for s in sets]``, through ``ev.evaluate_many`` when the evaluator has it (the cached
    :class:`~prunelab.prune.block_evaluator.BlockEvaluator` runs independent candidates together)."""
    many = getattr(ev, "evaluate_many", None)
    return list(many(sets)) if many is not None else [ev(s) for s in sets]


def best_candidates(ev, sets: list, n: int) -> list[frozenset[int]]:
    """The ``n`` lowest-value sets of ``sets``, best first, ties broken by the smaller sorted set — through
    ``ev.best_of`` when the evaluator has it (which may skip the full objective for sets that provably lose)."""
    best_of = getattr(ev, "best_of", None)
    if best_of is not None:
        return [frozenset(s) for s, _ in best_of(sets, n)]
    scored = dict(zip((frozenset(s) for s in sets), evaluate_all(ev, sets)))
    return sorted(scored, key=lambda s: _key(scored[s], s))[:n]


def _one_shot_scores(ev, n: int) -> np.ndarray:
    """``L({i})`` for every single block ``i``."""
    return np.array(evaluate_all(ev, [[i] for i in range(n)]), dtype=float)


@SEARCHES.register("one-shot")
def one_shot(ev, k: int, seed: int = 0) -> list[int]:
    """Score each single-block removal ``L({i})``; remove the ``k`` best (lowest)."""
    best = best_candidates(ev, [[i] for i in range(ev.n_blocks)], k)
    return sorted(i for s in best for i in s)


@SEARCHES.register("greedy")
def greedy(ev, k: int, seed: int = 0) -> list[int]:
    """SLEB-style iterative removal: ``S ← S ∪ {argmin_j L(S ∪ {j})}``, re-scoring the rest each step."""
    removed: list[int] = []
    for _ in range(k):
        options = [removed + [j] for j in range(ev.n_blocks) if j not in removed]
        (best,) = best_candidates(ev, options, 1)
        removed = sorted(best)
    return sorted(removed)


@SEARCHES.register("beam")
def beam(ev, k: int, seed: int = 0, beam_width: int = 5) -> list[int]:
    """Beam search: expand each of the ``B`` best partial sets by every remaining block, keep the ``B`` best
    distinct sets of the next size; return the best set of size ``k``."""
    if beam_width < 1:
        raise PrunelabError(f"beam width must be ≥ 1, got {beam_width}")
    beams: list[frozenset[int]] = [frozenset()]
    for _ in range(k):
        expanded = list(dict.fromkeys(b | {j} for b in beams for j in range(ev.n_blocks) if j not in b))
        beams = best_candidates(ev, [sorted(s) for s in expanded], beam_width)
    return sorted(beams[0])


def _prior_weights(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Sampling weights from one-shot scores: ``softmax(−z/T)`` of the standardised ``L({i})``."""
    z = (scores - scores.mean()) / (scores.std() + 1e-12)
    w = np.exp(-(z - z.min()) / temperature)
    return w / w.sum()


def _sample_set(rng: np.random.Generator, n: int, k: int, p: np.ndarray) -> frozenset[int]:
    return frozenset(int(i) for i in rng.choice(n, size=k, replace=False, p=p))


@SEARCHES.register("ga")
def genetic(ev, k: int, seed: int = 0, population: int = 16, elitism: float = 0.2, mutation: float = 0.15,
            generations: int = 10) -> list[int]:
    """Prior-guided genetic algorithm on k-subsets.

    Initial population: the one-shot top-k plus sets sampled with the one-shot prior ``softmax(−z)``.
    Each generation keeps ``round(elitism·P)`` elites; children come from binary-tournament parents by
    *subset crossover* (keep ``A ∩ B``, fill to k from ``A △ B``) and, with probability ``mutation``, a swap of
    one removed block for a kept one (prior-weighted). Fitness = ``L(S)`` (memoised by the evaluator).
    """
    if population < 2 or not 0 <= elitism < 1 or not 0 <= mutation <= 1 or generations < 0:
        raise PrunelabError("ga needs population ≥ 2, 0 ≤ elitism < 1, 0 ≤ mutation ≤ 1, generations ≥ 0")
    n = ev.n_blocks
    rng = np.random.default_rng(seed)
    scores = _one_shot_scores(ev, n)
    prior = _prior_weights(scores)
    pop: list[frozenset[int]] = [frozenset(int(i) for i in np.argsort(scores, kind="stable")[:k])]
    tries = 0
    while len(pop) < population and tries < 100 * population:
        s = _sample_set(rng, n, k, prior)
        tries += 1
        if s not in pop or tries > 50 * population:
            pop.append(s)
    fit = dict(zip(pop, evaluate_all(ev, [sorted(s) for s in pop])))
    n_elite = max(1, int(round(elitism * population)))

    def tournament(ranked):
        a, b = rng.integers(len(ranked), size=2)
        return ranked[min(a, b)]  # ranked best-first: the lower index wins

    for _ in range(generations):
        ranked = sorted(pop, key=lambda s: _key(fit[s], s))
        nxt = ranked[:n_elite]
        while len(nxt) < population:
            pa, pb = tournament(ranked), tournament(ranked)
            child = set(pa & pb)
            pool = sorted(pa ^ pb)
            if pool and len(child) < k:
                child |= {int(i) for i in rng.choice(pool, size=k - len(child), replace=False)}
            if rng.random() < mutation:
                out = int(rng.choice(sorted(child)))
                kept = [i for i in range(n) if i not in child]
                pk = prior[kept] / prior[kept].sum()
                child.discard(out)
                child.add(int(rng.choice(kept, p=pk)))
            nxt.append(frozenset(child))
        new = [c for c in dict.fromkeys(nxt) if c not in fit]  # children depend on the RNG only, so score them together
        fit.update(zip(new, evaluate_all(ev, [sorted(c) for c in new])))
        pop = nxt
    best = min(fit, key=lambda s: _key(fit[s], s))
    return sorted(best)


@SEARCHES.register("bo")
def bayes_opt(ev, k: int, seed: int = 0, trials: int = 200, n_startup: int = 10) -> list[int]:
    """Prior-guided Bayesian optimisation with optuna's multivariate TPE.

    Encoding: one score ``u_i ∈ [0, 1]`` per block, ``S = top-k(u)`` (every trial is a valid k-subset).
    The first ``n_startup`` trials are the initial design: the one-shot top-k and sets sampled from the one-shot
    prior (enqueued as 0/1 score vectors); TPE proposes the rest. Repeated sets cost nothing (memoised).
    """
    import optuna

    if trials < 1 or n_startup < 1:
        raise PrunelabError(f"bo needs trials ≥ 1 and n_startup ≥ 1, got {trials}, {n_startup}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = ev.n_blocks
    rng = np.random.default_rng(seed)
    scores = _one_shot_scores(ev, n)
    prior = _prior_weights(scores)
    init = [frozenset(int(i) for i in np.argsort(scores, kind="stable")[:k])]
    while len(init) < min(n_startup, trials):
        init.append(_sample_set(rng, n, k, prior))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    for s in init:
        study.enqueue_trial({f"u{i}": (1.0 if i in s else 0.0) for i in range(n)})
    best: tuple | None = None
    for _ in range(trials):
        trial = study.ask()
        u = np.array([trial.suggest_float(f"u{i}", 0.0, 1.0) for i in range(n)])
        s = sorted(int(i) for i in np.argsort(-u, kind="stable")[:k])
        val = ev(s)
        study.tell(trial, val)
        if best is None or _key(val, s) < best:
            best = _key(val, s)
    return list(best[1])


def minimise_quadratic(a: np.ndarray, B: np.ndarray, k: int, max_enumerate: int = 20_000_000,
                       seed: int = 0) -> tuple[list[int], float, str]:
    """``argmin_{|S|=k} Σ_{i∈S} a_i + Σ_{i<j∈S} B_ij``.

    Exact by vectorised enumeration when ``C(n, k) ≤ max_enumerate`` (30 blocks, k = 7: 2.0 M sets, ~1 s);
    otherwise best-improvement 1-swap local search from the greedy solution and 20 seeded random starts
    (a heuristic, reported as such). Returns ``(S, Q(S), solver)``.
    """
    n = len(a)
    B = np.triu(B, 1)
    B = B + B.T  # symmetric, zero diagonal: Q(S) = a[S].sum() + B[S][:, S].sum() / 2

    def q(s):
        s = list(s)
        return float(a[s].sum() + B[np.ix_(s, s)].sum() / 2)

    if math.comb(n, k) <= max_enumerate:
        best_val, best = math.inf, None
        combos = itertools.combinations(range(n), k)
        while True:
            chunk = np.fromiter(itertools.chain.from_iterable(itertools.islice(combos, 500_000)), dtype=np.int64)
            if chunk.size == 0:
                break
            c = chunk.reshape(-1, k)
            val = a[c].sum(1)
            for p, r in itertools.combinations(range(k), 2):
                val += B[c[:, p], c[:, r]]
            i = int(np.argmin(val))  # first minimum = lexicographically smallest among ties
            if val[i] < best_val - 1e-12:
                best_val, best = float(val[i]), c[i].tolist()
        return sorted(best), q(best), "exhaustive"
    rng = np.random.default_rng(seed)

    def local(s):
        s = set(s)
        while True:
            cur = q(s)
            moves = [(q((s - {o}) | {i}), o, i) for o in s for i in range(n) if i not in s]
            v, o, i = min(moves)
            if v >= cur - 1e-12:
                return s, cur
            s = (s - {o}) | {i}

    g: set[int] = set()
    for _ in range(k):
        g.add(min((q(g | {j}), j) for j in range(n) if j not in g)[1])
    starts = [g] + [set(rng.choice(n, k, replace=False).tolist()) for _ in range(20)]
    best_s, best_v = min((local(s) for s in starts), key=lambda t: (t[1], sorted(t[0])))
    return sorted(best_s), best_v, "swap-local-search"


@SEARCHES.register("cbo")
def cbo(ev, k: int, seed: int = 0, max_enumerate: int = 20_000_000) -> list[int]:
    """Constrained binary optimisation (Jansen et al., 2026): fit ``Δ(S) ≈ Σ a_i x_i + Σ_{i<j} b_ij x_i x_j``
    exactly through every single and pairwise removal (``a_i = Δ({i})``, ``b_ij = Δ({i,j}) − a_i − a_j``;
    ``n + n(n−1)/2`` evaluations) and minimise it subject to ``|S| = k`` (:func:`minimise_quadratic`)."""
    n = ev.n_blocks
    base = ev([])
    a = np.array(evaluate_all(ev, [[i] for i in range(n)])) - base
    B = np.zeros((n, n))
    if k >= 2:
        pairs = list(itertools.combinations(range(n), 2))
        for (i, j), v in zip(pairs, evaluate_all(ev, [[i, j] for i, j in pairs])):
            B[i, j] = v - base - a[i] - a[j]
    s, _, solver = minimise_quadratic(a, B, k, max_enumerate=max_enumerate, seed=seed)
    ev.notes["cbo_solver"] = solver
    return s


@SEARCHES.register("fast-block-select")
def fast_block_select(ev, k: int, seed: int = 0) -> list[int]:
    """One forward pass; ShortGPT block influence ``BI_i = 1 − E[cos(x_i, x_{i+1})]``; remove the ``k`` least
    influential blocks."""
    bi = np.array(ev.block_influence())
    return sorted(int(i) for i in np.argsort(bi, kind="stable")[:k])
