"""The results store: one SQLite file, one row per *finished* run, keyed by the run's config hash.

A row holds the run's :class:`~prunelab.runs.config.RunConfig` (``config_json``, the hashed mapping) and its
typed :class:`~prunelab.runs.result.RunResult` (``metrics_json`` = ``RunMetrics`` JSON, in the version given by
the row's ``result_version``); :meth:`Store.runs` reads both back as :class:`~prunelab.runs.result.RunRecord`.

Durability (why a SIGKILL never corrupts it or loses a finished run): SQLite in WAL mode with
``synchronous=FULL``; each finished run is written in a single transaction (``BEGIN IMMEDIATE`` … ``COMMIT``),
so a run is either fully present or absent — together with its per-item outcomes (the ``outcomes``
table, one row per run × phase × task × item). Unfinished runs are never written; resume = skip every hash
already present. stdlib ``sqlite3`` is the library here (no ORM needed for a few tables).

Concurrency: several drivers may write one store at once. Each leases a run in the ``claims`` table before
executing it (:meth:`Store.claim_next`, renewed by :class:`Heartbeat`; expired leases are taken over), writers
use ``BEGIN IMMEDIATE`` with a 60 s busy timeout plus a retry on BUSY/LOCKED, and the schema is versioned with
``PRAGMA user_version`` (:data:`SCHEMA_VERSION`; older stores are upgraded in place by adding tables and a
column, and rows they already hold are read in their own ``result_version``).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.evaluate.registry import ItemOutcome
from prunelab.runs.config import RunConfig
from prunelab.runs.result import (EVAL_PHASE, LEGACY_RESULT_VERSION, RELAPSE_PHASE, RESULT_VERSION, RunMeta,
                                  RunMetrics, RunOutcomes, RunOutcomesById, RunRecord, RunResult)


def _check_phase(phase: str) -> None:
    head, _, tail = phase.partition(":")
    if phase in (EVAL_PHASE, RELAPSE_PHASE) or (head == "chronic" and tail.isdigit()):
        return
    raise PrunelabError(f"unknown outcomes phase '{phase}'; known: eval, relapse, chronic:<cycle>")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    pruning TEXT NOT NULL,
    mechanism TEXT,
    seed INTEGER NOT NULL,
    config_json TEXT NOT NULL,
    metrics_json TEXT NOT NULL,
    flops REAL,
    timings_json TEXT NOT NULL,
    versions_json TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    host TEXT,
    result_version INTEGER NOT NULL DEFAULT 2
);
CREATE TABLE IF NOT EXISTS memberships (
    experiment TEXT NOT NULL,
    hash TEXT NOT NULL,
    position INTEGER NOT NULL,
    meta_json TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (experiment, hash)
);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL,
    label TEXT,
    error TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    hash TEXT NOT NULL,
    phase TEXT NOT NULL,
    task TEXT NOT NULL,
    item_id TEXT NOT NULL,
    outcome_json TEXT NOT NULL,
    PRIMARY KEY (hash, phase, task, item_id)
);
"""

#: Leases on runs being executed, so several drivers on one store execute each run once (see :meth:`Store.claim_next`).
CLAIMS_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    hash TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    expires_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL
);
"""

#: ``PRAGMA user_version`` this prunelab writes. 0 = a store written before versioning (same tables minus
#: ``claims``); 1 = + ``claims``; 2 = + ``runs.result_version`` (the metrics JSON of each row: 1 = the untyped
#: dicts of before, 2 = :class:`~prunelab.runs.result.RunMetrics`). Upgrades only ever add tables and columns
#: (an upgraded store's old rows keep ``result_version`` 1 and are read as such), so an older store is upgraded
#: in place on the first writable open; a newer store is refused for writing.
SCHEMA_VERSION = 2

CLAIM_RUNNING, CLAIM_FAILED = "running", "failed"


def new_owner() -> str:
    """A claim owner id unique to one driver invocation: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def _retry_locked(fn, deadline_s: float = 120.0):
    """Call ``fn`` until it does not fail with SQLITE_BUSY/LOCKED (on top of the connection's busy timeout):
    e.g. switching a fresh file to WAL can return BUSY at once when two processes create the store together."""
    deadline, delay = time.monotonic() + deadline_s, 0.05
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(1.0, delay * 2)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass
class ClaimResult:
    """What :meth:`Store.claim_next` found among the hashes it was given."""

    claimed: str | None  # the hash now leased to the caller, if any was free
    stored: set[str] = field(default_factory=set)  # already finished (by anyone)
    failed: set[str] = field(default_factory=set)  # another owner's attempt failed since ``failed_since``
    busy: set[str] = field(default_factory=set)  # leased by another live owner


class Store:
    """Open (or create) a results database. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise PrunelabError(f"results database {self.path} does not exist")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per finished run;
            # timeout=60 is SQLite's busy_timeout: a writer waits for another process's transaction
            self.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
            _retry_locked(lambda: self.conn.execute("PRAGMA journal_mode=WAL"))
            self.conn.execute("PRAGMA synchronous=FULL")
            if not readonly:
                _retry_locked(self._migrate)
            else:
                self.conn.execute("SELECT 1 FROM runs LIMIT 1")
        except sqlite3.DatabaseError as exc:
            raise PrunelabError(f"{self.path} is not a prunelab results database ({exc})") from None

    def _migrate(self) -> None:
        """Create missing tables and stamp ``SCHEMA_VERSION`` in one transaction (every DDL is IF NOT EXISTS)."""
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self.conn.close()
            raise PrunelabError(f"{self.path} was written by a newer prunelab (store schema {version}, this one "
                                f"writes {SCHEMA_VERSION}): upgrade prunelab to add runs to it")
        try:
            self.conn.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}{CLAIMS_SCHEMA}")
            if not self._has_result_version():
                # rows already present were written as untyped dicts: they keep version 1 and are read as such
                self.conn.execute(f"ALTER TABLE runs ADD COLUMN result_version INTEGER NOT NULL "
                                  f"DEFAULT {LEGACY_RESULT_VERSION}")
            # execute, not executescript: executescript would commit the open transaction before running
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def _has_result_version(self) -> bool:
        return any(row[1] == "result_version" for row in self.conn.execute("PRAGMA table_info(runs)"))

    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def _begin(self, cur: sqlite3.Cursor) -> None:
        _retry_locked(lambda: cur.execute("BEGIN IMMEDIATE"))

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------------------------- writing
    def add_run(self, rec: RunRecord, experiment: str | None = None, position: int = 0,
                meta: RunMeta | None = None) -> bool:
        """Insert a finished run, its per-item outcomes (``rec.outcomes``) and its experiment membership in
        one transaction, so a run and its outcomes are present together or not at all. The result is written
        as :class:`~prunelab.runs.result.RunMetrics` JSON (``result_version`` :data:`RESULT_VERSION`).

        Returns False (and changes nothing but the membership) when the hash is already stored, so two
        drivers racing on one database still leave each run present exactly once.
        """
        for phase in rec.outcomes:
            _check_phase(phase)
        cur = self.conn.cursor()
        self._begin(cur)
        try:
            cur.execute(
                "INSERT OR IGNORE INTO runs (hash, kind, model, pruning, mechanism, seed, config_json, metrics_json,"
                " flops, timings_json, versions_json, started_at, finished_at, host, result_version)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (rec.hash, rec.kind, rec.model, rec.pruning, rec.mechanism, rec.seed,
                 json.dumps(rec.config.to_dict(), sort_keys=True), rec.metrics.model_dump_json(),
                 rec.flops, json.dumps(rec.result.timings), json.dumps(rec.result.versions),
                 rec.started_at, rec.finished_at, rec.host or socket.gethostname(), RESULT_VERSION))
            inserted = cur.rowcount == 1
            if inserted:
                self._add_outcomes(cur, rec.hash, rec.outcomes)
            if experiment is not None:
                self._member(cur, experiment, rec.hash, position, meta)
            cur.execute("DELETE FROM claims WHERE hash=?", (rec.hash,))  # finished: its lease is moot
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return inserted

    def add_memberships(self, experiment: str, items: Iterable[tuple[str, int, RunMeta]]) -> None:
        """Record that already-stored runs belong to ``experiment`` too (one transaction)."""
        cur = self.conn.cursor()
        self._begin(cur)
        try:
            for h, pos, meta in items:
                self._member(cur, experiment, h, pos, meta)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    @staticmethod
    def _add_outcomes(cur: sqlite3.Cursor, h: str, outcomes: RunOutcomes) -> None:
        for phase, tasks in outcomes.items():
            for task, items in tasks.items():
                try:
                    cur.executemany(
                        "INSERT INTO outcomes (hash, phase, task, item_id, outcome_json) VALUES (?,?,?,?,?)",
                        ((h, phase, task, o.item_id, json.dumps(o.to_dict(), sort_keys=True)) for o in items))
                except sqlite3.IntegrityError:
                    ids = [o.item_id for o in items]
                    dup = next((i for i in ids if ids.count(i) > 1), "?")
                    raise PrunelabError(f"run {h}: task '{task}' ({phase}) lists item '{dup}' twice") from None

    @staticmethod
    def _member(cur: sqlite3.Cursor, experiment: str, h: str, position: int, meta: RunMeta | None) -> None:
        cur.execute("INSERT OR REPLACE INTO memberships (experiment, hash, position, meta_json) VALUES (?,?,?,?)",
                    (experiment, h, position, json.dumps((meta or RunMeta()).to_dict(), sort_keys=True)))

    def add_failure(self, h: str, label: str, error: str) -> None:
        self.conn.execute("INSERT INTO failures (hash, label, error, at) VALUES (?,?,?,?)", (h, label, error, time.time()))

    # ------------------------------------------------------------------------------------- claims
    # Why leases rather than locks held by a connection: a Ray driver, a local driver and a driver on another
    # machine sharing the file all need the same rule, and a SIGKILLed process must not block a run for ever.
    # A lease is a row (hash, owner, expires_at) renewed by the owner's heartbeat (:class:`Heartbeat`); it is
    # free once expired, or at once when its owner ran on this host and that process is gone.
    def claim_next(self, hashes: list[str], owner: str, ttl: float, failed_since: float) -> ClaimResult:
        """Lease the first of ``hashes`` (in order) that is neither stored nor leased by another live owner.

        One ``BEGIN IMMEDIATE`` transaction, so two processes never lease the same run. A run whose attempt
        by another owner failed at or after ``failed_since`` (the caller's start) is reported in ``failed``
        and not leased: that failure belongs to this round; a later invocation retries it.
        """
        cur = self.conn.cursor()
        self._begin(cur)
        try:
            res = ClaimResult(None)
            if hashes:
                marks = ",".join("?" * len(hashes))
                res.stored = {r[0] for r in cur.execute(f"SELECT hash FROM runs WHERE hash IN ({marks})", hashes)}
                rows = {r[0]: r[1:] for r in cur.execute(
                    f"SELECT hash, owner, state, expires_at, updated_at, host, pid FROM claims WHERE hash IN ({marks})",
                    hashes)}
            else:
                rows = {}
            now, host = time.time(), socket.gethostname()
            for h in hashes:
                if h in res.stored:
                    continue
                row = rows.get(h)
                if row is not None and row[0] != owner:
                    other, state, expires_at, updated_at, other_host, pid = row
                    if state == CLAIM_FAILED and updated_at >= failed_since:
                        res.failed.add(h)
                        continue
                    if (state == CLAIM_RUNNING and expires_at > now
                            and not (other_host == host and not _pid_alive(pid))):
                        res.busy.add(h)
                        continue
                if res.claimed is None:
                    cur.execute("INSERT OR REPLACE INTO claims (hash, owner, state, expires_at, updated_at, host, pid)"
                                " VALUES (?,?,?,?,?,?,?)", (h, owner, CLAIM_RUNNING, now + ttl, now, host, os.getpid()))
                    res.claimed = h
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return res

    def renew_claims(self, owner: str, ttl: float) -> int:
        """Extend every running lease of ``owner`` to now + ``ttl``; returns how many it holds."""
        now = time.time()
        cur = _retry_locked(lambda: self.conn.execute(
            "UPDATE claims SET expires_at=?, updated_at=? WHERE owner=? AND state=?",
            (now + ttl, now, owner, CLAIM_RUNNING)))
        return cur.rowcount

    def release_claim(self, h: str, owner: str, failed: bool = False) -> None:
        """Give up ``owner``'s lease on ``h``; ``failed=True`` leaves a 'failed' mark (see :meth:`claim_next`)."""
        if failed:
            now = time.time()
            _retry_locked(lambda: self.conn.execute(
                "UPDATE claims SET state=?, expires_at=?, updated_at=? WHERE hash=? AND owner=?",
                (CLAIM_FAILED, now, now, h, owner)))
        else:
            _retry_locked(lambda: self.conn.execute("DELETE FROM claims WHERE hash=? AND owner=?", (h, owner)))

    def release_claims(self, owner: str) -> None:
        """Drop every running lease of ``owner`` (its 'failed' marks stay)."""
        _retry_locked(lambda: self.conn.execute("DELETE FROM claims WHERE owner=? AND state=?", (owner, CLAIM_RUNNING)))

    def claims(self) -> list[tuple[str, str, str, float]]:
        """``(hash, owner, state, expires_at)`` of every lease row (for diagnostics and tests)."""
        return list(self.conn.execute("SELECT hash, owner, state, expires_at FROM claims ORDER BY hash"))

    # ------------------------------------------------------------------------------------- reading
    def stored_hashes(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT hash FROM runs")}

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def experiments(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT experiment FROM memberships ORDER BY experiment")]

    def runs(self, experiment: str | None = None) -> list[RunRecord]:
        """Finished runs (optionally of one experiment), in expansion order."""
        members: dict[str, list[tuple[str, int, dict]]] = {}
        for exp, h, pos, meta in self.conn.execute("SELECT experiment, hash, position, meta_json FROM memberships"):
            members.setdefault(h, []).append((exp, pos, json.loads(meta)))
        if experiment is not None and experiment not in {e for v in members.values() for e, _, _ in v}:
            raise PrunelabError(f"no runs of experiment '{experiment}' in {self.path}; have: {', '.join(self.experiments()) or 'none'}")
        out = []
        for row in self._rows():
            mem = members.get(row[0], [])
            if experiment is not None:
                mem = [m for m in mem if m[0] == experiment]
                if not mem:
                    continue
            try:
                config = RunConfig.from_dict(json.loads(row[6]))
            except PrunelabError as exc:
                raise PrunelabError(f"{self.path}: run {row[0]}: {exc}") from None
            result = RunResult(metrics=_read_metrics(json.loads(row[7]), row[14]), flops=row[8],
                               timings=json.loads(row[9]), versions=json.loads(row[10]), started_at=row[11],
                               finished_at=row[12])
            out.append(RunRecord(hash=row[0], config=config, result=result, host=row[13],
                                 experiments=tuple(sorted({m[0] for m in mem})),
                                 position=min((m[1] for m in mem), default=0),
                                 meta=RunMeta.from_dict(mem[0][2] if mem else None)))
        out.sort(key=lambda r: (r.position, r.finished_at))
        return out

    def _rows(self) -> Iterator[tuple]:
        # a store opened read-only is never upgraded: before schema 2 every row is result_version 1
        version = "result_version" if self._has_result_version() else str(LEGACY_RESULT_VERSION)
        yield from self.conn.execute(
            "SELECT hash, kind, model, pruning, mechanism, seed, config_json, metrics_json, flops, timings_json,"
            f" versions_json, started_at, finished_at, host, {version} FROM runs")

    # ------------------------------------------------------------------------------------- outcomes
    def _has_outcomes_table(self) -> bool:
        row = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='outcomes'").fetchone()
        return row is not None

    def outcomes(self, h: str, phase: str, task: str) -> dict[str, ItemOutcome]:
        """Per-item outcomes of one evaluation: ``{item_id: ItemOutcome}`` in the order the items were scored.

        ``h`` is the run hash (``RunRecord.hash``); ``phase`` is ``"eval"`` (the run's model: treated or
        baseline), ``"relapse"`` (after acute relapse) or ``"chronic:<k>"`` (chronic cycle k, 0 = before any
        stress); ``task`` an eval task name (``composite`` has none: use its parts ``arc_easy_gen`` and
        ``lambada_gen``). What each outcome holds per task is documented on
        :class:`prunelab.evaluate.registry.ItemOutcome`; e.g. ``100·mean(o.correct)`` is the task's stored
        accuracy and, for perplexity, ``exp(Σ o.nll / Σ o.tokens)`` its perplexity.

        Returns ``{}`` when nothing is stored — a store written before outcomes existed (no table or no
        rows), a run evaluated through custom stages that keep none, or an unknown hash/phase/task. Callers
        (reports) then print "no per-item data, no CI" instead of an interval.
        """
        if not self._has_outcomes_table():
            return {}
        rows = self.conn.execute(
            "SELECT item_id, outcome_json FROM outcomes WHERE hash=? AND phase=? AND task=? ORDER BY rowid",
            (h, phase, task))
        return {item: ItemOutcome.from_dict(json.loads(js)) for item, js in rows}

    def all_outcomes(self, hashes: Iterable[str] | None = None) -> dict[str, RunOutcomesById]:
        """Bulk reader for reports: ``{hash: {phase: {task: {item_id: ItemOutcome}}}}`` for ``hashes``
        (default: every stored run), in one query. Runs without outcomes (old stores, custom stages) are
        absent from the result; an old store without the table gives ``{}``. See :meth:`outcomes` for the
        meaning of phases and outcomes.
        """
        if not self._has_outcomes_table():
            return {}
        sql = "SELECT hash, phase, task, item_id, outcome_json FROM outcomes"
        if hashes is None:
            queries = [(sql + " ORDER BY rowid", ())]
        else:  # one primary-key range scan per run rather than reading every stored outcome
            queries = [(sql + " WHERE hash=? ORDER BY rowid", (h,)) for h in dict.fromkeys(hashes)]
        out: dict[str, RunOutcomesById] = {}
        for query, args in queries:
            for h, phase, task, item, js in self.conn.execute(query, args):
                by_task = out.setdefault(h, {}).setdefault(phase, {}).setdefault(task, {})
                by_task[item] = ItemOutcome.from_dict(json.loads(js))
        return out

    def integrity_ok(self) -> bool:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


class Heartbeat:
    """Renew ``owner``'s leases every ``ttl / 3`` seconds from a daemon thread with its own connection
    (sqlite3 connections are per thread), so a lease outlives any single run however long it takes."""

    def __init__(self, path: str | Path, owner: str, ttl: float) -> None:
        self.path, self.owner, self.ttl = Path(path), owner, ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="prunelab-lease-heartbeat", daemon=True)

    def _beat(self) -> None:
        conn = Store(self.path)
        try:
            while not self._stop.wait(self.ttl / 3):
                try:
                    conn.renew_claims(self.owner, self.ttl)
                except sqlite3.Error:  # a missed beat is harmless while the next lands before expiry
                    pass
        finally:
            conn.close()

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _read_metrics(data: dict[str, Any], version: int) -> RunMetrics:
    """A row's metrics JSON in its own ``result_version`` (see :data:`SCHEMA_VERSION`)."""
    if version == LEGACY_RESULT_VERSION:
        return RunMetrics.from_legacy(data)
    if version == RESULT_VERSION:
        return RunMetrics.model_validate(data)
    raise PrunelabError(f"a run's result_version {version} is newer than this prunelab reads ({RESULT_VERSION})")


def package_versions() -> dict[str, str]:
    """Versions that affect results (python, prunelab, torch, transformers, peft, lm-eval, ...)."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("prunelab", "torch", "transformers", "peft", "accelerate", "lm_eval", "datasets", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
