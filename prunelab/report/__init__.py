"""Reports: Tables 1–6 (:mod:`.tables`, the study's metrics from :mod:`prunelab.scores`) with confidence intervals
(:mod:`.comparisons`) and figures (:mod:`.figures`).

Kept light on purpose: submodules (matplotlib, scipy) are imported only when used.

    from prunelab.report import build_report
    result = build_report("results.sqlite", "report/")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ReportResult:
    """What :func:`build_report` wrote (paths relative to ``out_dir``)."""

    out_dir: str
    runs: int
    tables: list[str] = field(default_factory=list)
    omitted: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def build_report(db: str | Path, out_dir: str | Path, experiment: str | None = None,
                 figures: bool = True) -> ReportResult:
    """Render Tables 1–6 (Markdown ``tables.md``, one CSV each, ``tables.json``) and PNG figures from ``db``.

    Every difference carries its 95 % CI and p from the runs' stored per-item outcomes
    (:mod:`prunelab.report.comparisons`); a store without them reports "no per-item data, no CI".

    The whole directory is written atomically: a failure leaves any previous report untouched.
    """
    from prunelab.report.build import write_report

    return write_report(db, out_dir, experiment=experiment, figures=figures)


__all__ = ["ReportResult", "build_report"]
