"""``parts:``: an experiment as a union of cross products (main arms, a rank sweep, a transfer)."""

import json

import pytest

from prunelab.errors import PrunelabError
from prunelab.experiments.spec import expand, parse_spec

WIDTH = {"kind": "width", "criterion": "maw", "ratio": 0.2}
DEPTH = {"kind": "depth", "k": 2}
SPEC = {
    "name": "study",
    "models": ["smollm2-135m"],
    "pruning": [WIDTH],
    "mechanisms": ["ketamine", "ssri"],
    "isodose": {"reference": "ketamine:1", "formula": "honest"},
    "seeds": [0, 1],
    "stress": {"relapse": {"fraction": 0.3},
               "chronic": {"cycles": 2, "step": 0.1, "maintenance_epochs": 1, "tasks": ["arc_easy"]}},
    "eval": {"tasks": ["arc_easy", "lambada"], "composite": ["arc_easy", "lambada"]},
    "parts": [
        {"name": "main"},
        {"name": "sweep", "mechanisms": [], "rank_sweep": {"ranks": [16, 32]},
         "stress": {"relapse": {"fraction": 0.3}}},
        {"name": "transfer", "pruning": [WIDTH, DEPTH], "seeds": [0],
         "mechanisms": [{"name": "recipe", "base": "ketamine", "r": 32, "alpha": 64}],
         "stress": {"relapse": {"fraction": 0.3}}},
    ],
}


def spec(**kw):
    d = json.loads(json.dumps(SPEC))
    d.update(kw)
    return d


def label_set(runs):
    return {r.label for r in runs}


def test_parts_are_the_union_of_their_cross_products():
    runs = expand(parse_spec(spec()))
    labels = [r.label for r in runs]
    assert len(labels) == len(set(labels)) == len({r.hash for r in runs})
    w, d = "smollm2-135m · width-maw-20", "smollm2-135m · depth-greedy-perplexity-k2"
    expected = set()
    for s in (0, 1):
        expected |= {f"{w} · {m} · seed {s}" for m in ("untreated", "ketamine", "ssri", "ketamine-r16",
                                                       "ketamine-r32")}
    expected |= {f"{w} · recipe · seed 0", f"{d} · untreated · seed 0", f"{d} · recipe · seed 0"}
    assert set(labels) == expected
    # the width baseline of seed 0 is shared by all three parts and runs once
    assert labels.count(f"{w} · untreated · seed 0") == 1
    # runs of one pruned model stay together, and indices are the positions
    keys = [r.prune_key for r in runs]
    assert all(keys.index(k) + keys.count(k) - 1 == max(i for i, x in enumerate(keys) if x == k) for k in keys)
    assert [r.index for r in runs] == list(range(len(runs)))


def test_a_part_inherits_what_it_does_not_set():
    runs = {r.label: r for r in expand(parse_spec(spec()))}
    main = runs["smollm2-135m · width-maw-20 · ssri · seed 1"].config.treatment
    sweep = runs["smollm2-135m · width-maw-20 · ketamine-r16 · seed 1"].config.treatment
    assert main.stress.chronic is not None and sweep.stress.chronic is None
    assert sweep.sweep and not main.sweep
    assert main.dose == sweep.dose  # the top-level isodose budget serves every part


def test_a_part_can_drop_an_inherited_sweep():
    d = spec(rank_sweep={"ranks": [8]}, parts=[{"name": "a"}, {"name": "b", "rank_sweep": None, "seeds": [5]}])
    runs = expand(parse_spec(d))
    mechs = {(r.config.seed, r.config.treatment.mechanism.name) for r in runs if r.config.treatment}
    assert ("0", "ketamine-r8") not in mechs and (0, "ketamine-r8") in mechs
    assert (5, "ketamine-r8") not in mechs and (5, "ketamine") in mechs


def test_without_parts_nothing_changes():
    d = spec()
    del d["parts"]
    plain = expand(parse_spec(d))
    only_main = expand(parse_spec(spec(parts=[{"name": "main"}])))
    assert [(r.label, r.hash, r.index) for r in plain] == [(r.label, r.hash, r.index) for r in only_main]


@pytest.mark.parametrize("parts, where", [
    ([{"name": "a"}, {"name": "a"}], "parts: part names must not repeat"),
    ([{"name": "a", "seeds": [1, 1]}], "parts.0 (a): seeds: seeds must not repeat"),
    ([{"name": "a", "pruning": [{"kind": "width"}]}], "parts.0.pruning.0"),
    ([{"name": "a", "isodose": "ketamine"}], "parts.0.isodose"),
    ([{"name": "a", "eval": {"limit": 3}}], "parts.0.eval"),  # not a per-part key: every part scores the same items
    ([{"name": "ok"}, {"name": "b", "mechanisms": ["ketamine", "ketamine"]}], "parts.1 (b): mechanism names must be unique"),
])
def test_a_bad_part_is_one_line_naming_it(parts, where):
    with pytest.raises(PrunelabError) as err:
        parse_spec(spec(parts=parts), "exp.yaml")
    msg = str(err.value)
    assert msg.startswith(f"exp.yaml: {where}"), msg
    assert "\n" not in msg


def test_a_part_may_change_the_isodose_formula():
    d = spec(parts=[{"name": "honest"}, {"name": "study", "isodose": {"reference": "ketamine:1", "formula": "study"},
                                          "stress": {"relapse": {"fraction": 0.3}}}])
    runs = expand(parse_spec(d))
    formulas = {(r.config.treatment.mechanism.name, r.config.treatment.dose.formula, r.config.seed)
                for r in runs if r.config.treatment}
    assert ("ssri", "study", 1) in formulas and ("ssri", "honest", 1) in formulas
    assert sum(r.config.treatment is None for r in runs) == 2  # the baselines are shared
