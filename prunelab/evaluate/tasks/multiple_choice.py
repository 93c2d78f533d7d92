"""Log-likelihood multiple-choice tasks, scored exactly as lm-evaluation-harness scores them.

Prompts come from :mod:`prunelab.data.loaders` (lm-eval's templates). ``acc`` and ``acc_norm`` are
reported for every task; the primary metric is ``acc`` except HellaSwag (``acc_norm``, the usual headline).
"""

from __future__ import annotations

from functools import partial

from prunelab.data import load_arc, load_boolq, load_hellaswag, load_mmlu, load_piqa, load_winogrande
from prunelab.evaluate.registry import TASKS
from prunelab.evaluate.tasks._common import simple_task

TASKS.register("arc_easy", simple_task(partial(load_arc, "easy", "test"), "arc_easy"))
TASKS.register("arc_challenge", simple_task(partial(load_arc, "challenge", "test"), "arc_challenge"))
TASKS.register("hellaswag", simple_task(load_hellaswag, "hellaswag", primary="acc_norm"))
TASKS.register("piqa", simple_task(load_piqa, "piqa"))
TASKS.register("boolq", simple_task(load_boolq, "boolq"))
# WinoGrande partial scoring: each option fills the blank in its own context; the shared continuation is scored
TASKS.register("winogrande", simple_task(load_winogrande, "winogrande"))
TASKS.register("mmlu", simple_task(partial(load_mmlu, 0), "mmlu"))
TASKS.register("mmlu_5shot", simple_task(partial(load_mmlu, 5), "mmlu_5shot"))
