"""The recovery study's metrics, for the report: re-exported from :mod:`prunelab.scores`, their one home.

They sit on the ground floor so evaluation, stress and the experiment runner (all below the report) compute the
same figures the same way; this module keeps the report's historical import path
(``from prunelab.report import metrics as M``).
"""

from __future__ import annotations

from prunelab.scores import (
    Correlation,
    MeanSD,
    composite,
    efficiency,
    longitudinal_decline,
    mean_sd,
    net_retained,
    pearson,
    recovery,
    relapse_drop,
    spearman,
    sweep_score,
)

__all__ = [
    "Correlation", "MeanSD", "composite", "efficiency", "longitudinal_decline", "mean_sd", "net_retained",
    "pearson", "recovery", "relapse_drop", "spearman", "sweep_score",
]
