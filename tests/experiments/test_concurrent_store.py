"""Several drivers on one store: run leases (claims + heartbeat + expiry), schema versioning, and two real
`prunelab run --db SAME` subprocesses executing every run once in total."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.experiments.old_store import OLD_SCHEMA as OLD_STORE_SCHEMA
from prunelab.errors import PrunelabError
from prunelab.experiments import Store, expand, load_spec, run_experiment
from prunelab.runs.store import SCHEMA_VERSION, Heartbeat
from tests.experiments.counting_stages import executions
from tests.experiments.test_store_runner import BASELINE, rec

ROOT = Path(__file__).resolve().parents[2]
COUNTING = "tests.experiments.counting_stages:stages"

SPEC = {"name": "conc", "models": ["m"], "pruning": {"kind": "width", "ratio": 0.4},
        "mechanisms": ["ketamine", "ssri", "neurosteroid"], "isodose": "ketamine:1",
        "training": {"samples": 8, "seq_len": 32}, "seeds": [0, 1, 2], "eval": {"limit": 5}}


def _insert_claim(db, h, owner, host, pid, expires_in, state="running"):
    con = sqlite3.connect(db)
    now = time.time()
    con.execute("INSERT OR REPLACE INTO claims (hash, owner, state, expires_at, updated_at, host, pid)"
                " VALUES (?,?,?,?,?,?,?)", (h, owner, state, now + expires_in, now, host, pid))
    con.commit()
    con.close()


# ------------------------------------------------------------------------------------------- leases
def test_claims_hand_out_each_run_once_and_skip_stored(tmp_path):
    db = tmp_path / "r.sqlite"
    with Store(db) as s:
        s.add_run(rec("a"))
        first = s.claim_next(["a", "b", "c"], "A", ttl=30, failed_since=0)
        assert (first.claimed, first.stored) == ("b", {"a"})
        second = s.claim_next(["a", "b", "c"], "B", ttl=30, failed_since=0)
        assert (second.claimed, second.busy) == ("c", {"b"})  # b is A's (this live process)
        assert s.claim_next(["b", "c"], "C", ttl=30, failed_since=0).claimed is None
        s.add_run(rec("b"))  # storing a run ends its lease
        assert [c[0] for c in s.claims()] == ["c"]
        s.release_claims("B")
        assert s.claim_next(["c"], "C", ttl=30, failed_since=0).claimed == "c"


def test_lease_of_another_host_expires_after_its_ttl_unless_renewed(tmp_path):
    db = tmp_path / "r.sqlite"
    with Store(db) as s:
        _insert_claim(db, "x", "far:1:abc", "another-host", 1, expires_in=0.4)
        assert s.claim_next(["x"], "me", ttl=30, failed_since=0).busy == {"x"}
        time.sleep(0.5)
        assert s.claim_next(["x"], "me", ttl=30, failed_since=0).claimed == "x"  # expired: taken over


def test_heartbeat_keeps_a_lease_alive_and_expiry_follows_its_stop(tmp_path):
    db = tmp_path / "r.sqlite"
    with Store(db) as s:
        assert s.claim_next(["x"], "holder", ttl=0.6, failed_since=0).claimed == "x"
        with Heartbeat(db, "holder", ttl=0.6):
            time.sleep(1.5)  # 2.5 TTLs: only the heartbeat's renewals keep it
            assert s.claim_next(["x"], "other", ttl=30, failed_since=0).busy == {"x"}
        time.sleep(0.8)
        assert s.claim_next(["x"], "other", ttl=30, failed_since=0).claimed == "x"


def test_lease_of_a_dead_process_on_this_host_is_free_at_once(tmp_path):
    import socket

    db = tmp_path / "r.sqlite"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with Store(db) as s:
        _insert_claim(db, "x", "gone", socket.gethostname(), int(dead.stdout), expires_in=3600)
        _insert_claim(db, "y", "alive", socket.gethostname(), os.getpid(), expires_in=3600)
        res = s.claim_next(["x", "y"], "me", ttl=30, failed_since=0)
        assert (res.claimed, res.busy) == ("x", {"y"})


def test_a_failure_elsewhere_is_reported_in_this_round_and_retried_by_the_next(tmp_path):
    db = tmp_path / "r.sqlite"
    with Store(db) as s:
        assert s.claim_next(["x"], "A", ttl=30, failed_since=0).claimed == "x"
        s.release_claim("x", "A", failed=True)
        started_before = time.time() - 10
        assert s.claim_next(["x"], "B", ttl=30, failed_since=started_before).failed == {"x"}
        assert s.claim_next(["x"], "C", ttl=30, failed_since=time.time() + 1).claimed == "x"


# ------------------------------------------------------------------------------------------- schema
OLD_SCHEMA = OLD_STORE_SCHEMA + f"""
INSERT INTO runs VALUES ('old', 'baseline', 'm', 'none', NULL, 0, '{json.dumps(BASELINE.to_dict())}',
    '{{"eval": {{"scores": {{"x": 1.0}}}}}}', NULL, '{{}}', '{{}}', 1.0, 2.0, 'h');
INSERT INTO memberships VALUES ('e', 'old', 0, '{{}}');
"""


def test_unversioned_store_stays_readable_and_is_upgraded_in_place(tmp_path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(OLD_SCHEMA)
    con.close()
    with Store(db, readonly=True) as s:  # read as it is: no table added, version untouched
        assert [r.hash for r in s.runs("e")] == ["old"] and s.schema_version() == 0
    with Store(db) as s:
        assert s.schema_version() == SCHEMA_VERSION >= 1
        assert s.runs("e")[0].metrics.eval.scores == {"x": 1.0}
        assert s.claim_next(["new"], "me", ttl=30, failed_since=0).claimed == "new"


def test_store_of_a_newer_schema_is_refused_for_writing_but_readable(tmp_path):
    db = tmp_path / "new.sqlite"
    with Store(db) as s:
        s.add_run(rec("a"))
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(PrunelabError, match="written by a newer prunelab"):
        Store(db)
    with Store(db, readonly=True) as s:
        assert s.stored_hashes() == {"a"}


# ------------------------------------------------------------------------------ two real processes
def _env(tmp_path, **extra):
    return {**os.environ, "PRUNELAB_STAGES": COUNTING, "PRUNELAB_COUNT_LOG": str(tmp_path / "exec.log"),
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def _cmd(spec, db, json_path):
    return [sys.executable, "-c", "from prunelab.cli import main; main()", "run", str(spec), "--db", str(db),
            "--json", str(json_path)]


def _start_gated(tmp_path, spec, db, n=2, **env):
    """Start ``n`` drivers whose first run waits at a gate, so all of them are mid-run at the same moment."""
    gate = tmp_path / "gate"
    env = _env(tmp_path, PRUNELAB_COUNT_GATE=str(gate), **env)
    procs = [subprocess.Popen(_cmd(spec, db, tmp_path / f"s{i}.json"), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    deadline = time.time() + 90
    while len(list(tmp_path.glob("gate.*"))) < n and time.time() < deadline:
        if any(p.poll() is not None for p in procs):  # one died: stop the others (they wait at the gate forever)
            for p in procs:
                if p.poll() is None:
                    p.kill()
            raise AssertionError([p.communicate() for p in procs])
        time.sleep(0.05)
    assert len(list(tmp_path.glob("gate.*"))) == n, "the drivers never reached their first run"
    gate.touch()
    return procs


def test_two_processes_on_one_store_execute_every_run_once(tmp_path, monkeypatch):
    spec = tmp_path / "e.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    db = tmp_path / "r.sqlite"
    expected = {r.hash for r in expand(load_spec(spec))}
    procs = _start_gated(tmp_path, spec, db, PRUNELAB_COUNT_SLEEP="0.3", PRUNELAB_LEASE_TTL="3")
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "locked" not in err.lower()
    summaries = [json.loads((tmp_path / f"s{i}.json").read_text()) for i in range(2)]
    assert sum(s["completed"] for s in summaries) == len(expected)
    assert all(s["completed"] >= 1 and s["completed"] + s["by_others"] == len(expected) for s in summaries)
    ran = executions(tmp_path / "exec.log")
    assert len(ran) == len(set(ran)) == len(expected)  # every run executed exactly once, in total
    with Store(db) as s:
        assert sorted(r[0] for r in s.conn.execute("SELECT hash FROM runs")) == sorted(expected)
        assert s.claims() == [] and s.integrity_ok()

    # the report equals a serial run's (same stages, one process)
    from prunelab.report import build_report

    monkeypatch.setenv("PRUNELAB_STAGES", COUNTING)
    monkeypatch.delenv("PRUNELAB_COUNT_LOG", raising=False)
    serial = tmp_path / "serial" / "r.sqlite"  # same file name: the report's title names it
    assert run_experiment(spec, serial).completed == len(expected)
    a = build_report(db, tmp_path / "rep-a", figures=False)
    b = build_report(serial, tmp_path / "rep-b", figures=False)
    assert a.tables == b.tables and a.files == b.files and len(a.tables) >= 2
    for name in a.files:  # every table file; tables.md up to its appendix of per-run wall times
        text_a, text_b = ((tmp_path / d / name).read_text().split("## Runs")[0] for d in ("rep-a", "rep-b"))
        assert text_a == text_b, name


def test_a_killed_process_s_lease_is_taken_over_by_the_other(tmp_path):
    spec = tmp_path / "e.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "seeds": [0, 1]}))
    db = tmp_path / "r.sqlite"
    expected = {r.hash for r in expand(load_spec(spec))}
    victim, survivor = _start_gated(tmp_path, spec, db, PRUNELAB_COUNT_SLEEP="0.3", PRUNELAB_LEASE_TTL="3")
    victim.send_signal(signal.SIGKILL)  # inside its first run, holding that run's lease
    victim.communicate()
    out, err = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, err
    summary = json.loads((tmp_path / "s1.json").read_text())
    assert summary["completed"] + summary["by_others"] == len(expected)
    ran = executions(tmp_path / "exec.log")
    assert len(ran) == len(set(ran)) == len(expected)
    with Store(db) as s:
        assert sorted(r[0] for r in s.conn.execute("SELECT hash FROM runs")) == sorted(expected)
        assert s.claims() == []
