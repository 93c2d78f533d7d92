"""Bridge to lm-evaluation-harness: run its tasks on a prunelab-loaded model against the LOCAL data files.

The model (uniform or per-layer pruned — any ``nn.Module`` HF causal LM) is wrapped, with ``engine="packed"``
(default), as :class:`prunelab.evaluate.lmeval_engine.PackedHFLM`: lm-eval's ``HFLM`` whose log-likelihood
requests run on prunelab's packed engine (:func:`prunelab.evaluate.loglik.loglikelihood_groups`, HFLM's
tokenisation and truncation), so the bridge is one more caller of that engine while tasks, prompts and metrics
stay lm-eval's; with ``engine="hflm"`` it is plain ``lm_eval.models.huggingface.HFLM(pretrained=model,
tokenizer=tokenizer)`` (lm-eval's own scoring, the baseline the engine is checked against). Tasks are lm-eval's
own YAML configs (``include:`` of the installed file, so prompts, choices and metrics are lm-eval's) with only
the dataset re-pointed at the shared JSON-lines copies (``dataset_path: json`` + ``data_files``); where the
local copy has a different layout than the hub dataset (HellaSwag already preprocessed, WinoGrande already in
partial-scoring form, BoolQ's ``answer`` field, MMLU's subjects in one file) a small override or a
self-contained config maps it. The configs are written to a temporary directory for lm-eval's
``TaskManager(include_path=...)``; nothing is downloaded.

Items: ``limit``/``seed`` select the same seeded sample as prunelab's own task of the same name
(``seeded_sample(range(N), limit, seed)`` over the file's rows, passed to lm-eval as ``samples=``), so the
two backends score exactly the same items. Metrics are converted to percent.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.data import require_file, seeded_sample
from prunelab.errors import PrunelabError
from prunelab.evaluate.registry import ItemOutcome, TaskResult


@dataclass
class BridgeTask:
    """How one prunelab task name maps onto an lm-eval config over local files."""

    name: str
    include: str | None  # lm-eval YAML (relative to lm_eval/tasks) to inherit, or None for a full config
    files: dict[str, tuple[str, str]]  # split -> (dataset folder, file name)
    overrides: dict[str, Any] = field(default_factory=dict)
    n_items: Callable[[], int] | None = None  # evaluation pool size (rows from the start of the test file)
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    primary: str = "acc"


def _lambada_pool() -> int:
    from prunelab.data import load_lambada, split_lambada

    return len(split_lambada(load_lambada())[0])


_MC_METRICS = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
               {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]

BRIDGE_TASKS: dict[str, BridgeTask] = {
    t.name: t
    for t in [
        BridgeTask("arc_easy", "arc/arc_easy.yaml",
                   {"test": ("arc_easy", "arc_easy_test.jsonl"), "train": ("arc_easy", "arc_easy_train.jsonl"),
                    "validation": ("arc_easy", "arc_easy_validation.jsonl")}),
        BridgeTask("arc_challenge", "arc/arc_challenge.yaml",
                   {"test": ("arc_challenge", "arc_challenge_test.jsonl"),
                    "train": ("arc_challenge", "arc_challenge_train.jsonl"),
                    "validation": ("arc_challenge", "arc_challenge_validation.jsonl")}),
        BridgeTask("piqa", "piqa/piqa.yaml", {"validation": ("piqa", "piqa_validation.jsonl")},
                   {"training_split": None}),
        # local BoolQ keeps the hub's boolean ``answer`` (super_glue's copy calls it ``label``)
        BridgeTask("boolq", "super_glue/boolq/default.yaml", {"validation": ("boolq", "boolq_validation.jsonl")},
                   {"training_split": None, "doc_to_target": "{{ 1 if answer else 0 }}"}, metrics=("acc",)),
        # local HellaSwag is already preprocessed (ctx = ctx_a + ' ' + ctx_b, brackets removed)
        BridgeTask("hellaswag", None, {"validation": ("hellaswag", "hellaswag_val.jsonl")},
                   {"output_type": "multiple_choice", "validation_split": "validation",
                    "doc_to_text": "{% if activity_label %}{{activity_label}}: {% endif %}{{ctx}}",
                    "doc_to_target": "{{label}}", "doc_to_choice": "{{endings}}", "metric_list": _MC_METRICS},
                   primary="acc_norm"),
        # local WinoGrande is in partial-scoring form already: one context per option, shared continuation
        BridgeTask("winogrande", None, {"validation": ("winogrande", "winogrande_dev_partial_scoring.jsonl")},
                   {"output_type": "multiple_choice", "validation_split": "validation",
                    "doc_to_text": "{{gold}}", "doc_to_target": "{{continuation}}",
                    "doc_to_choice": "{{context_options}}", "metric_list": _MC_METRICS[:1]},
                   metrics=("acc",)),
        # lm-eval's mmlu group is 57 per-subject YAMLs that differ only in dataset_name and description; one
        # config over the local all-subjects file, with the description rendered per row, is the same prompt
        # (0-shot only: the template's first_n few-shot sampler would draw dev rows across subjects)
        BridgeTask("mmlu", "mmlu/default/_default_template_yaml", {"test": ("mmlu", "mmlu_test.jsonl")},
                   {"description": "The following are multiple choice questions (with answers) about "
                                   "{{subject.replace('_', ' ')}}.\n\n", "fewshot_split": None},
                   metrics=("acc",)),
        BridgeTask("lambada", "lambada/lambada_openai.yaml", {"test": ("lambada", "lambada_test.jsonl")},
                   {"dataset_name": None}, n_items=_lambada_pool, metrics=("acc", "perplexity")),
    ]
}

COMMONSENSE = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "winogrande"]


def _count_rows(path: Path) -> int:
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def _eval_split(bt: BridgeTask) -> str:
    return "test" if "test" in bt.files else "validation"


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:  # pragma: no cover - lm-eval is a dependency
        raise PrunelabError(f"the lm-eval backend needs the lm-eval package ({exc})") from None
    return lm_eval, HFLM, TaskManager


@contextlib.contextmanager
def task_configs(names: list[str]) -> Iterator[Path]:
    """Write lm-eval task YAMLs (``prunelab_<name>``) over the local files into a temporary directory."""
    import yaml

    lm_eval, _, _ = _lm_eval()
    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    with tempfile.TemporaryDirectory(prefix="prunelab-lmeval-") as tmp:
        for name in names:
            bt = BRIDGE_TASKS[name]
            cfg: dict[str, Any] = {}
            if bt.include:
                cfg["include"] = str(tasks_dir / bt.include)
            cfg.update({"task": f"prunelab_{name}", "tag": [], "dataset_path": "json", "dataset_name": None,
                        "dataset_kwargs": {"data_files": {split: str(require_file(*f)) for split, f in bt.files.items()}},
                        "test_split": "test" if "test" in bt.files else None})
            cfg.update(bt.overrides)
            cfg.setdefault("metadata", {"version": 1.0})
            (Path(tmp) / f"prunelab_{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        yield Path(tmp)


def sample_indices(name: str, limit: int | None, seed: int) -> list[int]:
    """Row indices of the seeded sample prunelab's own task ``name`` evaluates (same limit, seed)."""
    bt = BRIDGE_TASKS[name]
    n = bt.n_items() if bt.n_items else _count_rows(require_file(*bt.files[_eval_split(bt)]))
    return seeded_sample(list(range(n)), limit, seed)


def item_ids(name: str, indices: list[int]) -> list[str]:
    """The prunelab item ids of those rows (so results name the same items as prunelab's tasks)."""
    from prunelab.data import (load_arc, load_boolq, load_hellaswag, load_lambada, load_mmlu, load_piqa,
                               load_winogrande)

    loaders = {"arc_easy": lambda: load_arc("easy"), "arc_challenge": lambda: load_arc("challenge"),
               "piqa": load_piqa, "boolq": load_boolq, "hellaswag": load_hellaswag, "winogrande": load_winogrande,
               "mmlu": lambda: load_mmlu(0), "lambada": load_lambada}
    items = loaders[name]()
    return [items[i].id for i in indices]


ENGINES = ("packed", "hflm")


def lmeval_evaluate(model, tokenizer, tasks: list[str] | str, limit: int | None = None, seed: int = 0,
                    batch_size: int = 8, log_samples: bool = True, engine: str = "packed"):
    """Run ``tasks`` through lm-eval over ``model``; returns an :class:`EvalReport`.

    ``engine``: ``packed`` (:class:`~prunelab.evaluate.lmeval_engine.PackedHFLM`: log-likelihood requests on
    prunelab's packed engine, ``batch_size`` its rows) or ``hflm`` (plain ``HFLM``, ``batch_size`` requests per
    forward). Each ``TaskResult`` holds lm-eval's metrics in percent (perplexity raw), the prunelab item ids,
    and (``details["loglikelihoods"]``) lm-eval's per-item per-choice log-likelihoods.
    """
    from prunelab.evaluate import EvalReport

    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if names == ["all"]:
        names = list(BRIDGE_TASKS)
    unknown = [n for n in names if n not in BRIDGE_TASKS]
    if unknown or not names:
        raise PrunelabError(f"unknown lm-eval bridge task '{(unknown or [''])[0]}'; known: {', '.join(BRIDGE_TASKS)}")
    if limit is not None and limit <= 0:
        raise PrunelabError(f"limit must be a positive number of items, got {limit}")
    if batch_size <= 0:
        raise PrunelabError(f"batch size must be positive, got {batch_size}")
    if engine not in ENGINES:
        raise PrunelabError(f"unknown lm-eval bridge engine '{engine}'; known: {', '.join(ENGINES)}")
    lm_eval, HFLM, TaskManager = _lm_eval()
    if engine == "packed":
        from prunelab.evaluate.lmeval_engine import PackedHFLM

        HFLM = PackedHFLM  # noqa: N806 - the same constructor, log-likelihood requests on the packed engine
    indices = {n: sample_indices(n, limit, seed) for n in names}
    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    report = EvalReport(limit=limit, seed=seed)
    start = time.perf_counter()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    with task_configs(names) as tmp:
        tm = TaskManager(include_path=str(tmp))
        for name in names:
            t0 = time.perf_counter()
            key = f"prunelab_{name}"
            out = lm_eval.simple_evaluate(model=lm, tasks=[key], task_manager=tm, samples={key: indices[name]},
                                          bootstrap_iters=0, log_samples=log_samples)
            res = out["results"][key]
            bt = BRIDGE_TASKS[name]
            metrics = {}
            for m in bt.metrics:
                value = res.get(f"{m},none")
                if value is not None:
                    metrics[m] = float(value) if m == "perplexity" else 100.0 * float(value)
            details: dict[str, Any] = {}
            outcomes: list[ItemOutcome] = []
            if log_samples:
                samples = sorted(out["samples"][key], key=lambda s: s["doc_id"])
                details["loglikelihoods"] = [[float(r[0][0]) for r in s["resps"]] for s in samples]
                details["doc_ids"] = [s["doc_id"] for s in samples]
                # lm-eval logs each sample's own metric values (0/1 for acc / acc_norm): the per-item outcomes
                outcomes = [ItemOutcome(i, correct=float(s[bt.primary]) if bt.primary in s else None,
                                        logliks=tuple(ll))
                            for i, s, ll in zip(item_ids(name, details["doc_ids"]), samples, details["loglikelihoods"])]
            report.results[name] = TaskResult(name, metrics, bt.primary, int(res.get("sample_len", len(indices[name]))),
                                              item_ids(name, indices[name]), time.perf_counter() - t0, details,
                                              outcomes=outcomes)
    report.seconds = time.perf_counter() - start
    return report


def commonsense_suite(model, tokenizer, limit: int | None = None, seed: int = 0, batch_size: int = 8,
                      engine: str = "packed"):
    """ARC-e/c, HellaSwag, PIQA, BoolQ, WinoGrande through lm-eval on the local data (see module docstring)."""
    return lmeval_evaluate(model, tokenizer, COMMONSENSE, limit=limit, seed=seed, batch_size=batch_size,
                           engine=engine)
