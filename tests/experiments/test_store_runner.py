import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from prunelab.errors import PrunelabError
from prunelab.experiments import Store, expand, load_spec, run_experiment
from prunelab.experiments.spec import parse_spec
from prunelab.runs.result import EvalScores, RunMeta, RunMetrics, RunRecord, RunResult
from tests.experiments.store_probe import stored_run_count

ROOT = Path(__file__).resolve().parents[2]

SPEC = {
    "name": "fake",
    "note": "fake stages",
    "models": ["m"],
    "pruning": {"kind": "width", "ratio": 0.4},
    "mechanisms": ["ketamine", "ssri", "neurosteroid"],
    "isodose": "ketamine:1",
    "training": {"samples": 8, "seq_len": 32},
    "seeds": [0, 1, 2],
    "stress": {"relapse": {"fraction": 0.3}, "chronic": {"cycles": 2, "step": 0.1, "maintenance_epochs": 1}},
    "eval": {"limit": 5},
}


def write_spec(tmp_path, **kw):
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump({**SPEC, **kw}))
    return p


#: the config of a stored baseline run (``model: m``, no pruning, seed 0)
BASELINE = expand(parse_spec({"name": "r", "models": ["m"]}))[0].config


def rec(h="h1", metrics: RunMetrics | None = None, outcomes=None) -> RunRecord:
    result = RunResult(metrics=metrics or RunMetrics(eval=EvalScores(scores={"composite": 1.0})), flops=None,
                       timings={"evaluate": 0.1}, versions={"python": "3"}, started_at=1.0, finished_at=2.0,
                       outcomes=outcomes or {})
    return RunRecord(h, BASELINE, result)


def test_store_roundtrip_and_duplicates(tmp_path):
    db = tmp_path / "r.sqlite"
    with Store(db) as s:
        assert s.add_run(rec("a"), "exp1", 0, RunMeta(note="n")) is True
        other = RunMetrics(eval=EvalScores(scores={"composite": 2.0}))
        assert s.add_run(rec("a", other), "exp2", 3) is False  # stored once, membership added
        assert s.count() == 1 and s.stored_hashes() == {"a"}
        runs = s.runs()
        assert runs[0].metrics == RunMetrics(eval=EvalScores(scores={"composite": 1.0}))
        assert runs[0].config == BASELINE and runs[0].meta.note == "n"
        assert runs[0].experiments == ("exp1", "exp2")
        assert [r.hash for r in s.runs("exp2")] == ["a"]
        with pytest.raises(PrunelabError, match="no runs of experiment 'nope'"):
            s.runs("nope")
        assert s.integrity_ok()
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_store_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(PrunelabError, match="does not exist"):
        Store(tmp_path / "none.sqlite", readonly=True)
    bad = tmp_path / "bad.sqlite"
    bad.write_text("this is not sqlite " * 100)
    with pytest.raises(PrunelabError, match="not a prunelab results database"):
        Store(bad)


def test_run_resume_skips_stored(tmp_path, fake_stages):
    spec = write_spec(tmp_path)
    db = tmp_path / "r.sqlite"
    runs = expand(load_spec(spec))
    assert len(runs) == 3 * (1 + 3)
    first = run_experiment(spec, db, max_runs=5)
    assert (first.completed, first.already_stored) == (5, 0)
    second = run_experiment(spec, db)
    assert (second.completed, second.already_stored, second.failed) == (7, 5, 0)
    third = run_experiment(spec, db)
    assert (third.completed, third.already_stored) == (0, 12)
    with Store(db) as s:
        stored = s.runs()
    assert sorted(r.hash for r in stored) == sorted(r.hash for r in runs)
    treated = [r for r in stored if r.kind == "treated"]
    t = next(r for r in treated if r.mechanism == "ssri")
    # isodose: ssri gets round(P_ketamine / P_ssri) epochs (fake P = r·100·len(targets))
    assert t.metrics.training.epochs == round(64 * 7 / (8 * 2))
    assert t.flops == pytest.approx(6 * 8 * 100 * 2 * 32 * 8 * t.metrics.training.epochs)
    assert len(t.metrics.chronic.cycles) == 3 and t.metrics.relapse is not None
    assert set(t.result.versions) >= {"python", "torch"} and t.result.timings["recover"] >= 0


def test_failed_run_is_recorded_and_others_continue(tmp_path, fake_stages, monkeypatch):
    from tests.experiments.fake_stages import FakeStages

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(FakeStages, "relapse", broken)
    db = tmp_path / "r.sqlite"
    summary = run_experiment(write_spec(tmp_path, seeds=[0]), db)
    assert summary.failed == 3 and summary.completed == 1  # only the baseline has no relapse
    with Store(db) as s:
        assert s.count() == 1
        assert s.conn.execute("SELECT COUNT(*) FROM failures").fetchone()[0] == 3




def test_sigkill_mid_run_then_resume_loses_nothing(tmp_path):
    """Kill a real `prunelab run` subprocess with SIGKILL mid-experiment, twice; rerun; every run once."""
    spec = write_spec(tmp_path)
    db = tmp_path / "r.sqlite"
    env = {**os.environ, "PRUNELAB_STAGES": "tests.experiments.fake_stages:stages", "PRUNELAB_FAKE_SLEEP": "0.25",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-c", "from prunelab.cli import main; main()", "run", str(spec), "--db", str(db)]
    expected = {r.hash for r in expand(load_spec(spec))}
    seen_counts = []
    for target in (3, 7):
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while stored_run_count(db) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.1)  # land the kill inside a run (fake recovery sleeps 0.25 s)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        seen_counts.append(stored_run_count(db))
        assert 0 < seen_counts[-1] < len(expected)
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with Store(db) as s:
        assert s.integrity_ok()
        hashes = [row[0] for row in s.conn.execute("SELECT hash FROM runs")]
    assert sorted(hashes) == sorted(expected)  # every run exactly once
    assert f"{len(expected) - seen_counts[-1]} run(s) completed, {seen_counts[-1]} already stored" in done.stdout
