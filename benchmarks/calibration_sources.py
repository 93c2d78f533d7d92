"""WikiText-2 calibration sources shared by ``width_vs_peers.py`` and ``depth_repair.py`` (not a benchmark itself).

``ORACLE`` calibrates on the evaluated windows themselves (:func:`prunelab.evaluate.perplexity.leading_windows`): an
in-sample upper bound, never a result. ``HELDOUT`` calibrates on windows of the same test file that are not scored:
the ones after the evaluated windows and a gap (:func:`held_out_windows`), so the text is disjoint and the format
is WikiText-2's. ``CROSSFIT`` scores the *whole* file with two models (:func:`crossfit_folds`): the first half by a
model calibrated on windows of the second half, the second half by one calibrated on the first, with a gap at the
split and no article in both a fold's calibration and its scored windows (checked) — the issue's whole-file protocol
with in-format calibration that is never scored by the model it calibrated.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import torch

from prunelab.evaluate.perplexity import tokenize_text, window_batch, windows

ORACLE = "wikitext-oracle"
HELDOUT = "wikitext-heldout"
CROSSFIT = "wikitext-crossfit"
#: every ``--calib-source`` of the two benchmarks: the library's sources (:func:`prunelab.data.calibration_batch`)
#: and the two WikiText-2 ones
SOURCES = ("lambada", "dolly", "wikipedia", ORACLE, HELDOUT, CROSSFIT)
#: windows skipped between the evaluated and the held-out ones: ≈ 1.5 articles (62 articles in 590 windows)
HELDOUT_GAP = 16


def held_out_windows(tokenizer, text: str, evaluated: int, n: int, gap: int = HELDOUT_GAP,
                     seq_len: int = 512) -> tuple[torch.Tensor, str]:
    """Windows ``evaluated + gap … evaluated + gap + n − 1`` as one batch, and a line saying which windows they are;
    raises if an article of the evaluated windows reaches into them."""
    first = evaluated + gap
    batch = window_batch(tokenizer, text, first, n, seq_len)
    _no_shared_article(window_articles(tokenizer, text, seq_len), (0, evaluated), (first, first + n))
    note = (f"held out: calibration on WikiText-2 test windows {first}-{first + n - 1}; windows 0-{evaluated - 1} "
            f"are evaluated (disjoint text and articles, same file and format)")
    return batch, note


@dataclass(frozen=True)
class Fold:
    """One half of a cross-fit: the windows ``scored`` are scored by a model calibrated on ``calibration``
    (the windows ``calibration_windows`` of the other half)."""

    scored: tuple[int, int]  # first, stop (stop = the file's window count: the final partial window included)
    calibration_windows: tuple[int, int]  # first, stop
    calibration: torch.Tensor  # [n, seq_len] token ids


#: an article heading of the WikiText-2 raw file: " = Title = " on its own line (section headings have "= =")
_ARTICLE_HEADING = re.compile(r"^ = [^=].* = $", re.MULTILINE)


def window_articles(tokenizer, text: str, seq_len: int = 512) -> list[set[int]]:
    """Per evaluation window, the indices of the articles its tokens come from (article = text from one heading to
    the next), from the tokenizer's character offsets."""
    ids = tokenize_text(tokenizer, text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) != ids.tolist():
        raise ValueError("the tokenizer's offsets do not belong to the ids the perplexity windows use")
    starts = [m.start() for m in _ARTICLE_HEADING.finditer(text)]
    article = [max(0, bisect.bisect_right(starts, begin) - 1) for begin, _ in enc["offset_mapping"]]
    return [set(article[w * seq_len : w * seq_len + len(chunk)]) for w, (chunk, _) in enumerate(windows(ids, seq_len))]


def crossfit_folds(tokenizer, text: str, n: int, gap: int = HELDOUT_GAP, seq_len: int = 512) -> tuple[Fold, Fold]:
    """Two folds covering every window of ``text`` once. With ``W`` windows and ``s = W // 2``: fold 0 scores
    windows ``0 … s − 1`` and calibrates on ``s + gap … s + gap + n − 1``; fold 1 scores ``s … W − 1`` and calibrates
    on ``s − gap − n … s − gap − 1``. Raises if a fold's calibration and scored windows share an article."""
    wins = windows(tokenize_text(tokenizer, text), seq_len)
    total, split = len(wins), len(wins) // 2
    if split - gap - n < 0 or split + gap + n > total - 1:  # the last window may be partial: never calibrate on it
        raise ValueError(f"cross-fit: {n} calibration windows and a gap of {gap} do not fit in half of {total} windows")
    folds = (Fold((0, split), (split + gap, split + gap + n), window_batch(tokenizer, text, split + gap, n, seq_len)),
             Fold((split, total), (split - gap - n, split - gap), window_batch(tokenizer, text, split - gap - n, n,
                                                                                 seq_len)))
    articles = window_articles(tokenizer, text, seq_len)
    for f in folds:
        _no_shared_article(articles, f.scored, f.calibration_windows)
    return folds


def _no_shared_article(articles: list[set[int]], scored: tuple[int, int], calibration: tuple[int, int]) -> None:
    """Raise if an article has tokens in both window ranges (``articles``: :func:`window_articles`)."""
    shared = set().union(*articles[scored[0] : scored[1]]) & set().union(*articles[calibration[0] : calibration[1]])
    if shared:
        raise ValueError(f"articles {sorted(shared)} are in both a calibration and a scored window; raise the gap")


def crossfit_note(folds: tuple[Fold, Fold]) -> str:
    """One line saying which windows calibrate which."""
    a, b = folds
    return (f"cross-fit over all {b.scored[1]} windows: windows {a.scored[0]}-{a.scored[1] - 1} scored by a model calibrated "
            f"on windows {a.calibration_windows[0]}-{a.calibration_windows[1] - 1}, windows {b.scored[0]}-{b.scored[1] - 1} "
            f"by one calibrated on {b.calibration_windows[0]}-{b.calibration_windows[1] - 1} (no article in both)")


def leading_text(tokenizer, text: str, n: int, seq_len: int = 512) -> str:
    """The text of the first ``n`` windows (for smoke checks of the benchmarks, never a result): cut at the character
    where window ``n`` would begin, so it re-tokenises to (about) ``n`` windows."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text if n * seq_len >= len(offsets) else text[: offsets[n * seq_len][0]]
