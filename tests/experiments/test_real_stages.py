"""The real stage wiring (prune → isodose recover → evaluate → relapse → chronic → store → report) on a tiny
random Llama saved to disk, so the whole pipeline runs with the library's own functions in seconds."""

import pytest
import yaml

from prunelab.experiments import Store, run_experiment
from prunelab.report import build_report
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture
def tiny_dir(tmp_path):
    from prunelab.models import save

    out = tmp_path / "tiny-llama"
    save(tiny_model("llama", max_position_embeddings=256), tiny_tokenizer(), out)
    return out


@pytest.mark.slow  # ~45 s of CPU: Trainer set-up per tune, data loading, generation
def test_real_pipeline_on_tiny_model(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.delenv("PRUNELAB_STAGES", raising=False)
    spec = tmp_path / "e.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "tiny", "note": "tiny random model",
        "models": [{"source": str(tiny_dir), "name": "tiny"}],
        "pruning": {"kind": "width", "criterion": "maw", "ratio": 0.5},
        # inline mechanisms sized for the tiny model (ketamine's r=64 exceeds its widths: ~30 ssri epochs)
        "mechanisms": [{"name": "big", "r": 4, "alpha": 8, "targets": ["q", "v", "gate"], "dropout": 0.0, "lr": 1e-3},
                       {"name": "small", "base": "ssri", "r": 2, "alpha": 4}],
        "isodose": "big:1",
        "training": {"samples": 4, "held_out": 2, "seq_len": 32, "batch_size": 2, "grad_accum": 1},
        "seeds": [0],
        "stress": {"relapse": {"fraction": 0.3}, "chronic": {"cycles": 1, "step": 0.1, "maintenance_epochs": 1}},
        "eval": {"tasks": ["arc_easy_gen", "lambada_gen"], "limit": 2, "batch_size": 2},
    }))
    db = tmp_path / "r.sqlite"
    summary = run_experiment(spec, db, fail_fast=True)
    assert (summary.completed, summary.failed) == (3, 0)
    with Store(db) as s:
        runs = {r.mechanism or "base": r for r in s.runs()}
    base, ket, ssri = runs["base"], runs["big"], runs["small"]
    assert base.metrics.model.layer_widths == (24,) * 4  # GLU 48 → 50% pruned
    assert set(base.metrics.eval.scores) == {"arc_easy_gen", "lambada_gen", "composite"}
    assert base.metrics.eval.n == {"arc_easy_gen": 2, "lambada_gen": 2}
    # isodose: ssri trains round(P_ket / P_ssri) epochs; both runs' 6·P·L·N·E within half an ssri epoch
    kp, sp = ket.metrics.training.trainable_params, ssri.metrics.training.trainable_params
    assert ssri.metrics.training.epochs == max(1, round(kp / sp)) == 3
    ssri_mechanism = ssri.config.treatment.mechanism
    assert ssri_mechanism.targets == ("q", "v") and ssri_mechanism.lr == 1e-6
    assert abs(ssri.flops - ket.flops) <= 0.5 * 6 * sp * 32 * 4
    assert ket.metrics.training.recovery.honest_flops > ket.flops
    assert "composite" in ket.metrics.relapse.eval.scores
    assert [c.cycle for c in ket.metrics.chronic.cycles] == [0, 1]
    # per-item outcomes of every evaluation are stored with the run, and reproduce its stored scores
    with Store(db) as s:
        got = s.all_outcomes([ket.hash])[ket.hash]
    assert set(got) == {"eval", "relapse", "chronic:0", "chronic:1"}
    stored = {"eval": ket.metrics.eval.scores, "relapse": ket.metrics.relapse.eval.scores,
              **{f"chronic:{c.cycle}": c.scores for c in ket.metrics.chronic.cycles}}
    for phase, tasks in got.items():
        assert "composite" not in tasks and tasks
        for task, items in tasks.items():
            assert len(items) == 2
            assert 100.0 * sum(o.correct for o in items.values()) / 2 == pytest.approx(stored[phase][task])
    # pruned once, cached by hash in the work dir
    assert len(list((tmp_path / "r.sqlite.work" / "pruned").iterdir())) == 1
    rep = build_report(db, tmp_path / "rep")
    assert any(t.startswith("Table 4") for t in rep.tables)


def test_real_depth_pruning_stage(tmp_path, tiny_dir):
    from prunelab.experiments.stages import real_prepare
    from prunelab.runs.config import DepthPruning, ModelSpec

    pruning = DepthPruning.model_validate({"name": "d", "k": 1, "search": "one-shot", "objective": "perplexity",
                                           "calibration": {"source": "wikitext2", "samples": 2, "seq_len": 16}})
    model = ModelSpec(source=str(tiny_dir), name="tiny")
    prep = real_prepare(model, pruning, 0, tmp_path / "cache")
    assert prep.info.num_layers == 3 and len(prep.info.removed_layers) == 1
    assert prep.info.original.num_layers == 4
    again = real_prepare(model, pruning, 0, tmp_path / "cache")
    assert again.info == prep.info and "prune" not in again.timings  # reloaded from the cache


def test_chronic_cycle_zero_reuses_the_eval_phase_and_changes_nothing(tiny_dir, monkeypatch):
    """Cycle 0 is the treated model the eval phase just scored: with ``before`` it is not evaluated again, and
    every cycle's outcomes equal those of a chronic run that evaluates cycle 0 itself."""
    import copy

    from prunelab.experiments import stages
    from prunelab.models import load
    from prunelab.recover.mechanisms import Mechanism
    from prunelab.runs.config import ChronicSpec, EvalSpec, TrainingSpec

    lm = load(str(tiny_dir))
    eval_spec = EvalSpec(tasks=["arc_easy"], limit=4, batch_size=2)
    chronic_spec = ChronicSpec(cycles=1, step=0.1, maintenance_epochs=1, tasks=["arc_easy"])
    training = TrainingSpec(samples=2, held_out=2, seq_len=32, batch_size=2, grad_accum=1)
    mechanism = Mechanism("tiny", r=2, alpha=4, targets=("q", "v"), dropout=0.0, lr=1e-3)
    before = stages.real_evaluate(lm.model, lm.tokenizer, eval_spec, eval_spec.tasks)
    calls = []
    real = stages.real_evaluate
    monkeypatch.setattr(stages, "real_evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))

    fresh = stages.real_chronic(copy.deepcopy(lm.model), lm.tokenizer, mechanism, chronic_spec, training,
                                eval_spec, 0)
    fresh_calls = len(calls)
    reused = stages.real_chronic(copy.deepcopy(lm.model), lm.tokenizer, mechanism, chronic_spec, training,
                                 eval_spec, 0, before=before)
    assert (fresh_calls, len(calls) - fresh_calls) == (2, 1)  # cycles + 1 evaluations, then one fewer

    def correct(result):
        return {c: {t: [(o.item_id, o.correct) for o in items] for t, items in per_task.items()}
                for c, per_task in result.outcomes.items()}

    assert correct(reused) == correct(fresh)
    assert correct(reused)[0] == {"arc_easy": [(o.item_id, o.correct) for o in before.outcomes["arc_easy"]]}
    assert [c.scores for c in reused.cycles] == [c.scores for c in fresh.cycles]
