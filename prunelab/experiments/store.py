"""The results store: one SQLite file, one row per *finished* run, keyed by the run's config hash.

Durability (why a SIGKILL never corrupts it or loses a finished run): SQLite in WAL mode with
``synchronous=FULL``; each finished run is written in a single transaction (``BEGIN IMMEDIATE`` … ``COMMIT``),
so a run is either fully present or absent. Unfinished runs are never written; resume = skip every hash
already present. stdlib ``sqlite3`` is the library here (no ORM needed for three tables).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError

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
    host TEXT
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
"""


@dataclass
class RunRecord:
    """A finished run as stored."""

    hash: str
    kind: str
    model: str
    pruning: str
    mechanism: str | None
    seed: int
    config: dict[str, Any]
    metrics: dict[str, Any]
    flops: float | None
    timings: dict[str, float]
    versions: dict[str, str]
    started_at: float
    finished_at: float
    host: str | None = None
    experiments: tuple[str, ...] = ()
    position: int = 0
    meta: dict[str, Any] | None = None


class Store:
    """Open (or create) a results database. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise PrunelabError(f"results database {self.path} does not exist")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per finished run
            self.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            if not readonly:
                self.conn.executescript(SCHEMA)
            else:
                self.conn.execute("SELECT 1 FROM runs LIMIT 1")
        except sqlite3.DatabaseError as exc:
            raise PrunelabError(f"{self.path} is not a prunelab results database ({exc})") from None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------------------------- writing
    def add_run(self, rec: RunRecord, experiment: str | None = None, position: int = 0,
                meta: dict[str, Any] | None = None) -> bool:
        """Insert a finished run (and its experiment membership) in one transaction.

        Returns False (and changes nothing but the membership) when the hash is already stored, so two
        drivers racing on one database still leave each run present exactly once.
        """
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute(
                "INSERT OR IGNORE INTO runs (hash, kind, model, pruning, mechanism, seed, config_json, metrics_json,"
                " flops, timings_json, versions_json, started_at, finished_at, host)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (rec.hash, rec.kind, rec.model, rec.pruning, rec.mechanism, rec.seed,
                 json.dumps(rec.config, sort_keys=True), json.dumps(rec.metrics, sort_keys=True),
                 rec.flops, json.dumps(rec.timings), json.dumps(rec.versions),
                 rec.started_at, rec.finished_at, rec.host or socket.gethostname()))
            inserted = cur.rowcount == 1
            if experiment is not None:
                self._member(cur, experiment, rec.hash, position, meta)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return inserted

    def add_memberships(self, experiment: str, items: Iterable[tuple[str, int, dict[str, Any]]]) -> None:
        """Record that already-stored runs belong to ``experiment`` too (one transaction)."""
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for h, pos, meta in items:
                self._member(cur, experiment, h, pos, meta)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    @staticmethod
    def _member(cur: sqlite3.Cursor, experiment: str, h: str, position: int, meta: dict[str, Any] | None) -> None:
        cur.execute("INSERT OR REPLACE INTO memberships (experiment, hash, position, meta_json) VALUES (?,?,?,?)",
                    (experiment, h, position, json.dumps(meta or {}, sort_keys=True)))

    def add_failure(self, h: str, label: str, error: str) -> None:
        self.conn.execute("INSERT INTO failures (hash, label, error, at) VALUES (?,?,?,?)", (h, label, error, time.time()))

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
            rec = RunRecord(
                hash=row[0], kind=row[1], model=row[2], pruning=row[3], mechanism=row[4], seed=row[5],
                config=json.loads(row[6]), metrics=json.loads(row[7]), flops=row[8], timings=json.loads(row[9]),
                versions=json.loads(row[10]), started_at=row[11], finished_at=row[12], host=row[13],
                experiments=tuple(sorted({m[0] for m in mem})),
                position=min((m[1] for m in mem), default=0),
                meta=mem[0][2] if mem else {})
            out.append(rec)
        out.sort(key=lambda r: (r.position, r.finished_at))
        return out

    def _rows(self) -> Iterator[tuple]:
        yield from self.conn.execute(
            "SELECT hash, kind, model, pruning, mechanism, seed, config_json, metrics_json, flops, timings_json,"
            " versions_json, started_at, finished_at, host FROM runs")

    def integrity_ok(self) -> bool:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


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
