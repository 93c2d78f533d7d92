"""The composite is defined once (prunelab.scores) and the spec, stages and report all read its parts."""

import pytest

from prunelab.errors import PrunelabError
from prunelab.experiments.spec import parse_spec
from prunelab.scores import STUDY_COMPOSITE, composite_parts, composite_score, with_composite

SPEC = {"name": "t", "models": ["smollm2-135m"], "pruning": {"kind": "width", "criterion": "maw", "ratio": 0.4},
        "mechanisms": ["ketamine"], "isodose": "ketamine:1", "seeds": [0]}


def test_composite_is_the_mean_of_its_parts_and_absent_when_a_part_is_missing():
    assert composite_score({"arc_easy_gen": 30.0, "lambada_gen": 20.0}) == 25.0
    assert composite_score({"arc_easy": 40.0, "lambada": 31.0}, ("arc_easy", "lambada")) == 35.5
    assert composite_score({"arc_easy_gen": 30.0}) is None
    assert with_composite({"arc_easy_gen": 30.0}) == {"arc_easy_gen": 30.0}
    assert with_composite({"arc_easy": 40.0, "lambada": 30.0}, ("arc_easy", "lambada"))["composite"] == 35.0
    # a scored composite is never overwritten
    assert with_composite({"composite": 1.0, "arc_easy_gen": 30.0, "lambada_gen": 20.0})["composite"] == 1.0


def test_stage_composite_follows_the_eval_config():
    scores = {"arc_easy": 40.0, "lambada": 30.0, "arc_easy_gen": 10.0, "lambada_gen": 20.0}
    assert with_composite(dict(scores))["composite"] == 15.0
    assert with_composite(dict(scores), composite_parts({"composite": ["arc_easy", "lambada"]}))["composite"] == 35.0
    assert composite_parts({}) == STUDY_COMPOSITE and composite_parts(None) == STUDY_COMPOSITE


def test_spec_composite_defaults_to_the_study_and_refuses_parts_not_evaluated():
    spec = parse_spec(SPEC)
    assert tuple(spec.eval.composite) == STUDY_COMPOSITE
    spec = parse_spec({**SPEC, "eval": {"tasks": ["arc_easy", "lambada"], "composite": ["arc_easy", "lambada"]}})
    assert spec.eval.composite == ["arc_easy", "lambada"]
    with pytest.raises(PrunelabError, match="eval.composite part.*lambada.*must also be in eval.tasks"):
        parse_spec({**SPEC, "eval": {"tasks": ["arc_easy"], "composite": ["arc_easy", "lambada"]}})


def test_spec_refuses_the_composite_task_beside_other_composite_parts():
    # the composite task always averages the study's pair; stored under "composite", it would disagree with
    # the mean of eval.composite that every reader takes the composite for
    bad = {**SPEC, "eval": {"tasks": ["arc_easy", "lambada", "composite"], "composite": ["arc_easy", "lambada"]}}
    with pytest.raises(PrunelabError) as err:
        parse_spec(bad)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("spec: eval: eval.tasks lists the composite task, which always averages "
                              "arc_easy_gen and lambada_gen, but eval.composite names arc_easy, lambada")
    # the study's own parts (in any order), or other parts without the composite task, are fine
    study = {"tasks": ["arc_easy_gen", "lambada_gen", "composite"], "composite": ["lambada_gen", "arc_easy_gen"]}
    assert parse_spec({**SPEC, "eval": study}).eval.tasks[-1] == "composite"
    assert parse_spec({**SPEC, "eval": {"tasks": ["arc_easy_gen", "lambada_gen", "composite"]}}).eval.composite \
        == list(STUDY_COMPOSITE)
    assert parse_spec({**SPEC, "eval": {**bad["eval"], "tasks": ["arc_easy", "lambada"]}}).eval.composite \
        == ["arc_easy", "lambada"]


def test_report_reads_the_composite_parts_of_its_runs(tmp_path):
    from prunelab.report.tables import collect
    from tests.report._synthetic import records

    from dataclasses import replace

    def with_parts(run, parts):  # the same run, its eval config naming other composite parts
        config = replace(run.config, eval=run.config.eval.model_copy(update={"composite": parts}))
        return replace(run, config=config)

    runs = [r for r, _ in records()]
    assert collect(runs).composite_tasks() == STUDY_COMPOSITE
    runs = [with_parts(r, ["arc_easy", "lambada"]) for r in runs]
    assert collect(runs).composite_tasks() == ("arc_easy", "lambada")
    runs[0] = with_parts(runs[0], ["arc_easy_gen", "lambada_gen"])
    with pytest.raises(PrunelabError, match="define the composite differently"):
        collect(runs)
