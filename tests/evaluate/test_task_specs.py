"""Every registered task has exactly one TaskSpec, and the spec agrees with what the task reports."""

from __future__ import annotations

import pytest

from prunelab.errors import PrunelabError
from prunelab.evaluate import TASK_SPECS, TASKS, load_tasks, task_spec
from prunelab.evaluate.generative_tasks import SETTINGS, protocol_tasks


def test_every_task_has_one_spec_under_its_name():
    load_tasks()
    assert sorted(TASKS.names()) == sorted(TASK_SPECS.names())
    for name in TASKS.names():
        spec = task_spec(name)
        assert spec.name == name and spec.label and spec.primary
        assert (spec.generation is not None) == (spec.kind == "generation")


def test_directions_and_kinds():
    assert not task_spec("wikitext2").higher_is_better and not task_spec("c4").higher_is_better
    assert all(task_spec(t).higher_is_better for t in ("arc_easy", "hellaswag", "gsm8k", "composite"))
    assert task_spec("hellaswag").primary == "acc_norm"
    assert {t for t in TASKS.names() if task_spec(t).open_ended} == {"gsm8k", "ifeval"}


def test_protocol_tasks_are_the_specs_that_follow_the_protocol():
    followers = {t for t in TASKS.names() if (g := task_spec(t).generation) is not None and g.follows_protocol}
    assert followers == {"arc_easy_gen", "lambada_gen"}
    assert protocol_tasks() == followers | {"composite"}  # composite through its parts


def test_default_budgets_come_from_the_specs():
    assert task_spec("gsm8k").generation.max_new_tokens == SETTINGS.gsm8k_max_new_tokens
    assert task_spec("ifeval").generation.max_new_tokens == SETTINGS.ifeval_max_new_tokens


def test_unknown_task_spec_names_the_known_ones():
    with pytest.raises(PrunelabError, match="unknown eval task 'nope'.*arc_easy"):
        task_spec("nope")
