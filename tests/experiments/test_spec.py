import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunelab.errors import PrunelabError
from prunelab.experiments.spec import config_hash, expand, load_spec, parse_spec

BASE = {
    "name": "t",
    "models": ["smollm2-135m"],
    "pruning": {"kind": "width", "criterion": "maw", "ratio": 0.4},
    "mechanisms": ["ketamine", "ssri", "neurosteroid"],
    "isodose": "ketamine:1",
    "seeds": [0, 1],
}


def with_(**kw):
    d = json.loads(json.dumps(BASE))
    d.update(kw)
    return d


@pytest.mark.parametrize("patch, path", [
    ({"pruning": {"kind": "width", "ratio": 1.5}}, "pruning.0.ratio"),
    ({"pruning": [{"kind": "width", "ratoi": 0.4}]}, "pruning.0.ratoi"),
    ({"pruning": [{"kind": "depth"}]}, "pruning.0.k"),
    ({"pruning": [{"kind": "sideways"}]}, "pruning.0"),
    ({"seeds": [0, 0]}, "seeds"),
    ({"isodose": "ketamine"}, "isodose"),
    ({"training": {"samples": 0}}, "training.samples"),
    ({"stress": {"relapse": {"fraction": 1.2}}}, "stress.relapse.fraction"),
    ({"stress": {"chronic": {"cycles": 12, "step": 0.1}}}, "stress.chronic"),
    ({"mechanisms": [{"name": "mine", "r": 0}]}, "mechanisms.0.r"),
    ({"mechanisms": [{"name": "mine", "targets": ["q", "nose"]}]}, "mechanisms.0.targets.1"),
    ({"models": []}, "models"),
    ({"eval": {"tasks": ["arc_easy_gen"], "limit": 0}}, "eval.limit"),
    ({"eval": {"protocol": "instruct"}}, "eval.protocol"),
    ({"isodose": {"reference": "ketamine:3", "formula": "fair"}}, "isodose.formula"),
    ({"isodose": {"epochs": 3, "formula": "honest"}}, "isodose"),
])
def test_bad_spec_names_the_field(patch, path):
    with pytest.raises(PrunelabError) as err:
        parse_spec(with_(**patch), "exp.yaml")
    msg = str(err.value)
    assert msg.startswith(f"exp.yaml: {path}:"), msg
    assert "\n" not in msg


def test_missing_name_and_non_mapping():
    d = with_()
    del d["name"]
    with pytest.raises(PrunelabError, match=r"^s: name: Field required"):
        parse_spec(d, "s")
    with pytest.raises(PrunelabError, match="must be a mapping"):
        parse_spec(["a"], "s")


def test_unknown_mechanism_and_reference_name_the_field():
    with pytest.raises(PrunelabError, match=r"mechanisms\.1: 'mine' is not a built-in.*needs r, alpha"):
        expand(parse_spec(with_(mechanisms=["ketamine", "mine"])))
    with pytest.raises(PrunelabError, match=r"isodose\.reference: unknown mechanism 'nope'"):
        expand(parse_spec(with_(isodose="nope:2")))
    with pytest.raises(PrunelabError, match=r"mechanisms\.0\.base: unknown mechanism 'nope'"):
        expand(parse_spec(with_(mechanisms=[{"name": "x", "base": "nope"}])))


def test_expansion_counts_and_baselines():
    spec = parse_spec(with_(models=["a", {"source": "org/b", "name": "b"}],
                            pruning=["none", {"kind": "width", "ratio": 0.4}, {"kind": "depth", "k": 2}]))
    runs = expand(spec)
    # 2 models × 3 prunings × 2 seeds = 12 baselines, × 3 mechanisms = 36 treated
    assert len(runs) == 12 + 36
    assert sum(r.kind == "baseline" for r in runs) == 12
    assert len({r.hash for r in runs}) == len(runs)
    # runs sharing a pruned model are contiguous (each is pruned once per invocation)
    keys = [r.prune_key for r in runs]
    assert all(keys.index(k) + keys.count(k) - 1 == len(keys) - 1 - keys[::-1].index(k) for k in set(keys))
    # the treated run carries the resolved mechanism values and the isodose reference
    t = next(r for r in runs if r.kind == "treated" and r.config.treatment.mechanism.name == "ssri")
    assert t.config.treatment.mechanism.r == 8 and t.config.treatment.mechanism.targets == ("q", "v")
    assert t.config.treatment.dose.reference_epochs == 1
    assert t.config.treatment.dose.reference.r == 64
    # the prune key names the pruned model: the same for a baseline and its treated runs, and per seed
    base = next(r for r in runs if r.kind == "baseline" and r.config.model.name == t.config.model.name
                and r.config.pruning.name == t.config.pruning.name and r.config.seed == t.config.seed)
    assert base.prune_key == t.prune_key == t.config.prune_key


def test_rank_sweep_and_inline_mechanisms():
    spec = parse_spec(with_(mechanisms=[{"name": "mine", "r": 4, "alpha": 8, "targets": ["q"], "dropout": 0.0,
                                         "lr": 1e-4}, {"name": "k32", "base": "ketamine", "r": 32, "alpha": 64}],
                            rank_sweep={"ranks": [16, 32]}, isodose="ketamine:3", seeds=[0]))
    runs = expand(spec)
    treatments = [r.config.treatment for r in runs if r.kind == "treated"]
    mechs = [t.mechanism for t in treatments]
    assert [m.name for m in mechs] == ["mine", "k32", "ketamine-r16", "ketamine-r32"]
    assert mechs[1].targets == ("q", "k", "v", "o", "gate", "up", "down") and mechs[1].alpha == 64
    assert [t.sweep for t in treatments] == [False, False, True, True]
    assert mechs[2].alpha == 32.0 and mechs[3].r == 32


def test_config_hash_stable_across_key_order_and_processes():
    a = {"x": 1, "y": {"b": [1, 2], "a": 0.5}}
    b = {"y": {"a": 0.5, "b": [1, 2]}, "x": 1}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "x": 2})
    code = "from prunelab.experiments.spec import config_hash; print(config_hash({'x': 1, 'y': {'b': [1, 2], 'a': 0.5}}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == config_hash(a)


def test_hash_ignores_cosmetics_but_not_settings():
    h1 = {r.label: r.hash for r in expand(parse_spec(with_(note="hello", name="one")))}
    h2 = {r.label: r.hash for r in expand(parse_spec(with_(note="other", name="two")))}
    assert h1 == h2  # the same run requested by two experiments is recognised
    h3 = {r.label: r.hash for r in expand(parse_spec(with_(training={"samples": 7})))}
    assert set(h3.values()).isdisjoint(v for k, v in h1.items() if "untreated" not in k)


def test_examples_validate():
    root = Path(__file__).resolve().parents[2] / "examples"
    files = sorted(root.glob("*.yaml"))
    assert {f.name for f in files} >= {"quickstart.yaml", "recovery-study.yaml", "rank-sweep.yaml", "transfer.yaml"}
    for f in files:
        spec = load_spec(f)
        assert spec.note, f"{f.name} must say what is CPU-scaled"
        assert expand(spec)


def test_yaml_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(PrunelabError, match="not valid YAML"):
        load_spec(p)
    with pytest.raises(PrunelabError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


@pytest.mark.parametrize("patch, path", [
    ({"pruning": {"kind": "width", "criterion": "mawww", "ratio": 0.4}}, "pruning.0.criterion"),
    ({"pruning": {"kind": "depth", "k": 2, "search": "nope"}}, "pruning.0.search"),
    ({"eval": {"tasks": ["arc_easy_gen", "lambda"]}}, "eval.tasks.1"),
    ({"stress": {"chronic": {"cycles": 2, "tasks": ["arc"]}}}, "stress.chronic.tasks.0"),
])
def test_registry_names_checked_before_work(patch, path):
    from prunelab.experiments.stages import real_validate

    with pytest.raises(PrunelabError, match=rf"^{path}: unknown"):
        real_validate(parse_spec(with_(**patch)))
    real_validate(parse_spec(with_()))  # the valid spec passes


def test_protocol_and_isodose_formula_are_in_the_run_config_and_hash():
    runs = {r.label: r for r in expand(parse_spec(with_()))}
    treated = next(r for k, r in runs.items() if "ketamine" in k)
    assert treated.config.eval.protocol == "auto"  # the default
    assert treated.config.treatment.dose.formula == "study"  # the default: the study's 6·P·L·N·E
    by_protocol = {p: {r.label: r.hash for r in expand(parse_spec(with_(eval={"protocol": p})))}
                   for p in ("raw", "chat", "auto")}
    for a in by_protocol:  # every run (untreated too) differs between protocols
        for b in by_protocol:
            if a != b:
                assert set(by_protocol[a].values()).isdisjoint(by_protocol[b].values())
    assert by_protocol["auto"] == {r.label: r.hash for r in runs.values()}
    honest = {r.label: r for r in expand(parse_spec(with_(isodose={"reference": "ketamine:1", "formula": "honest"})))}
    for label, run in honest.items():
        if "untreated" in label:  # no training: the formula does not enter
            assert run.hash == runs[label].hash
        else:
            assert run.config.treatment.dose.formula == "honest" and run.hash != runs[label].hash
    fixed = expand(parse_spec(with_(isodose={"epochs": 2})))
    assert all("formula" not in r.config.to_dict()["dose"] for r in fixed if r.kind == "treated")


def test_shipped_examples_protocol_and_formula():
    """The study YAMLs keep the study's isodose formula and raw prompts (a reproduction); the quickstart uses auto."""
    root = Path(__file__).resolve().parents[2] / "examples"
    for name in ("recovery-study.yaml", "rank-sweep.yaml", "transfer.yaml"):
        assert load_spec(root / name).isodose.formula == "study", name
    for name in ("recovery-study.yaml", "rank-sweep.yaml", "transfer.yaml"):
        assert load_spec(root / name).eval.protocol == "raw", name  # the study's plain prompts on a base model
    assert load_spec(root / "quickstart.yaml").eval.protocol == "auto"  # SmolLM2-Instruct: its chat template


def test_adaptive_criterion_defaults_to_taylor_and_reaches_adapt_prune(monkeypatch):
    """Unset criterion: ``maw`` for uniform pruning (its dump and hash as before), ``taylor`` for Adapt-Pruner; the
    runner hands the criterion to ``adapt_prune``; a criterion Adapt-Pruner cannot use is refused before work."""
    import types

    from prunelab.experiments import stages
    from prunelab.experiments.spec import WidthPruning
    from prunelab.prune import adaptive

    uniform = WidthPruning(ratio=0.4)
    assert uniform.criterion == "maw" and uniform.model_dump()["criterion"] == "maw" and uniform.name == "width-maw-40"
    adapt = WidthPruning(ratio=0.3, adaptive=True)
    assert adapt.criterion == "taylor" and adapt.name == "adaptive-taylor-30"
    seen = {}
    monkeypatch.setattr(adaptive, "adapt_prune", lambda *a, **kw: seen.update(kw) or {"sparsity": 0.3})
    monkeypatch.setattr(stages, "_calibration", lambda *a, **kw: None)
    monkeypatch.setattr("prunelab.atomic.to_jsonable", lambda r: r)
    stages._prune(types.SimpleNamespace(model=None, tokenizer=None), adapt, seed=0)
    assert seen["criterion"] == "taylor"
    from prunelab.experiments.stages import real_validate

    with pytest.raises(PrunelabError, match=r"^pruning.0.criterion: Adapt-Pruner .* loss-scaled"):
        real_validate(parse_spec(with_(pruning={"kind": "width", "adaptive": True, "criterion": "maw", "ratio": 0.3})))
