"""The fake stages, plus what the concurrency and Ray fault tests need to see from inside a run
(``PRUNELAB_STAGES=tests.experiments.counting_stages:stages``):

- ``PRUNELAB_COUNT_SLEEP`` seconds slept at the start of *every* run (the fake stages only slow down
  recovery, so a baseline run would be over before a kill could land in it);
- ``PRUNELAB_COUNT_LOG``: a file that gets one line ``model seed mechanism pid`` per executed run, appended
  with ``O_APPEND`` so concurrent processes never interleave lines. Specs for these stages have no
  ``stress``, so every run evaluates exactly once and one line is one execution;
- ``PRUNELAB_COUNT_GATE``: a path; a process's first run touches ``GATE.<pid>`` and waits until ``GATE``
  exists, so a test can hold several drivers mid-run at the same moment.
"""

from __future__ import annotations

import copy
import os
import time

from tests.experiments.fake_stages import FakeStages


class CountingStages(FakeStages):
    def clone(self, model):
        gate = os.environ.get("PRUNELAB_COUNT_GATE")
        if gate and not os.path.exists(gate):  # first run: say "here" and wait until the test opens the gate
            open(f"{gate}.{os.getpid()}", "w").close()
            deadline = time.time() + 120
            while not os.path.exists(gate) and time.time() < deadline:
                time.sleep(0.02)
        time.sleep(float(os.environ.get("PRUNELAB_COUNT_SLEEP", "0")))
        return copy.deepcopy(model)

    def recover(self, model, tokenizer, mechanism, training, epochs, seed):
        model, info = super().recover(model, tokenizer, mechanism, training, epochs, seed)
        model["mechanism"] = mechanism.name
        return model, info

    def evaluate(self, model, tokenizer, eval_spec, tasks):
        log = os.environ.get("PRUNELAB_COUNT_LOG")
        if log:
            line = f"{model['name']} {model['seed']} {model.get('mechanism', 'baseline')} {os.getpid()}\n".encode()
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return super().evaluate(model, tokenizer, eval_spec, tasks)


def stages() -> CountingStages:
    return CountingStages()


def executions(log) -> list[tuple[str, str, str]]:
    """``(model, seed, mechanism)`` of every logged execution, in order."""
    if not os.path.exists(log):
        return []
    with open(log) as fh:
        return [tuple(line.split()[:3]) for line in fh if line.strip()]
