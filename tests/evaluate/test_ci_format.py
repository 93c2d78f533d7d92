"""The benchmarks' CI cells: a missing CI (one window) reads "[n/a]", never "[nan, nan]"."""

from __future__ import annotations

import math

from benchmarks.ci_format import span
from prunelab.stats import perplexity_ratio


def test_span_formats_a_ci_and_marks_significance():
    d = {"estimate": 0.7161, "low": 0.7109, "high": 0.7213, "significant": True}
    assert span(d, ".3f") == "0.716 [0.711, 0.721]"
    assert span(d, ".3f", star=True) == "0.716 [0.711, 0.721]*"
    assert span(None, ".3f") == ""


def test_one_window_has_no_ci_and_says_so():
    d = perplexity_ratio({"w0": (10.0, 5)}, {"w0": (12.0, 5)}).as_dict()
    assert math.isnan(d["low"])
    assert span(d, ".3f") == f"{math.exp(0.4):.3f} [n/a]"
