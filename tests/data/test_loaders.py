"""Data loaders read the real shared data; errors name the file and line."""

from __future__ import annotations

import pytest

from prunelab.data import (
    calibration_batch,
    dolly_split,
    format_prompt,
    load_arc,
    load_lambada,
    read_jsonl,
    seeded_sample,
    set_data_dir,
    split_lambada,
)
from prunelab.data.paths import data_root, require_file
from prunelab.errors import PrunelabError
from tests.tiny import tiny_tokenizer

needs_data = pytest.mark.skipif(data_root() is None, reason="shared data folder not present")


@needs_data
def test_arc_easy_counts_and_answers():
    items = load_arc("easy", "test")
    assert len(items) == 2376
    first = items[0]
    assert first.id == "Mercury_417466" and first.answer == 0
    assert first.context == f"Question: {first.query}\nAnswer:" and first.choices[0].startswith(" ")
    assert all(0 <= it.answer < len(it.choices) for it in items)


@needs_data
def test_lambada_split_is_disjoint():
    items = load_lambada()
    assert len(items) == 5153 and items[0].target == "signs"
    evaluation, calibration = split_lambada(items)
    assert len(calibration) == 1000 and len(evaluation) == 4153
    assert not {i.id for i in evaluation} & {i.id for i in calibration}


@needs_data
def test_dolly_split_disjoint_and_seeded():
    a, b = dolly_split(500, 100, seed=3), dolly_split(500, 100, seed=3)
    assert [r.id for r in a.train] == [r.id for r in b.train]
    assert len(a.train) == 500 and len(a.held_out) == 100
    assert not {r.id for r in a.train} & {r.id for r in a.held_out}
    with pytest.raises(PrunelabError, match="fewer than"):
        dolly_split(3000, 100)


@needs_data
def test_calibration_batch_shape():
    batch = calibration_batch(tiny_tokenizer(), n_samples=4, seq_len=32)
    assert batch.shape == (4, 32)


@needs_data
def test_wikipedia_calibration_is_boolq_passages_disjoint_from_wikitext2_test():
    import re

    from prunelab.data import calibration_texts, load_wikitext2_text

    texts = calibration_texts("wikipedia", seed=0)
    assert len(texts) == len(set(texts)) > 2000 and not any(t.endswith("?\nAnswer:") for t in texts)
    assert calibration_texts("wikipedia", seed=0) == texts  # seeded: the same order in every run

    def grams(text, n=13):
        words = re.findall(r"\w+", text.lower())
        return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}

    passages = set().union(*(grams(t) for t in texts))
    # the contamination check of GPT-3 (Brown et al. 2020, appendix C): no 13-word sequence shared
    assert not grams(load_wikitext2_text()) & passages


def test_seeded_sample():
    items = list(range(100))
    s1, s2 = seeded_sample(items, 10, seed=1), seeded_sample(items, 10, seed=1)
    assert s1 == s2 and len(set(s1)) == 10 and s1 == sorted(s1)
    assert seeded_sample(items, 10, seed=2) != s1
    assert seeded_sample(items, None) == items
    with pytest.raises(PrunelabError, match="positive"):
        seeded_sample(items, 0)


def test_malformed_row_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"a": 1}\n{"a": 2\n')
    with pytest.raises(PrunelabError, match=r"bad.jsonl:2: malformed JSON"):
        read_jsonl(f)
    f.write_text('{"a": 1}\n')
    with pytest.raises(PrunelabError, match=r"bad.jsonl:1: row lacks field\(s\) b"):
        read_jsonl(f, required=("b",))


def test_missing_data_says_where_it_looked(tmp_path):
    set_data_dir(tmp_path)
    try:
        with pytest.raises(PrunelabError, match=str(tmp_path)):
            require_file("arc_easy", "nope.jsonl")
    finally:
        set_data_dir(None)


def test_data_dir_override_is_used(tmp_path):
    (tmp_path / "arc_easy").mkdir()
    (tmp_path / "arc_easy" / "arc_easy_test.jsonl").write_text(
        '{"id": "x1", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}\n'
    )
    set_data_dir(tmp_path)
    try:
        items = load_arc("easy", "test")
    finally:
        set_data_dir(None)
    assert [(i.id, i.answer) for i in items] == [("x1", 1)]


def test_prompt_format():
    assert format_prompt("Do X", "") == "### Instruction:\nDo X\n\n### Response:\n"
    assert "### Context:\nctx\n\n" in format_prompt("Do X", "ctx")
