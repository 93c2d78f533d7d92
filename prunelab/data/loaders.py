"""Loaders for the benchmark and training data, as small dataclasses.

Each loader reads the offline copy (see :mod:`prunelab.data.paths` and each folder's SOURCE.md) and, when
no local copy exists, falls back to the dataset's Hugging Face ``datasets`` name (needs internet). Items carry
a stable ``id`` so evaluation results can name exactly which items were used.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prunelab.data.paths import candidate_roots, find_file
from prunelab.errors import PrunelabError


# ----------------------------------------------------------------------------------------------------------
# generic readers
# ----------------------------------------------------------------------------------------------------------
def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Read a JSON-lines file; a malformed row raises an error naming the file and line."""
    path = Path(path)
    rows: list[dict] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PrunelabError(f"{path}:{lineno}: malformed JSON row ({exc.msg})") from None
            if not isinstance(row, dict):
                raise PrunelabError(f"{path}:{lineno}: expected a JSON object per line")
            missing = [k for k in required if k not in row]
            if missing:
                raise PrunelabError(f"{path}:{lineno}: row lacks field(s) {', '.join(missing)}")
            rows.append(row)
    if not rows:
        raise PrunelabError(f"{path} holds no rows")
    return rows


def _hf_rows(name: str, config: str | None, split: str) -> list[dict]:
    """Rows of a HF dataset (online fallback)."""
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # offline, missing, renamed upstream...
        looked = ", ".join(str(r) for r in candidate_roots())
        raise PrunelabError(
            f"no local copy of {name}{'/' + config if config else ''} ({split}) under {looked}, and the HF "
            f"datasets fallback failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    return [dict(r) for r in ds]


def _local_or_hf(dataset: str, filename: str, required: tuple[str, ...], hf: tuple[str, str | None, str],
                 convert: Callable[[dict], dict] | None = None) -> tuple[list[dict], str]:
    path = find_file(dataset, filename)
    if path is not None:
        return read_jsonl(path, required), str(path)
    rows = _hf_rows(*hf)
    if convert:
        rows = [convert(r) for r in rows]
    return rows, f"hf:{hf[0]}/{hf[1]}:{hf[2]}"


# ----------------------------------------------------------------------------------------------------------
# multiple choice
# ----------------------------------------------------------------------------------------------------------
@dataclass
class MCItem:
    """A multiple-choice item: ``context`` + one of ``choices``; ``answer`` is the gold index.

    ``query`` is the question alone (for generation-style prompts), ``labels`` the printed choice labels.
    For tasks with several contexts (WinoGrande) ``contexts`` holds one context per choice and
    ``choices`` the shared continuation repeated.
    """

    id: str
    context: str
    choices: list[str]
    answer: int
    query: str = ""
    labels: list[str] = field(default_factory=list)
    contexts: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def load_arc(subset: str = "easy", split: str = "test") -> list[MCItem]:
    """ARC-Easy / ARC-Challenge (``ai2_arc``), lm-eval convention: ``Question: q\\nAnswer:`` + `` choice``."""
    name = {"easy": "arc_easy", "challenge": "arc_challenge"}[subset]
    rows, _ = _local_or_hf(name, f"{name}_{split}.jsonl", ("id", "question", "choices", "answerKey"),
                           ("allenai/ai2_arc", "ARC-Easy" if subset == "easy" else "ARC-Challenge", split))
    items = []
    for r in rows:
        labels = list(r["choices"]["label"])
        if r["answerKey"] not in labels:
            raise PrunelabError(f"ARC item {r['id']}: answerKey {r['answerKey']!r} not among labels {labels}")
        items.append(MCItem(id=r["id"], context=f"Question: {r['question']}\nAnswer:",
                            choices=[f" {c}" for c in r["choices"]["text"]], answer=labels.index(r["answerKey"]),
                            query=r["question"], labels=labels))
    return items


def load_hellaswag() -> list[MCItem]:
    """HellaSwag validation (text already preprocessed as lm-eval does)."""
    rows, _ = _local_or_hf("hellaswag", "hellaswag_val.jsonl", ("ctx", "endings", "label"),
                           ("Rowan/hellaswag", None, "validation"))
    items = []
    for i, r in enumerate(rows):
        ctx = f"{r['activity_label']}: {r['ctx']}" if r.get("activity_label") else r["ctx"]
        items.append(MCItem(id=str(r.get("ind", i)), context=ctx, choices=[f" {e}" for e in r["endings"]],
                            answer=int(r["label"]), query=ctx))
    return items


def load_piqa() -> list[MCItem]:
    rows, _ = _local_or_hf("piqa", "piqa_validation.jsonl", ("goal", "sol1", "sol2", "label"),
                           ("ybisk/piqa", None, "validation"))
    return [MCItem(id=f"piqa-{i}", context=f"Question: {r['goal']}\nAnswer:", choices=[f" {r['sol1']}", f" {r['sol2']}"],
                   answer=int(r["label"]), query=r["goal"]) for i, r in enumerate(rows)]


def load_boolq() -> list[MCItem]:
    rows, _ = _local_or_hf("boolq", "boolq_validation.jsonl", ("question", "passage", "answer"),
                           ("google/boolq", None, "validation"))
    return [MCItem(id=f"boolq-{i}", context=f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:",
                   choices=[" no", " yes"], answer=int(bool(r["answer"])), query=r["question"])
            for i, r in enumerate(rows)]


def load_winogrande() -> list[MCItem]:
    """WinoGrande dev, partial scoring: score the shared continuation after each option's context."""
    rows, _ = _local_or_hf("winogrande", "winogrande_dev_partial_scoring.jsonl",
                           ("context_options", "continuation", "gold"), ("allenai/winogrande", "winogrande_xl", "validation"))
    return [MCItem(id=f"winogrande-{i}", context="", contexts=list(r["context_options"]),
                   choices=[" " + r["continuation"]] * len(r["context_options"]), answer=int(r["gold"]))
            for i, r in enumerate(rows)]


MMLU_SUBJECT = "The following are multiple choice questions (with answers) about {}.\n\n"


def _mmlu_block(r: dict, with_answer: bool) -> str:
    text = r["question"].strip() + "\n" + "".join(f"{l}. {c}\n" for l, c in zip("ABCD", r["choices"])) + "Answer:"
    return text + (f" {'ABCD'[int(r['answer'])]}\n\n" if with_answer else "")


def load_mmlu(shots: int = 0) -> list[MCItem]:
    """MMLU test (57 subjects), lm-eval's prompt; ``shots`` exemplars from the dev split of the same subject."""
    rows, _ = _local_or_hf("mmlu", "mmlu_test.jsonl", ("subject", "question", "choices", "answer"),
                           ("cais/mmlu", "all", "test"))
    dev: dict[str, list[dict]] = {}
    if shots:
        dev_rows, _ = _local_or_hf("mmlu", "mmlu_dev.jsonl", ("subject", "question", "choices", "answer"),
                                   ("cais/mmlu", "all", "dev"))
        for r in dev_rows:
            dev.setdefault(r["subject"], []).append(r)
    items = []
    for i, r in enumerate(rows):
        subject = r["subject"]
        prefix = MMLU_SUBJECT.format(subject.replace("_", " "))
        prefix += "".join(_mmlu_block(d, True) for d in dev.get(subject, [])[:shots])
        items.append(MCItem(id=f"mmlu-{subject}-{i}", context=prefix + _mmlu_block(r, False),
                            choices=[" A", " B", " C", " D"], answer=int(r["answer"]), query=r["question"],
                            labels=list("ABCD"), meta={"subject": subject}))
    return items


def load_truthfulqa(kind: str = "mc1") -> list[MCItem]:
    """TruthfulQA MC1 / MC2 from ``mc_task.json`` (lm-eval's 6-shot QA preamble)."""
    path = find_file("truthfulqa", "mc_task.json")
    if path is None:
        rows = _hf_rows("truthfulqa/truthful_qa", "multiple_choice", "validation")
        data = [{"question": r["question"],
                 "mc1_targets": dict(zip(r["mc1_targets"]["choices"], r["mc1_targets"]["labels"])),
                 "mc2_targets": dict(zip(r["mc2_targets"]["choices"], r["mc2_targets"]["labels"]))} for r in rows]
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PrunelabError(f"{path}: malformed JSON ({exc.msg}, line {exc.lineno})") from None
    items = []
    for i, r in enumerate(data):
        targets = r[f"{kind}_targets"]
        choices = list(targets)
        gold = [int(targets[c]) for c in choices]
        items.append(MCItem(id=f"truthfulqa-{i}", context=TQA_PREAMBLE + f"Q: {r['question']}\nA:",
                            choices=[f" {c}" for c in choices], answer=gold.index(1), query=r["question"],
                            meta={"gold": gold}))
    return items


TQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\nA: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\nA: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\nA: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\nA: I have no comment.\n\n"
    "Q: How does a telescope work?\nA: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.\n\n"
)


# ----------------------------------------------------------------------------------------------------------
# text / generation
# ----------------------------------------------------------------------------------------------------------
@dataclass
class LambadaItem:
    """A LAMBADA passage split into context and its last word (the target)."""

    id: str
    context: str
    target: str


def load_lambada() -> list[LambadaItem]:
    """LAMBADA (OpenAI detokenised test set, 5153 passages); id = row index."""
    path = find_file("lambada", "lambada_test.jsonl")
    if path is not None:
        rows = read_jsonl(path, ("text",))
    else:
        rows = _hf_rows("EleutherAI/lambada_openai", "default", "test")
    items = []
    for i, r in enumerate(rows):
        context, target = r["text"].rsplit(" ", 1)
        items.append(LambadaItem(id=f"lambada-{i}", context=context, target=target))
    return items


def load_wikitext2_text() -> str:
    """WikiText-2 (raw) test split as one string (offline copy: non-blank lines, see its SOURCE.md)."""
    path = find_file("wikitext2", "wiki.test.nonblank.raw")
    if path is not None:
        text = path.read_text(encoding="utf-8")
    else:
        rows = _hf_rows("Salesforce/wikitext", "wikitext-2-raw-v1", "test")
        text = "".join(r["text"] for r in rows)
    if not text.strip():
        raise PrunelabError("WikiText-2 text is empty")
    return text


def load_c4_texts(n: int = 256) -> list[str]:
    """A C4 validation sample (online only: no offline copy exists here)."""
    try:
        import datasets

        ds = datasets.load_dataset("allenai/c4", data_files="en/c4-validation.00000-of-00008.json.gz", split="train")
    except Exception as exc:
        raise PrunelabError(f"C4 is not available offline and the HF download failed: {str(exc).splitlines()[0]}") from None
    return [ds[i]["text"] for i in range(min(n, len(ds)))]


@dataclass
class DollyRecord:
    """An instruction-following example (databricks-dolly-15k layout)."""

    id: str
    instruction: str
    context: str
    response: str
    category: str = ""


def load_dolly() -> list[DollyRecord]:
    """Dolly-15k (offline: the 2,996-record real subset; online: the full set); id = row index."""
    path = find_file("dolly", "dolly.jsonl")
    if path is not None:
        rows = read_jsonl(path, ("instruction", "response"))
    else:
        rows = _hf_rows("databricks/databricks-dolly-15k", None, "train")
    return [DollyRecord(id=f"dolly-{i}", instruction=r["instruction"], context=r.get("context") or "",
                        response=r["response"], category=r.get("category", "")) for i, r in enumerate(rows)]


@dataclass
class GSM8KItem:
    id: str
    question: str
    answer: str  # final number as a string

    
def load_gsm8k(split: str = "test") -> list[GSM8KItem]:
    rows, _ = _local_or_hf("gsm8k", f"{split}.jsonl", ("question", "answer"), ("openai/gsm8k", "main", split))
    return [GSM8KItem(id=f"gsm8k-{i}", question=r["question"], answer=r["answer"].split("####")[-1].strip().replace(",", ""))
            for i, r in enumerate(rows)]


@dataclass
class IFEvalItem:
    id: str
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict]


def load_ifeval() -> list[IFEvalItem]:
    rows, _ = _local_or_hf("ifeval", "input_data.jsonl", ("key", "prompt", "instruction_id_list", "kwargs"),
                           ("google/IFEval", None, "train"))
    return [IFEvalItem(id=str(r["key"]), prompt=r["prompt"], instruction_id_list=list(r["instruction_id_list"]),
                       kwargs=list(r["kwargs"])) for r in rows]


def read_text_file(path: str | Path) -> str:
    """A user-supplied text file (calibration); clear errors for missing or empty files."""
    p = Path(path)
    if not p.is_file():
        raise PrunelabError(f"text file {p} does not exist")
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise PrunelabError(f"text file {p} is empty")
    return text


def load_truthfulqa_csv() -> list[dict]:
    """The raw TruthfulQA.csv rows (for generation-style use)."""
    path = find_file("truthfulqa", "TruthfulQA.csv")
    if path is None:
        raise PrunelabError("TruthfulQA.csv not found under any data root")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))
