"""Experiments: a YAML spec expands into typed runs; each finished run is stored in SQLite; reruns resume.

    from prunelab.experiments import load_spec, expand, run_experiment, Store
    summary = run_experiment("examples/quickstart.yaml", "results.sqlite")

The run contract (:class:`~prunelab.runs.config.RunConfig`, :class:`~prunelab.runs.result.RunResult`) and the
store live in :mod:`prunelab.runs`, below the report that reads them.
"""

from prunelab.experiments.execute import execute_run
from prunelab.experiments.runner import RunSummary, plan, run_experiment
from prunelab.experiments.spec import ExperimentSpec, Run, config_hash, expand, load_spec, parse_spec
from prunelab.runs import RunConfig, RunRecord, RunResult, Store

__all__ = ["ExperimentSpec", "Run", "RunConfig", "RunRecord", "RunResult", "RunSummary", "Store", "config_hash",
           "execute_run", "expand", "load_spec", "parse_spec", "plan", "run_experiment"]
