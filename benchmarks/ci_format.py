"""One formatter for the benchmarks' ``estimate [low, high]`` cells (from :meth:`prunelab.stats.Difference.as_dict`
or :meth:`prunelab.stats.Interval.as_dict`)."""

from __future__ import annotations

import math


def span(d: dict | None, fmt: str, star: bool = False) -> str:
    """``"0.716 [0.711, 0.721]"`` with ``fmt`` the format spec (``".3f"``); ``"[n/a]"`` when there is no CI (one
    window or item); a trailing ``*`` with ``star`` when ``d["significant"]``; ``""`` for no comparison."""
    if d is None:
        return ""
    if math.isfinite(d["low"]) and math.isfinite(d["high"]):
        text = f"{d['estimate']:{fmt}} [{d['low']:{fmt}}, {d['high']:{fmt}}]"
    else:
        text = f"{d['estimate']:{fmt}} [n/a]"
    return text + ("*" if star and d.get("significant") else "")
