"""Experiments: a YAML spec expands into runs; each finished run is stored in SQLite; reruns resume.

    from prunelab.experiments import load_spec, expand, run_experiment, Store
    summary = run_experiment("examples/quickstart.yaml", "results.sqlite")
"""

from prunelab.experiments.runner import RunSummary, execute_run, plan, run_experiment
from prunelab.experiments.spec import ExperimentSpec, Run, config_hash, expand, load_spec, parse_spec
from prunelab.experiments.store import RunRecord, Store

__all__ = ["ExperimentSpec", "Run", "RunRecord", "RunSummary", "Store", "config_hash", "execute_run", "expand",
           "load_spec", "parse_spec", "plan", "run_experiment"]
