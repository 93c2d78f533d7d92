"""Log-likelihood multiple-choice tasks, scored exactly as lm-evaluation-harness scores them.

Prompts come from :mod:`prunelab.data.loaders` (lm-eval's templates). ``acc`` and ``acc_norm`` are
reported for every task; the primary metric is ``acc`` except HellaSwag (``acc_norm``, the usual headline).
"""

from __future__ import annotations

from functools import partial

from prunelab.data import load_arc, load_boolq, load_hellaswag, load_mmlu, load_piqa, load_winogrande
from prunelab.evaluate.registry import TaskSpec, register_task
from prunelab.evaluate.tasks._common import simple_task



def _register(name: str, load, label: str, primary: str = "acc") -> None:
    spec = TaskSpec(name, "loglikelihood", primary, higher_is_better=True, label=label)
    register_task(spec, simple_task(load, name, primary))


_register("arc_easy", partial(load_arc, "easy", "test"), "ARC-Easy LL (%)")
_register("arc_challenge", partial(load_arc, "challenge", "test"), "ARC-Challenge (%)")
_register("hellaswag", load_hellaswag, "HellaSwag (%)", primary="acc_norm")
_register("piqa", load_piqa, "PIQA (%)")
_register("boolq", load_boolq, "BoolQ (%)")
# WinoGrande partial scoring: each option fills the blank in its own context; the shared continuation is scored
_register("winogrande", load_winogrande, "WinoGrande (%)")
_register("mmlu", partial(load_mmlu, 0), "MMLU (%)")
_register("mmlu_5shot", partial(load_mmlu, 5), "MMLU 5-shot (%)")
