"""The typed run contract: configs keep the hashes results were stored under, typed results survive the store
(and untyped rows of older stores read back as the same typed results), and the stages conform to the protocol."""

from __future__ import annotations

import inspect
import json
import sqlite3

import pytest

from prunelab.evaluate.registry import ItemOutcome
from prunelab.experiments.spec import expand, parse_spec
from prunelab.experiments.stages import LibraryStages, Stages, get_stages
from prunelab.recover.mechanisms import Mechanism
from prunelab.runs.config import RunConfig
from prunelab.runs.result import (ChronicCycle, ChronicResult, EvalScores, PruningInfo, RecoveryInfo, RelapseResult,
                                  RunMeta, RunMetrics, RunRecord, RunResult, TrainingInfo)
from prunelab.runs.store import SCHEMA_VERSION, Store
from tests.experiments.fake_stages import FakeStages
from tests.experiments.old_store import OLD_SCHEMA, legacy_metrics

#: one spec touching every config branch (width + repair, depth, none; inline / based / sweep mechanisms; an
#: honest isodose reference; relapse and chronic stress)
SPEC = {"name": "a", "models": ["a", {"source": "org/b", "name": "b"}],
        "pruning": ["none", {"kind": "width", "ratio": 0.4, "repair": "ls", "ridge": 0.1}, {"kind": "depth", "k": 2},
                    {"kind": "width", "expansion_ratio": 2.0}],
        "mechanisms": ["ketamine", {"name": "mine", "r": 4, "alpha": 8, "targets": ["q"], "dropout": 0.0, "lr": 1e-4},
                       {"name": "k32", "base": "ketamine", "r": 32, "alpha": 64}],
        "rank_sweep": {"ranks": [16, 32]}, "isodose": {"reference": "ketamine:3", "formula": "honest"},
        "seeds": [0, 1], "stress": {"relapse": {"fraction": 0.3}, "chronic": {"cycles": 2, "step": 0.1}}}

#: (label, config hash, prune key) as computed by the untyped configs of before this contract existed: a run
#: must keep its hash, or every stored run of an old store would be executed again
GOLDEN = [
    ("a · depth-greedy-perplexity-k2 · k32 · seed 0", "a96f2c441613064b279c", "7b362a60c1dcb1320520"),
    ("a · depth-greedy-perplexity-k2 · ketamine-r16 · seed 0", "36e1445941fd3baf383a", "7b362a60c1dcb1320520"),
    ("a · depth-greedy-perplexity-k2 · mine · seed 0", "6d16abedc84e992c6017", "7b362a60c1dcb1320520"),
    ("a · none · untreated · seed 0", "ab21477fb632e7d98a12", "df0130554d76b17cf19b"),
    # the two width+ls runs hash anew since repairs weight tokens by default (normalized): their stored fits
    # (uniform, hashes 56ad03cb…/94bdf213…) are a different computation and must not be reused for today's default
    ("a · width-maw-40+ls · ketamine · seed 0", "c011d097e2ee393d5a7a", "fdaf738966e69ba49ad0"),
    ("b · width-maw-x2 · k32 · seed 0", "2802c4f90896b1e323ec", "22960e56b729b76b39c1"),
    ("b · width-maw-40+ls · untreated · seed 0", "023b92c1056ddaf46c6c", "e97fb638583789c0672d"),
]
FIXED = {"name": "b", "models": ["m"], "mechanisms": ["ssri"], "isodose": {"epochs": 2},
         "eval": {"protocol": "raw", "limits": {"arc_easy_gen": 3}}}


def test_typed_configs_keep_the_hashes_of_the_untyped_ones():
    runs = {r.label: r for r in expand(parse_spec(SPEC))}
    for label, digest, key in GOLDEN:
        assert (runs[label].hash, runs[label].prune_key) == (digest, key), label
    fixed = {r.label: r.hash for r in expand(parse_spec(FIXED))}
    assert fixed == {"m · none · untreated · seed 0": "733ae25db8a6bcefa76e",
                     "m · none · ssri · seed 0": "3ddba762360f62acd165"}


def test_repair_stored_before_token_weighting_reads_as_uniform():
    run = next(r for r in expand(parse_spec(SPEC)) if r.label == "b · width-maw-40+ls · untreated · seed 0")
    stored = run.config.to_dict()
    assert stored["pruning"]["token_weights"] == "normalized"
    stored["pruning"].pop("token_weights")  # as written by a prunelab before the weighting existed
    old = RunConfig.from_dict(stored)
    assert old.pruning.token_weights == "uniform" and old.hash != run.hash


def test_config_round_trips_through_its_stored_form():
    for run in expand(parse_spec(SPEC)) + expand(parse_spec(FIXED)):
        stored = json.loads(json.dumps(run.config.to_dict()))
        again = RunConfig.from_dict(stored)
        assert again.to_dict() == stored and again.hash == run.hash and again.prune_key == run.prune_key


def test_stored_config_of_an_older_prunelab_reads():
    config = expand(parse_spec(FIXED))[1].config.to_dict()
    config["eval"].pop("protocol")  # stored before prompt protocols: those runs used raw prompts
    config["pruning"]["retired_option"] = 3  # a key a later prunelab no longer knows
    old = RunConfig.from_dict(config)
    assert old.eval.protocol == "raw" and old.pruning.kind == "none" and old.treatment.dose.epochs == 2


def _result() -> RunResult:
    ketamine = {"arc_easy_gen": 41.0, "lambada_gen": 33.0, "composite": 37.0}
    metrics = RunMetrics(
        model=PruningInfo(params=1000, layer_widths=(6, 5), original={"layer_widths": (10, 10), "params": 2000},
                          pruning="width", report={"criterion": "maw", "kept": [1, 2]}),
        eval=EvalScores(scores=ketamine, n={"arc_easy_gen": 2, "lambada_gen": 2}, protocol={"arc_easy_gen": "raw"}),
        training=TrainingInfo(epochs=3, budget_flops=1e12, exact_epochs=2.6, isodose_formula="honest",
                              trainable_params=1600, padded=False, flops=6e11,
                              recovery=RecoveryInfo(steps=12, tokens=4096, honest_flops=9e12, final_loss=1.5)),
        relapse=RelapseResult(eval=EvalScores(scores={"composite": 30.0}), report={"fraction": 0.3}),
        chronic=ChronicResult(cycles=(ChronicCycle(cycle=0, scores={"arc_easy_gen": 41.0}),
                                      ChronicCycle(cycle=1, scores={"arc_easy_gen": 38.0}, sparsity=0.1, loss=2.0)),
                              step=0.1, maintenance_epochs=1))
    outcomes = {"eval": {"arc_easy_gen": [ItemOutcome("q1", correct=1.0), ItemOutcome("q2", correct=0.0)]}}
    return RunResult(metrics, 6e11, {"recover": 1.5}, {"python": "3"}, 10.0, 20.0, outcomes)


def test_typed_result_round_trips_through_the_store(tmp_path):
    run = expand(parse_spec(FIXED))[1]
    record = RunRecord(run.hash, run.config, _result())
    with Store(tmp_path / "r.sqlite") as store:
        assert store.schema_version() == SCHEMA_VERSION == 2
        store.add_run(record, "b", 1, RunMeta(description="tiny", note="n", models_order=("m",)))
    with Store(tmp_path / "r.sqlite", readonly=True) as store:
        (back,) = store.runs()
        assert back.hash == run.hash and back.config == run.config
        assert back.result.metrics == record.metrics and back.flops == 6e11
        assert back.result.timings == {"recover": 1.5} and (back.started_at, back.finished_at) == (10.0, 20.0)
        assert back.meta == RunMeta(description="tiny", note="n", models_order=("m",)) and back.experiments == ("b",)
        assert (back.kind, back.model, back.pruning, back.mechanism, back.seed) == ("treated", "m", "none", "ssri", 0)
        assert list(store.outcomes(run.hash, "eval", "arc_easy_gen")) == ["q1", "q2"]
        row = store.conn.execute("SELECT kind, model, mechanism, result_version FROM runs").fetchone()
        assert row == ("treated", "m", "ssri", 2)


def test_untyped_row_of_an_old_store_reads_as_the_same_typed_result(tmp_path):
    """A row as written before versioning (old schema, untyped metrics dict) reads back as the typed result."""
    run = expand(parse_spec(FIXED))[1]
    result = _result()
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(OLD_SCHEMA)
    con.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run.hash, "treated", "m", "none", "ssri", 0, json.dumps(run.config.to_dict()),
                 json.dumps(legacy_metrics(result.metrics)), 6e11, "{}", "{}", 1.0, 2.0, "h"))
    con.commit()
    con.close()
    with Store(db, readonly=True) as store:
        assert store.schema_version() == 0
        (old,) = store.runs()
    assert old.metrics == result.metrics and old.config == run.config
    with Store(db) as store:  # upgraded in place: the old row stays version 1 and reads the same
        assert store.schema_version() == SCHEMA_VERSION
        assert store.conn.execute("SELECT result_version FROM runs").fetchone()[0] == 1
        assert store.runs()[0].metrics == result.metrics


@pytest.mark.parametrize("stages", [LibraryStages(), FakeStages()], ids=["library", "fake"])
def test_stages_conform_to_the_protocol(stages):
    assert isinstance(stages, Stages)
    members = [name for name, _ in inspect.getmembers(Stages, inspect.isfunction) if not name.startswith("_")]
    assert len(members) == 11
    for name in members:  # the same named parameters, so a stage is called by the names the protocol gives
        want = list(inspect.signature(getattr(Stages, name)).parameters)[1:]
        got = list(inspect.signature(getattr(stages, name)).parameters)
        assert got == want, name


def test_default_stages_are_the_library_ones(monkeypatch):
    monkeypatch.delenv("PRUNELAB_STAGES", raising=False)
    assert isinstance(get_stages(), LibraryStages)
    assert set(LibraryStages().mechanisms()) >= {"ketamine", "ssri", "neurosteroid"}
    assert all(isinstance(m, Mechanism) for m in LibraryStages().mechanisms().values())
