"""The runner solves isodose epochs with the spec's formula (one solver: prunelab.recover.isodose) and stores
the formula and both costs; the eval stage receives the spec's protocol and stores the one used."""

from __future__ import annotations

import copy

import pytest

from prunelab.errors import PrunelabError
from prunelab.experiments.runner import execute_run, solve_dose
from prunelab.experiments.spec import expand, parse_spec
from prunelab.experiments.stages import Prepared, Stages, add_composite, real_validate
from prunelab.recover.isodose import honest_flops
from tests.experiments import fake_stages as fs

F = 1_000_000.0  # fake base forward FLOPs per token


def _stages(seen: list | None = None) -> Stages:
    base = fs.stages()

    def recover(model, tok, mech, training, epochs, seed):
        model, info = base.recover(model, tok, mech, training, epochs, seed)
        tokens = training["samples"] * training["seq_len"] * epochs
        return model, {**info, "honest_flops": honest_flops(F, 100 * mech["r"] * len(mech["targets"]), tokens)}

    def evaluate(model, tok, ev, tasks):
        if seen is not None:
            seen.append(ev["protocol"])
        return base.evaluate(model, tok, ev, tasks)

    return Stages(prepare=base.prepare, clone=copy.deepcopy, trainable_params=base.trainable_params,
                  recover=recover, evaluate=evaluate, relapse=base.relapse, chronic=base.chronic,
                  mechanisms=base.mechanisms, base_flops_per_token=lambda model, seq_len: F,
                  epoch_tokens=lambda tok, training, seed: 1234)


def _runs(formula: str, pad: bool = True, protocol: str = "auto"):
    spec = parse_spec({"name": "t", "models": ["smollm2-135m"], "pruning": "none",
                       "mechanisms": ["ketamine", "ssri", "neurosteroid"],
                       "isodose": {"reference": "ketamine:3", "formula": formula},
                       "training": {"samples": 8, "seq_len": 128, "pad": pad}, "eval": {"protocol": protocol}})
    return {r.config.get("mechanism", {}).get("name", "base"): r for r in expand(spec)}


@pytest.mark.parametrize("formula", ["study", "honest"])
def test_runner_solves_with_the_spec_formula_and_stores_both_costs(formula):
    seen: list[str] = []
    stages = _stages(seen)
    runs = _runs(formula)
    prepared = stages.prepare(runs["ssri"].config["model"], runs["ssri"].config["pruning"], 0, None)
    p = {m: stages.trainable_params(None, runs[m].config["mechanism"]) for m in ("ketamine", "ssri", "neurosteroid")}
    t = 8 * 128  # padded: tokens per epoch
    for mech in p:
        metrics, flops, _ = execute_run(runs[mech].config, stages, prepared)
        tr = metrics["training"]
        if formula == "study":  # round(3·P_ket / P)
            want = round(3 * p["ketamine"] / p[mech])
            assert tr["budget_flops"] == 6 * p["ketamine"] * t * 3
        else:  # round(3·(2F + 6·P_ket) / (2F + 6P))
            want = round(3 * (2 * F + 6 * p["ketamine"]) / (2 * F + 6 * p[mech]))
            assert tr["budget_flops"] == t * (2 * F + 6 * p["ketamine"]) * 3
        assert tr["epochs"] == want and tr["isodose_formula"] == formula
        assert tr["flops"] == flops == 6 * p[mech] * t * want  # the study's cost, always
        assert tr["honest_flops"] == t * want * (2 * F + 6 * p[mech])  # the honest cost, always
        assert tr["exact_epochs"] == pytest.approx(tr["budget_flops"] / (tr["flops"] / want if formula == "study"
                                                                          else t * (2 * F + 6 * p[mech])))
    assert set(seen) == {"auto"}  # the eval stage gets the spec's protocol
    # the reference keeps its epochs under either formula; the formulas disagree about ssri (fake P: 1600 vs 44800)
    assert solve_dose(None, None, stages, runs["ketamine"].config["dose"],
                      runs["ketamine"].config["training"], 0, p["ketamine"])["epochs"] == 3


def test_honest_without_padding_uses_the_real_epoch_tokens():
    stages = _stages()
    run = _runs("honest", pad=False)["ssri"]
    cfg = run.config
    dose = solve_dose(None, None, stages, cfg["dose"], cfg["training"], 0, 1600)
    assert dose["budget_flops"] == 1234 * (2 * F + 6 * 44_800) * 3  # fake epoch_tokens = 1234


def test_fixed_epochs_and_old_configs():
    stages = _stages()
    run = _runs("study")["ssri"]
    cfg = run.config
    fixed = solve_dose(None, None, stages, {"epochs": 4}, cfg["training"], 0, 1600)
    assert fixed == {"epochs": 4, "budget_flops": None, "exact_epochs": None, "isodose_formula": None}
    old = {"reference": cfg["dose"]["reference"]}  # stored before the formula existed: the study's
    assert solve_dose(None, None, stages, old, cfg["training"], 0, 1600)["isodose_formula"] == "study"


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
    res = real_evaluate(None, None, {"tasks": ["arc_easy_gen", "lambada_gen"], "protocol": "auto"},
                        ["arc_easy_gen", "lambada_gen"])
    assert got["protocol"] == "auto"
    assert res.summary()["protocol"] == {"arc_easy_gen": "chat", "lambada_gen": "chat"}
    assert add_composite({"arc_easy_gen": 1.0, "lambada_gen": 3.0})["composite"] == 2.0
    real_evaluate(None, None, {"tasks": ["arc_easy_gen"]}, ["arc_easy_gen"])  # config stored before protocols
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
