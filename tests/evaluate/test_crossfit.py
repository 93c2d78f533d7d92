"""Cross-fitting of the WikiText-2 benchmarks (benchmarks/calibration_sources.py): the two folds score every window
once, each calibrates on windows of the other half, and no article is in both a fold's calibration and its scored
windows."""

from __future__ import annotations

import pytest
import torch

from benchmarks.calibration_sources import crossfit_folds, held_out_windows, window_articles
from prunelab.evaluate.perplexity import tokenize_text, windows
from tests.tiny import tiny_tokenizer


def _articles(n: int, words: int) -> str:
    body = " ".join("lorem ipsum dolor sit" for _ in range(words))
    return "".join(f" = Title {i} = \n {body} .\n = = Section = = \n {body} .\n" for i in range(n))


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_window_articles_follow_the_article_headings_not_the_section_ones(tok):
    text = _articles(6, 10)
    arts = window_articles(tok, text, seq_len=32)
    assert arts[0] == {0} and arts[-1] == {5}  # a section heading ("= = … = =") starts no article
    assert set().union(*arts) == set(range(6))
    ids = tokenize_text(tok, text)
    head = text.index(" = Title 3 = ")
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    first_token = next(i for i, (b, _) in enumerate(offsets) if b >= head)
    w = first_token // 32
    assert 3 in arts[w] and all(3 not in arts[j] for j in range(w))  # the article starts at its heading's token
    assert len(arts) == len(windows(ids, 32))


def test_folds_cover_every_window_once_and_calibrate_on_the_other_half(tok):
    text = _articles(60, 1)  # articles of ≈ 2 windows: a gap of 4 separates them
    wins = windows(tokenize_text(tok, text), 32)
    a, b = crossfit_folds(tok, text, n=3, gap=4, seq_len=32)
    assert a.scored == (0, len(wins) // 2) and b.scored == (len(wins) // 2, len(wins))
    for fold, other in ((a, b), (b, a)):
        first, stop = fold.calibration_windows
        assert other.scored[0] <= first < stop <= other.scored[1]  # calibration inside the other half
        for j, w in enumerate(range(first, stop)):
            assert torch.equal(fold.calibration[j], wins[w][0])
    assert a.calibration_windows[0] - a.scored[1] == 4 and b.scored[0] - b.calibration_windows[1] == 4  # the gap


def test_folds_refuse_a_shared_article_and_a_calibration_that_does_not_fit(tok):
    long_articles = _articles(3, 60)  # each article spans many windows: a gap of 1 leaves the split article shared
    with pytest.raises(ValueError, match="articles"):
        crossfit_folds(tok, long_articles, n=2, gap=1, seq_len=32)
    with pytest.raises(ValueError, match="do not fit"):
        crossfit_folds(tok, _articles(4, 12), n=50, gap=4, seq_len=32)


def test_held_out_windows_refuse_an_article_shared_with_the_evaluated_windows(tok):
    text = _articles(60, 1)
    batch, note = held_out_windows(tok, text, evaluated=10, n=3, gap=4, seq_len=32)
    assert batch.shape == (3, 32) and "14-16" in note
    with pytest.raises(ValueError, match="articles"):
        held_out_windows(tok, _articles(3, 60), evaluated=10, n=3, gap=1, seq_len=32)
