"""Per-item outcomes in the results store: round trip across reopen, a run and its outcomes atomic, stores
written before the table existed still open and report, and the runner storing eval / relapse / chronic
phases (fake stages)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from tests.experiments.old_store import OLD_RUN_COLUMNS, OLD_SCHEMA, legacy_metrics
from prunelab.errors import PrunelabError
from prunelab.evaluate.registry import ItemOutcome
from prunelab.experiments import Store, run_experiment
from prunelab.runs.result import EvalScores, RunMetrics, RunRecord, chronic_phase
from tests.experiments.test_store_runner import SPEC, rec


def _rec(h: str, outcomes=None) -> RunRecord:
    return rec(h, RunMetrics(eval=EvalScores(scores={"arc_easy": 50.0}, n={"arc_easy": 2})), outcomes)


OUTCOMES = {
    "eval": {
        "arc_easy": [ItemOutcome("q2", correct=1.0, prediction="0", logliks=(-1.25, -3.5)),
                     ItemOutcome("q1", correct=0.0, prediction="1", logliks=(-2.0, -0.1, -7.75))],
        "wikitext2": [ItemOutcome("wikitext2-w0", nll=1234.5678901234, tokens=511),
                      ItemOutcome("wikitext2-w1", nll=99.0, tokens=40)],
        "ifeval": [ItemOutcome("1001", correct=0.0, verdicts=(True, False), verdicts_loose=(True, True))],
    },
    "relapse": {"arc_easy": [ItemOutcome("q2", correct=0.0, prediction="1"), ItemOutcome("q1", correct=0.0)]},
    "chronic:3": {"truthfulqa_mc2": [ItemOutcome("t1", correct=0.123456789, logliks=(-1.0, -2.0))]},
}


def test_outcomes_round_trip_across_reopen(tmp_path):
    db = tmp_path / "r.sqlite"
    with Store(db) as s:
        assert s.add_run(_rec("a", OUTCOMES), "exp", 0) is True
        assert s.add_run(_rec("b"), "exp", 1) is True  # a run without outcomes (custom stages)
    with Store(db, readonly=True) as s:
        for phase, tasks in OUTCOMES.items():
            for task, items in tasks.items():
                got = s.outcomes("a", phase, task)
                assert list(got) == [o.item_id for o in items]  # the order the items were scored in
                assert list(got.values()) == items  # floats, tuples, None fields: identical
        assert s.outcomes("b", "eval", "arc_easy") == {} and s.outcomes("a", "eval", "nope") == {}
        bulk = s.all_outcomes()
        assert set(bulk) == {"a"} and set(bulk["a"]) == set(OUTCOMES)
        assert bulk["a"]["chronic:3"]["truthfulqa_mc2"]["t1"].correct == 0.123456789
        assert s.all_outcomes(["b"]) == {} and set(s.all_outcomes(["a", "b", "a"])) == {"a"}
        assert s.runs()[0].outcomes == {}  # runs() stays light; outcomes come from the readers
        assert s.integrity_ok()


def test_duplicate_hash_keeps_first_outcomes(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        s.add_run(_rec("a", OUTCOMES))
        other = {"eval": {"arc_easy": [ItemOutcome("zz", correct=1.0)]}}
        assert s.add_run(_rec("a", other)) is False
        assert list(s.outcomes("a", "eval", "arc_easy")) == ["q2", "q1"]


def test_run_and_outcomes_are_atomic(tmp_path):
    """A failure after the run row was inserted (the second outcome row collides) leaves neither."""
    db = tmp_path / "r.sqlite"
    bad = {"eval": {"arc_easy": [ItemOutcome("q1", correct=1.0)]},
           "relapse": {"arc_easy": [ItemOutcome("q1", correct=1.0), ItemOutcome("q2", correct=0.0),
                                    ItemOutcome("q1", correct=0.0)]}}
    with Store(db) as s:
        with pytest.raises(PrunelabError, match="task 'arc_easy' \\(relapse\\) lists item 'q1' twice"):
            s.add_run(_rec("a", bad), "exp", 0)
        assert s.count() == 0 and s.stored_hashes() == set() and s.experiments() == []
        assert s.conn.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == 0
        assert s.add_run(_rec("a", OUTCOMES), "exp", 0) is True  # the store is still usable: rerun succeeds
    with pytest.raises(PrunelabError, match="unknown outcomes phase 'chronic:x'"):
        with Store(db) as s:
            s.add_run(_rec("c", {"chronic:x": {}}))


def test_interrupted_write_leaves_neither(tmp_path, monkeypatch):
    """An exception raised while outcome rows are being written (serialisation fails mid-way) rolls back."""
    db = tmp_path / "r.sqlite"
    calls = {"n": 0}
    real = ItemOutcome.to_dict

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # BaseException, as a Ctrl-C mid-write
        return real(self)

    monkeypatch.setattr(ItemOutcome, "to_dict", flaky)
    with Store(db) as s:
        with pytest.raises(KeyboardInterrupt):
            s.add_run(_rec("a", OUTCOMES), "exp", 0)
    monkeypatch.undo()
    with Store(db) as s:
        assert s.count() == 0 and s.all_outcomes() == {} and s.integrity_ok()


def _old_store(db, tmp_path, fake_stages) -> Path:
    """A store as written before per-item outcomes: the runs of a fake experiment copied into the old schema."""
    spec = tmp_path / "e.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "seeds": [0], "stress": {"relapse": {"fraction": 0.3}}}))
    new = tmp_path / "new.sqlite"
    run_experiment(spec, new)
    with Store(new, readonly=True) as s:
        legacy = {r.hash: json.dumps(legacy_metrics(r.metrics)) for r in s.runs()}
    con = sqlite3.connect(db)
    con.executescript(OLD_SCHEMA)
    con.execute("ATTACH DATABASE ? AS src", (str(new),))
    con.execute(f"INSERT INTO runs SELECT {OLD_RUN_COLUMNS} FROM src.runs")
    con.executemany("UPDATE runs SET metrics_json=? WHERE hash=?", [(m, h) for h, m in legacy.items()])
    con.execute("INSERT INTO memberships SELECT * FROM src.memberships")
    con.commit()
    con.close()
    return new


def test_old_store_without_outcomes_opens_and_reports(tmp_path, fake_stages):
    from prunelab.report import build_report

    db = tmp_path / "old.sqlite"
    new = _old_store(db, tmp_path, fake_stages)
    with Store(db, readonly=True) as s:  # readonly: the old file is not modified
        runs = s.runs()
        assert len(runs) == 4
        with Store(new, readonly=True) as fresh:  # the untyped rows read back as the typed results they were
            assert [(r.hash, r.config, r.metrics) for r in runs] == [(r.hash, r.config, r.metrics)
                                                                     for r in fresh.runs()]
        assert s.outcomes(runs[0].hash, "eval", "arc_easy_gen") == {} and s.all_outcomes() == {}
    assert sqlite3.connect(db).execute(
        "SELECT COUNT(*) FROM sqlite_master WHERE name='outcomes'").fetchone()[0] == 0
    rep = build_report(db, tmp_path / "rep")
    assert rep.tables  # Tables 1-3 from the stored scores alone
    with Store(db) as s:  # opened for writing, the table is added and new runs get outcomes
        assert s.all_outcomes() == {}
        s.add_run(_rec("new", OUTCOMES))
        assert len(s.outcomes("new", "eval", "arc_easy")) == 2 and s.count() == 5
        # the old rows keep result_version 1, the new one is written as typed JSON (version 2)
        versions = dict(s.conn.execute("SELECT hash, result_version FROM runs"))
        assert versions.pop("new") == 2 and set(versions.values()) == {1}
        assert [r.metrics for r in s.runs() if r.hash != "new"] == [r.metrics for r in runs]


def test_runner_stores_every_phase(tmp_path, fake_stages):
    spec = tmp_path / "e.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "seeds": [0], "mechanisms": ["ketamine"]}))
    db = tmp_path / "r.sqlite"
    run_experiment(spec, db)
    with Store(db) as s:
        runs = {r.kind: r for r in s.runs()}
        bulk = s.all_outcomes()
        base, treated = runs["baseline"], runs["treated"]
        assert set(bulk[base.hash]) == {"eval"}
        assert set(bulk[treated.hash]) == {"eval", "relapse"} | {chronic_phase(c) for c in range(3)}
        for phase, scores in [("eval", treated.metrics.eval.scores),
                              ("relapse", treated.metrics.relapse.eval.scores),
                              ("chronic:2", treated.metrics.chronic.cycles[2].scores)]:
            for task, items in bulk[treated.hash][phase].items():
                assert len(items) == 5  # eval.limit
                assert 100.0 * sum(o.correct for o in items.values()) / 5 == pytest.approx(scores[task])
        # outcomes stay out of metrics_json
        assert set(type(treated.metrics.eval).model_fields) == {"scores", "n", "protocol"}
        raw = s.conn.execute("SELECT metrics_json FROM runs WHERE hash=?", (treated.hash,)).fetchone()[0]
        assert "item_id" not in raw
