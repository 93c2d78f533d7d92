"""Execution solves isodose epochs with the spec's formula (one solver: prunelab.recover.isodose) and stores
the formula and both costs; the eval stage receives the spec's protocol and stores the one used."""

from __future__ import annotations


import pytest

from prunelab.errors import PrunelabError
from prunelab.experiments.execute import execute_run, solve_dose
from prunelab.experiments.spec import expand, parse_spec
from prunelab.experiments.stages import real_validate
from prunelab.recover.isodose import honest_flops
from prunelab.runs.config import Dose, EvalSpec
from tests.experiments.fake_stages import FakeStages

F = 1_000_000.0  # fake base forward FLOPs per token


class HonestFakeStages(FakeStages):
    """Fake stages with a fixed ``F`` and epoch token count, recording the protocol each evaluation gets."""

    def __init__(self, seen: list | None = None) -> None:
        self.seen = seen

    def recover(self, model, tokenizer, mechanism, training, epochs, seed):
        model, info = super().recover(model, tokenizer, mechanism, training, epochs, seed)
        tokens = training.samples * training.seq_len * epochs
        honest = honest_flops(F, 100 * mechanism.r * len(mechanism.targets), tokens)
        return model, info.model_copy(update={"honest_flops": honest})

    def evaluate(self, model, tokenizer, eval_spec, tasks):
        if self.seen is not None:
            self.seen.append(eval_spec.protocol)
        return super().evaluate(model, tokenizer, eval_spec, tasks)

    def base_flops_per_token(self, model, seq_len):
        return F

    def epoch_tokens(self, tokenizer, training, seed):
        return 1234


def _runs(formula: str, pad: bool = True, protocol: str = "auto"):
    spec = parse_spec({"name": "t", "models": ["smollm2-135m"], "pruning": "none",
                       "mechanisms": ["ketamine", "ssri", "neurosteroid"],
                       "isodose": {"reference": "ketamine:3", "formula": formula},
                       "training": {"samples": 8, "seq_len": 128, "pad": pad}, "eval": {"protocol": protocol}})
    return {r.config.treatment.mechanism.name if r.config.treatment else "base": r for r in expand(spec)}


@pytest.mark.parametrize("formula", ["study", "honest"])
def test_runner_solves_with_the_spec_formula_and_stores_both_costs(formula):
    seen: list[str] = []
    stages = HonestFakeStages(seen)
    runs = _runs(formula)
    config = runs["ssri"].config
    prepared = stages.prepare(config.model, config.pruning, 0, None)
    p = {m: stages.trainable_params(None, runs[m].config.treatment.mechanism) for m in ("ketamine", "ssri", "neurosteroid")}
    t = 8 * 128  # padded: tokens per epoch
    for mech in p:
        result = execute_run(runs[mech].config, stages, prepared)
        tr = result.metrics.training
        if formula == "study":  # round(3·P_ket / P)
            want = round(3 * p["ketamine"] / p[mech])
            assert tr.budget_flops == 6 * p["ketamine"] * t * 3
        else:  # round(3·(2F + 6·P_ket) / (2F + 6P))
            want = round(3 * (2 * F + 6 * p["ketamine"]) / (2 * F + 6 * p[mech]))
            assert tr.budget_flops == t * (2 * F + 6 * p["ketamine"]) * 3
        assert tr.epochs == want and tr.isodose_formula == formula
        assert tr.flops == result.flops == 6 * p[mech] * t * want  # the study's cost, always
        assert tr.recovery.honest_flops == t * want * (2 * F + 6 * p[mech])  # the honest cost, always
        assert tr.exact_epochs == pytest.approx(tr.budget_flops / (tr.flops / want if formula == "study"
                                                                    else t * (2 * F + 6 * p[mech])))
    assert set(seen) == {"auto"}  # the eval stage gets the spec's protocol
    # the reference keeps its epochs under either formula; the formulas disagree about ssri (fake P: 1600 vs 44800)
    ketamine = runs["ketamine"].config.treatment
    assert solve_dose(None, None, stages, ketamine.dose, ketamine.training, 0, p["ketamine"]).epochs == 3


def test_honest_without_padding_uses_the_real_epoch_tokens():
    stages = HonestFakeStages()
    treatment = _runs("honest", pad=False)["ssri"].config.treatment
    dose = solve_dose(None, None, stages, treatment.dose, treatment.training, 0, 1600)
    assert dose.budget_flops == 1234 * (2 * F + 6 * 44_800) * 3  # fake epoch_tokens = 1234


def test_fixed_epochs_and_old_configs():
    stages = HonestFakeStages()
    treatment = _runs("study")["ssri"].config.treatment
    fixed = solve_dose(None, None, stages, Dose(epochs=4), treatment.training, 0, 1600)
    assert (fixed.epochs, fixed.budget_flops, fixed.exact_epochs, fixed.isodose_formula) == (4, None, None, None)
    assert fixed.flops == 6 * 1600 * 128 * 8 * 4
    # stored before the formula existed: the study's
    old = Dose.from_dict({"reference": treatment.dose.to_dict()["reference"]})
    assert old.formula is None
    assert solve_dose(None, None, stages, old, treatment.training, 0, 1600).isodose_formula == "study"


def test_real_evaluate_passes_the_protocol_and_stores_the_one_used(monkeypatch):
    import prunelab.evaluate as ev_mod
    from prunelab.evaluate import EvalReport, TaskResult
    from prunelab.experiments.stages import real_evaluate

    got = {}

    def fake_evaluate(model, tok, tasks, limit=None, seed=0, batch_size=8, protocol="auto"):
        got["protocol"] = protocol
        rep = EvalReport(protocol="chat")
        for t in tasks:
            rep.results[t] = TaskResult(t, {"acc": 50.0}, "acc", 2, ["a", "b"], 0.0, {"protocol": "chat"})
        return rep

    monkeypatch.setattr(ev_mod, "evaluate", fake_evaluate)
    res = real_evaluate(None, None, EvalSpec(tasks=["arc_easy_gen", "lambada_gen"], protocol="auto"),
                        ["arc_easy_gen", "lambada_gen"])
    assert got["protocol"] == "auto"
    assert res.summary().protocol == {"arc_easy_gen": "chat", "lambada_gen": "chat"}
    assert res.scores["composite"] == 50.0  # the stage adds the eval config's composite (prunelab.scores)
    real_evaluate(None, None, EvalSpec(tasks=["arc_easy_gen"], protocol="raw"), ["arc_easy_gen"])
    assert got["protocol"] == "raw"


def test_validate_refuses_chat_for_a_model_without_template(tmp_path):
    from tests.tiny import save_tiny

    path = save_tiny(tmp_path)  # the tiny tokenizer has no chat template
    spec = parse_spec({"name": "t", "models": [{"source": str(path), "name": "tiny"}], "pruning": "none",
                       "eval": {"tasks": ["composite"], "protocol": "chat"}})
    with pytest.raises(PrunelabError, match=r"^eval\.protocol: model 'tiny': protocol 'chat' needs a chat template"):
        real_validate(spec)
    real_validate(parse_spec({"name": "t", "models": [{"source": str(path), "name": "tiny"}], "pruning": "none",
                              "eval": {"tasks": ["composite"], "protocol": "auto"}}))
    real_validate(parse_spec({"name": "t", "models": [{"source": str(path), "name": "tiny"}], "pruning": "none",
                              "eval": {"tasks": ["arc_easy"], "protocol": "chat"}}))  # no protocol task
