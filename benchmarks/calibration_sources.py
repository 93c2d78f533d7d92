"""WikiText-2 calibration sources shared by ``width_vs_peers.py`` and ``depth_repair.py`` (not a benchmark itself).

``ORACLE`` calibrates on the evaluated windows themselves (:func:`prunelab.evaluate.perplexity.leading_windows`): an
in-sample upper bound, never a result. ``HELDOUT`` calibrates on windows of the same test file that are not scored:
the ones after the evaluated windows and a gap (:func:`held_out_windows`), so the text is disjoint and the format
is WikiText-2's.
"""

from __future__ import annotations

import torch

from prunelab.evaluate.perplexity import window_batch

ORACLE = "wikitext-oracle"
HELDOUT = "wikitext-heldout"
#: every ``--calib-source`` of the two benchmarks: the library's sources (:func:`prunelab.data.calibration_batch`)
#: and the two WikiText-2 ones
SOURCES = ("lambada", "dolly", "wikipedia", ORACLE, HELDOUT)
#: windows skipped between the evaluated and the held-out ones: ≈ 1.5 articles (62 articles in 590 windows)
HELDOUT_GAP = 16


def held_out_windows(tokenizer, text: str, evaluated: int, n: int, gap: int = HELDOUT_GAP,
                     seq_len: int = 512) -> tuple[torch.Tensor, str]:
    """Windows ``evaluated + gap … evaluated + gap + n − 1`` as one batch, and a line saying which windows they are."""
    first = evaluated + gap
    note = (f"held out: calibration on WikiText-2 test windows {first}-{first + n - 1}; windows 0-{evaluated - 1} "
            f"are evaluated (disjoint text, same file and format)")
    return window_batch(tokenizer, text, first, n, seq_len), note
