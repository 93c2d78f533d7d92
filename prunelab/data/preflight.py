"""Check, before any model is loaded, that a named data folder holds every file the requested tasks read.

A data location the user names (``--data-dir`` / ``$PRUNELAB_DATA``) is binding (:mod:`prunelab.data.paths`):
a missing file is an error, not a download. The loaders raise that error when they run, but tasks load
their data only after the model; :func:`check_task_data` raises the same one-line error up front, from file
existence alone (no file is parsed), so a wrong ``--data-dir`` costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from prunelab.data.loaders import DATA_FILES
from prunelab.data.paths import explicit_location, find_file, missing_in_named_folder

#: The :data:`prunelab.data.loaders.DATA_FILES` keys each built-in evaluation task reads. Tasks not listed
#: (``c4``: online only; tasks other packages register) are not pre-checked; their loaders still refuse a
#: named folder that lacks their file, only later.
TASK_DATA: dict[str, tuple[str, ...]] = {
    "arc_easy": ("arc_easy_test",),
    "arc_easy_gen": ("arc_easy_test",),
    "arc_easy_gen_chat": ("arc_easy_test",),
    "arc_challenge": ("arc_challenge_test",),
    "hellaswag": ("hellaswag",),
    "piqa": ("piqa",),
    "boolq": ("boolq",),
    "winogrande": ("winogrande",),
    "mmlu": ("mmlu_test",),
    "mmlu_5shot": ("mmlu_test", "mmlu_dev"),
    "truthfulqa_mc1": ("truthfulqa_mc",),
    "truthfulqa_mc2": ("truthfulqa_mc",),
    "lambada": ("lambada",),
    "lambada_gen": ("lambada",),
    "wikitext2": ("wikitext2",),
    "gsm8k": ("gsm8k_test", "gsm8k_train"),  # train: the few-shot exemplars (5 by default)
    "ifeval": ("ifeval",),
    "composite": ("arc_easy_test", "lambada"),
    "c4": (),
}


def check_task_data(tasks: Iterable[str]) -> None:
    """Raise :class:`prunelab.errors.PrunelabError` (dataset + files looked for) if a named data folder lacks
    a file one of ``tasks`` reads. A no-op when no location is named (the loaders may then fall back to HF)."""
    explicit = explicit_location()
    if explicit is None:
        return
    wanted = dict.fromkeys(key for task in tasks for key in TASK_DATA.get(task, ()))
    missing = [(DATA_FILES[k].dataset, DATA_FILES[k].filename) for k in wanted
               if find_file(DATA_FILES[k].dataset, DATA_FILES[k].filename) is None]
    if missing:
        raise missing_in_named_folder(missing, explicit)
