"""The runs one driver still has to do, handed out one leased run at a time (several drivers may share a store).

Used by both the local runner (:mod:`prunelab.experiments.runner`) and Ray dispatch
(:mod:`prunelab.experiments.ray_dispatch`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from prunelab.errors import PrunelabError
from prunelab.experiments.spec import ExperimentSpec, Run
from prunelab.runs.result import RunMeta
from prunelab.runs.store import Heartbeat, Store, new_owner

#: seconds a run's lease lasts without a heartbeat (``$PRUNELAB_LEASE_TTL`` overrides; short in tests)
LEASE_TTL_ENV, DEFAULT_LEASE_TTL = "PRUNELAB_LEASE_TTL", 60.0


class ClaimQueue:
    """This invocation's pending runs, handed out one leased run at a time (:meth:`Store.claim_next`).

    Several drivers may share one store (two ``prunelab run --db SAME``, local or ``--ray``): each run is
    leased before it executes, the lease is renewed by a heartbeat thread while this process lives, and a
    run leased by another live process waits here until that process stores it (then it only joins this
    experiment) or its lease lapses (then it is leased here). Use as a context manager: leaving it stops the
    heartbeat and drops every lease still held, so an interrupted run is free at once for the next driver.
    """

    def __init__(self, store: Store, spec: ExperimentSpec, runs: list[Run], ttl: float,
                 meta: Callable[[ExperimentSpec, Run], RunMeta]) -> None:
        self.store, self.spec, self.waiting, self.ttl, self.meta = store, spec, list(runs), ttl, meta
        self.owner, self.since = new_owner(), time.time()
        self.poll = min(1.0, ttl / 4)
        self.by_others = 0
        self.failed_elsewhere: list[str] = []
        self.on_others: Callable[[int], None] = lambda n: None
        self._heartbeat = Heartbeat(store.path, self.owner, ttl)

    def __enter__(self) -> "ClaimQueue":
        self._heartbeat.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._heartbeat.__exit__(*exc)
        self.store.release_claims(self.owner)

    @property
    def done(self) -> bool:
        return not self.waiting

    def take(self) -> Run | None:
        """Lease the next free run, or None when every remaining one is leased elsewhere (poll again later)."""
        if not self.waiting:
            return None
        res = self.store.claim_next([r.hash for r in self.waiting], self.owner, self.ttl, self.since)
        others = [r for r in self.waiting if r.hash in res.stored]
        if others:
            self.store.add_memberships(self.spec.name, [(r.hash, r.index, self.meta(self.spec, r)) for r in others])
            self.by_others += len(others)
            self.on_others(len(others))
        self.failed_elsewhere += [f"{r.label}: failed in another process sharing the store (see its failures table)"
                                  for r in self.waiting if r.hash in res.failed]
        claimed = next((r for r in self.waiting if r.hash == res.claimed), None)
        gone = res.stored | res.failed | {res.claimed}
        self.waiting = [r for r in self.waiting if r.hash not in gone]
        return claimed

    def release(self, run: Run, failed: bool = False) -> None:
        self.store.release_claim(run.hash, self.owner, failed=failed)

    def iterate(self, on_wait: Callable[[int], None] = lambda n: None) -> Iterator[Run]:
        """Yield leased runs until none is left, sleeping while the rest are leased elsewhere."""
        while not self.done:
            run = self.take()
            if run is None:
                if self.waiting:
                    on_wait(len(self.waiting))
                    time.sleep(self.poll)
                continue
            yield run


def lease_ttl_from_env() -> float:
    raw = os.environ.get(LEASE_TTL_ENV)
    if raw is None:
        return DEFAULT_LEASE_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not ttl > 0:
        raise PrunelabError(f"${LEASE_TTL_ENV}={raw!r} must be a positive number of seconds")
    return ttl
