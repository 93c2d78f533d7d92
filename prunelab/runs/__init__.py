"""The run contract: one run's typed config and result, and the SQLite store that keeps finished runs.

Why a package of its own, below :mod:`prunelab.report` and above the stages: the experiment runner
(:mod:`prunelab.experiments`) writes runs and the report reads them, and the report must not import the
experiments layer that sits above it. Both import the contract from here instead, so the flow of one run —
spec → :class:`RunConfig` → execution → :class:`RunResult` → :class:`Store` → report — points one way. The
alternative (the CLI loading records and handing them to the report) would still leave the report typed against
records defined above it.

- :mod:`prunelab.runs.config` — :class:`RunConfig` (model, pruning, seed, eval, treatment) and its hash;
- :mod:`prunelab.runs.result` — :class:`RunResult` / :class:`RunMetrics` and the per-stage records;
- :mod:`prunelab.runs.store` — :class:`Store` (durable, resumable, shared by several drivers).
"""

from prunelab.runs.config import Dose, RunConfig, Treatment, config_hash
from prunelab.runs.result import (ChronicCycle, ChronicResult, EvalScores, PruningInfo, RecoveryInfo,
                                  RelapseResult, RunMeta, RunMetrics, RunRecord, RunResult, TrainingInfo)
from prunelab.runs.store import Store

__all__ = ["ChronicCycle", "ChronicResult", "Dose", "EvalScores", "PruningInfo", "RecoveryInfo", "RelapseResult",
           "RunConfig", "RunMeta", "RunMetrics", "RunRecord", "RunResult", "Store", "TrainingInfo", "Treatment",
           "config_hash"]
