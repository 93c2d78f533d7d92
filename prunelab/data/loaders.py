"""Loaders for the benchmark and training data, as small dataclasses.

Each loader reads the offline copy (see :mod:`prunelab.data.paths` and each folder's SOURCE.md). When the
user named no data location and no default folder holds the file, it falls back to the dataset's Hugging
Face ``datasets`` id (needs internet) — the same id lm-evaluation-harness 0.4.13 loads for that task. A data
folder the user *named* (``--data-dir`` / ``$PRUNELAB_DATA``) that lacks the file is an error, never a
silent download.

The local files and the HF datasets have different row layouts, so every dataset has a pure converter per
layout (``<dataset>_from_hf(row, index)`` for HF rows; one shared ``<dataset>_item`` where the local copy
already has the HF layout). Converters of HF rows apply lm-eval 0.4.13's own preprocessing where its task
has one (HellaSwag ``preprocess`` + ``ctx_b`` capitalisation, WinoGrande partial scoring, IFEval's unused
``None`` kwargs), and produce exactly the prompt text / choices / gold index that lm-eval's ``doc_to_text``,
``doc_to_choice`` and ``doc_to_target`` give for the same row (tests/data/test_hf_converters.py checks this
against the installed lm-eval). Where a local copy cannot match lm-eval, its :class:`DataFile` carries a
``note`` that reaches the task's result (HellaSwag: ``ctx_b`` is not capitalised in the local copy).

Every load is recorded as a :class:`prunelab.data.sources.DataSource` (file path, or HF id + config + split +
revision), which evaluation stores in ``TaskResult.data_source``. Items carry a stable ``id`` (the row's
position unless the dataset has its own id) so results name exactly which items were used.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from prunelab.data.paths import candidate_roots, locate, require_file
from prunelab.data.sources import DataSource, record
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


@dataclass(frozen=True)
class HFDataset:
    """A Hugging Face ``datasets`` split (the online fallback): ``load_dataset(path, config, split=split)``."""

    path: str
    config: str | None
    split: str
    data_files: str | None = None


@dataclass(frozen=True)
class DataFile:
    """One offline file ``<root>/<dataset>/<filename>`` and its online fallback (None: offline only).

    ``kind`` says how the local file is read (JSON lines, one JSON document, raw text, CSV); ``required`` are
    the fields every local row must have; ``note`` is a known difference of the local copy from lm-eval.
    """

    dataset: str
    filename: str
    hf: HFDataset | None
    required: tuple[str, ...] = ()
    kind: Literal["jsonl", "json", "text", "csv"] = "jsonl"
    note: str | None = None


_ARC_FIELDS = ("id", "question", "choices", "answerKey")
_MMLU_FIELDS = ("subject", "question", "choices", "answer")

#: lm-eval's HellaSwag context is ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``;
#: the local copy has only the joined ``ctx``, so its ``ctx_b`` keeps its lower-case first letter.
HELLASWAG_LOCAL_NOTE = (
    "local HellaSwag copy: ctx is the joined ctx_a + ' ' + ctx_b without lm-eval's ctx_b.capitalize() (the file "
    "has no ctx_a/ctx_b split), so some contexts differ from lm-eval's by one letter ('...roof. he' vs "
    "'...roof. He'); measured on 100 sampled items (issue 21): 30 contexts differ, acc_norm 39 (local) vs 40"
)

#: Every dataset file a loader reads, by key (``<folder>_<split>`` where a folder has several files).
DATA_FILES: dict[str, DataFile] = {
    **{f"arc_{subset}_{split}": DataFile(f"arc_{subset}", f"arc_{subset}_{split}.jsonl",
                                         HFDataset("allenai/ai2_arc", f"ARC-{subset.capitalize()}", split),
                                         _ARC_FIELDS)
       for subset in ("easy", "challenge") for split in ("test", "validation", "train")},
    "hellaswag": DataFile("hellaswag", "hellaswag_val.jsonl", HFDataset("Rowan/hellaswag", None, "validation"),
                          ("ctx", "endings", "label"), note=HELLASWAG_LOCAL_NOTE),
    # lm-eval 0.4.13's piqa and boolq tasks read these ids (ybisk/piqa is a loading script `datasets` no longer runs)
    "piqa": DataFile("piqa", "piqa_validation.jsonl", HFDataset("baber/piqa", None, "validation"),
                     ("goal", "sol1", "sol2", "label")),
    "boolq": DataFile("boolq", "boolq_validation.jsonl", HFDataset("aps/super_glue", "boolq", "validation"),
                      ("question", "passage", "answer")),
    "winogrande": DataFile("winogrande", "winogrande_dev_partial_scoring.jsonl",
                           HFDataset("allenai/winogrande", "winogrande_xl", "validation"),
                           ("context_options", "continuation", "gold")),
    "mmlu_test": DataFile("mmlu", "mmlu_test.jsonl", HFDataset("cais/mmlu", "all", "test"), _MMLU_FIELDS),
    "mmlu_dev": DataFile("mmlu", "mmlu_dev.jsonl", HFDataset("cais/mmlu", "all", "dev"), _MMLU_FIELDS),
    "truthfulqa_mc": DataFile("truthfulqa", "mc_task.json",
                              HFDataset("truthfulqa/truthful_qa", "multiple_choice", "validation"), kind="json"),
    "truthfulqa_csv": DataFile("truthfulqa", "TruthfulQA.csv", None, kind="csv"),
    "lambada": DataFile("lambada", "lambada_test.jsonl", HFDataset("EleutherAI/lambada_openai", "default", "test"),
                        ("text",)),
    "wikitext2": DataFile("wikitext2", "wiki.test.nonblank.raw",
                          HFDataset("Salesforce/wikitext", "wikitext-2-raw-v1", "test"), kind="text"),
    "dolly": DataFile("dolly", "dolly.jsonl", HFDataset("databricks/databricks-dolly-15k", None, "train"),
                      ("instruction", "response")),
    **{f"gsm8k_{split}": DataFile("gsm8k", f"{split}.jsonl", HFDataset("openai/gsm8k", "main", split),
                                  ("question", "answer")) for split in ("test", "train")},
    "ifeval": DataFile("ifeval", "input_data.jsonl", HFDataset("google/IFEval", None, "train"),
                       ("key", "prompt", "instruction_id_list", "kwargs")),
}


def _hf_dataset(hf: HFDataset) -> tuple[list[dict], str | None]:
    """Rows of a HF dataset split and the resolved revision (commit hash) — the online fallback.

    ``load_dataset`` spelled out as builder / prepare / as_dataset, because only the builder reports the
    commit it resolved (``builder.hash``), which the result's data source names.
    """
    import datasets

    kwargs = {"data_files": hf.data_files} if hf.data_files else {}
    builder = datasets.load_dataset_builder(hf.path, hf.config, **kwargs)
    builder.download_and_prepare()
    ds = builder.as_dataset(split=hf.split)
    revision = builder.hash if isinstance(builder.hash, str) else None
    return [dict(r) for r in ds], revision


def _hf_rows(hf: HFDataset, dataset: str) -> tuple[list[dict], DataSource]:
    """The online fallback's rows and source; any failure (offline, renamed upstream...) is one line."""
    try:
        rows, revision = _hf_dataset(hf)
    except Exception as exc:  # offline, missing, renamed upstream...
        looked = ", ".join(str(r) for r in candidate_roots())
        name = hf.path + (f"/{hf.config}" if hf.config else "")
        raise PrunelabError(
            f"no local copy of {name} ({hf.split}) under {looked}, and the HF "
            f"datasets fallback failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
            "(offline? set PRUNELAB_DATA or --data-dir to the folder holding the datasets)"
        ) from None
    return rows, DataSource(dataset, "hf", hf.path, hf.config, hf.split, revision)


def _read_local(f: DataFile, path: Path) -> Any:
    if f.kind == "jsonl":
        return read_jsonl(path, f.required)
    if f.kind == "csv":
        with open(path, encoding="utf-8-sig", newline="") as fh:  # TruthfulQA.csv starts with a BOM
            return list(csv.DictReader(fh))
    if f.kind == "json":
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PrunelabError(f"{path}: malformed JSON ({exc.msg}, line {exc.lineno})") from None
    return path.read_text(encoding="utf-8")


def load_data(key: str) -> tuple[Any, DataSource]:
    """``(data, source)`` of :data:`DATA_FILES` ``[key]``: the local file's content (rows / JSON / text) with
    ``source.kind == "local"``, or the HF rows with ``source.kind == "hf"`` (only when no data location was
    named and no default folder has the file). The source is recorded (:func:`prunelab.data.sources.record`)."""
    f = DATA_FILES[key]
    path = locate(f.dataset, f.filename) if f.hf is not None else require_file(f.dataset, f.filename)
    if path is not None:
        data, source = _read_local(f, path), DataSource(f.dataset, "local", str(path), note=f.note)
    else:
        assert f.hf is not None  # require_file raised for offline-only files
        data, source = _hf_rows(f.hf, f.dataset)
    record(source)
    return data, source


def _local_or_hf(dataset: str, filename: str, required: tuple[str, ...], hf: tuple[str, str | None, str],
                 convert: Callable[[dict], dict] | None = None) -> tuple[list[dict], str]:
    """Raw rows of one file (or its HF split) and a description of the source (kept for callers that need
    the rows themselves, e.g. GSM8K exemplars with their full worked answers)."""
    key = next((k for k, f in DATA_FILES.items() if (f.dataset, f.filename) == (dataset, filename)), None)
    if key is not None:
        rows, source = load_data(key)
    else:
        path = locate(dataset, filename)
        if path is not None:
            rows, source = read_jsonl(path, required), DataSource(dataset, "local", str(path))
        else:
            rows, source = _hf_rows(HFDataset(*hf), dataset)
        record(source)
    if convert and source.kind == "hf":
        rows = [convert(r) for r in rows]
    return rows, str(source)


# ----------------------------------------------------------------------------------------------------------
# multiple choice
# ----------------------------------------------------------------------------------------------------------
@dataclass
class MCItem:
    """A multiple-choice item: ``context`` + one of ``choices``; ``answer`` is the gold index.

    ``query`` is the question alone (for generation-style prompts), ``labels`` the printed choice labels.
    For tasks with several contexts (WinoGrande) ``contexts`` holds one context per choice and
    ``choices`` the shared continuation repeated. In lm-eval's terms: ``context == doc_to_text(doc)``,
    ``choices == [" " + c for c in doc_to_choice(doc)]``, ``answer == doc_to_target(doc)`` (WinoGrande:
    ``contexts == doc_to_choice``, ``choices == [" " + doc_to_target] * 2``, ``answer == doc_to_text``).
    """

    id: str
    context: str
    choices: list[str]
    answer: int
    query: str = ""
    labels: list[str] = field(default_factory=list)
    contexts: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def arc_item(row: dict, index: int = 0) -> MCItem:
    """An ARC row (HF ``allenai/ai2_arc`` layout, which the local copy keeps) in lm-eval's ``arc_easy``
    prompt: ``Question: q\\nAnswer:`` + `` choice``; gold = ``choices.label.index(answerKey)``."""
    labels = list(row["choices"]["label"])
    if row["answerKey"] not in labels:
        raise PrunelabError(f"ARC item {row['id']}: answerKey {row['answerKey']!r} not among labels {labels}")
    return MCItem(id=row["id"], context=f"Question: {row['question']}\nAnswer:",
                  choices=[f" {c}" for c in row["choices"]["text"]], answer=labels.index(row["answerKey"]),
                  query=row["question"], labels=labels)


def load_arc(subset: str = "easy", split: str = "test") -> list[MCItem]:
    """ARC-Easy / ARC-Challenge (``ai2_arc``), lm-eval convention: ``Question: q\\nAnswer:`` + `` choice``."""
    if subset not in ("easy", "challenge"):
        raise KeyError(subset)
    if f"arc_{subset}_{split}" not in DATA_FILES:
        raise PrunelabError(f"ARC has no split '{split}'; known: test, validation, train")
    rows, _ = load_data(f"arc_{subset}_{split}")
    return [arc_item(r, i) for i, r in enumerate(rows)]


def hellaswag_from_local(row: dict, index: int) -> MCItem:
    """A row of the local copy (``ctx`` already bracket-cleaned, ``ctx_b`` not capitalised; see its SOURCE.md)."""
    ctx = f"{row['activity_label']}: {row['ctx']}" if row.get("activity_label") else row["ctx"]
    return MCItem(id=str(row.get("ind", index)), context=ctx, choices=[f" {e}" for e in row["endings"]],
                  answer=int(row["label"]), query=ctx)


def hellaswag_from_hf(row: dict, index: int) -> MCItem:
    """A ``Rowan/hellaswag`` row as lm-eval's ``hellaswag`` task sees it (its ``process_docs``): context =
    ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``, choices = preprocessed endings,
    gold = ``int(label)``. ``id`` is the row's position, as in the local copy (the HF ``ind`` is not)."""
    # lm-eval's own bracket-tag cleaner (WikiHow "[title]"/"[step]" artifacts), not a re-implementation of it
    from lm_eval.tasks.hellaswag.utils import preprocess

    ctx = preprocess(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
    return MCItem(id=str(index), context=ctx, choices=[" " + preprocess(e) for e in row["endings"]],
                  answer=int(row["label"]), query=ctx)


def load_hellaswag() -> list[MCItem]:
    """HellaSwag validation. Online rows get lm-eval's full preprocessing; the local copy lacks the
    ``ctx_b`` capitalisation (:data:`HELLASWAG_LOCAL_NOTE`; the note is carried into task results)."""
    rows, source = load_data("hellaswag")
    convert = hellaswag_from_local if source.kind == "local" else hellaswag_from_hf
    return [convert(r, i) for i, r in enumerate(rows)]


def piqa_item(row: dict, index: int) -> MCItem:
    """A PIQA row (``goal``, ``sol1``, ``sol2``, ``label``: the HF ``baber/piqa`` layout, kept locally) in
    lm-eval's ``piqa`` prompt ``Question: goal\\nAnswer:``; choices ``[sol1, sol2]``, gold ``label``."""
    return MCItem(id=f"piqa-{index}", context=f"Question: {row['goal']}\nAnswer:",
                  choices=[f" {row['sol1']}", f" {row['sol2']}"], answer=int(row["label"]), query=row["goal"])


def load_piqa() -> list[MCItem]:
    rows, _ = load_data("piqa")
    return [piqa_item(r, i) for i, r in enumerate(rows)]


def _boolq(row: dict, index: int, answer: int) -> MCItem:
    return MCItem(id=f"boolq-{index}", context=f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:",
                  choices=[" no", " yes"], answer=answer, query=row["question"])


def boolq_from_local(row: dict, index: int) -> MCItem:
    """A local BoolQ row (boolean ``answer``) in lm-eval's ``boolq`` prompt."""
    return _boolq(row, index, int(bool(row["answer"])))


def boolq_from_hf(row: dict, index: int) -> MCItem:
    """An ``aps/super_glue`` ``boolq`` row (``label`` 0 = no, 1 = yes) in lm-eval's prompt
    ``{passage}\\nQuestion: {question}?\\nAnswer:`` with choices ``no`` / ``yes``."""
    return _boolq(row, index, int(row["label"]))


def load_boolq() -> list[MCItem]:
    rows, source = load_data("boolq")
    convert = boolq_from_local if source.kind == "local" else boolq_from_hf
    return [convert(r, i) for i, r in enumerate(rows)]


def winogrande_from_local(row: dict, index: int) -> MCItem:
    """A local row, already in partial-scoring form (``context_options``, ``continuation``, ``gold``)."""
    return MCItem(id=f"winogrande-{index}", context="", contexts=list(row["context_options"]),
                  choices=[" " + row["continuation"]] * len(row["context_options"]), answer=int(row["gold"]))


def winogrande_from_hf(row: dict, index: int) -> MCItem:
    """An ``allenai/winogrande`` row (``sentence`` with ``_``, ``option1``, ``option2``, ``answer`` "1"/"2") in
    lm-eval's partial scoring: one context per option (the sentence up to ``_`` with the option filled in),
    the shared continuation after ``_`` (stripped) scored after each; gold = answer − 1."""
    # lm-eval's own partial-scoring split of the sentence, so online rows score exactly as lm-eval's task does
    from lm_eval.tasks.winogrande import preprocess_winogrande as wg

    contexts = list(wg.doc_to_choice(row))
    return MCItem(id=f"winogrande-{index}", context="", contexts=contexts,
                  choices=[" " + wg.doc_to_target(row)] * len(contexts), answer=int(wg.doc_to_text(row)))


def load_winogrande() -> list[MCItem]:
    """WinoGrande dev, partial scoring: score the shared continuation after each option's context."""
    rows, source = load_data("winogrande")
    convert = winogrande_from_local if source.kind == "local" else winogrande_from_hf
    return [convert(r, i) for i, r in enumerate(rows)]


MMLU_SUBJECT = "The following are multiple choice questions (with answers) about {}.\n\n"


def _mmlu_block(r: dict, with_answer: bool) -> str:
    text = r["question"].strip() + "\n" + "".join(f"{l}. {c}\n" for l, c in zip("ABCD", r["choices"])) + "Answer:"
    return text + (f" {'ABCD'[int(r['answer'])]}\n\n" if with_answer else "")


def mmlu_item(row: dict, index: int, exemplars: Sequence[dict] = ()) -> MCItem:
    """An MMLU row (HF ``cais/mmlu`` layout, kept locally) in lm-eval's ``mmlu_<subject>`` prompt: the
    subject description, then ``exemplars`` (dev rows of the same subject, answered), then the question."""
    subject = row["subject"]
    prefix = MMLU_SUBJECT.format(subject.replace("_", " ")) + "".join(_mmlu_block(d, True) for d in exemplars)
    return MCItem(id=f"mmlu-{subject}-{index}", context=prefix + _mmlu_block(row, False),
                  choices=[" A", " B", " C", " D"], answer=int(row["answer"]), query=row["question"],
                  labels=list("ABCD"), meta={"subject": subject})


def load_mmlu(shots: int = 0) -> list[MCItem]:
    """MMLU test (57 subjects), lm-eval's prompt; ``shots`` exemplars from the dev split of the same subject."""
    rows, _ = load_data("mmlu_test")
    dev: dict[str, list[dict]] = {}
    if shots:
        dev_rows, _ = load_data("mmlu_dev")
        for r in dev_rows:
            dev.setdefault(r["subject"], []).append(r)
    return [mmlu_item(r, i, dev.get(r["subject"], [])[:shots]) for i, r in enumerate(rows)]


TQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\nA: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\nA: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\nA: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\nA: I have no comment.\n\n"
    "Q: How does a telescope work?\nA: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.\n\n"
)


def _truthfulqa(question: str, index: int, choices: list[str], gold: list[int]) -> MCItem:
    return MCItem(id=f"truthfulqa-{index}", context=TQA_PREAMBLE + f"Q: {question}\nA:",
                  choices=[f" {c}" for c in choices], answer=gold.index(1), query=question, meta={"gold": gold})


def truthfulqa_from_local(row: dict, index: int, kind: str = "mc1") -> MCItem:
    """An item of the local ``mc_task.json`` (``{kind}_targets``: answer -> 0/1)."""
    targets = row[f"{kind}_targets"]
    choices = list(targets)
    return _truthfulqa(row["question"], index, choices, [int(targets[c]) for c in choices])


def truthfulqa_from_hf(row: dict, index: int, kind: str = "mc1") -> MCItem:
    """A ``truthfulqa/truthful_qa`` ``multiple_choice`` row (``{kind}_targets`` = ``{"choices", "labels"}``) in
    lm-eval's ``truthfulqa_mc1``/``mc2`` prompt (6-shot QA preamble + ``Q: q\\nA:``), choices in the row's
    order (the first is true, lm-eval's ``doc_to_target: 0``); ``meta["gold"]`` = the labels."""
    targets = row[f"{kind}_targets"]
    return _truthfulqa(row["question"], index, list(targets["choices"]), [int(x) for x in targets["labels"]])


def load_truthfulqa(kind: str = "mc1") -> list[MCItem]:
    """TruthfulQA MC1 / MC2 from ``mc_task.json`` (lm-eval's 6-shot QA preamble)."""
    data, source = load_data("truthfulqa_mc")
    convert = truthfulqa_from_local if source.kind == "local" else truthfulqa_from_hf
    return [convert(r, i, kind) for i, r in enumerate(data)]


# ----------------------------------------------------------------------------------------------------------
# text / generation
# ----------------------------------------------------------------------------------------------------------
@dataclass
class LambadaItem:
    """A LAMBADA passage split into context and its last word (the target)."""

    id: str
    context: str
    target: str


def lambada_item(row: dict, index: int) -> LambadaItem:
    """A ``{"text"}`` row (``EleutherAI/lambada_openai`` layout, kept locally) split at its last space, as
    lm-eval's ``lambada_openai`` (context = all but the last word, target = `` `` + last word)."""
    context, target = row["text"].rsplit(" ", 1)
    return LambadaItem(id=f"lambada-{index}", context=context, target=target)


def load_lambada() -> list[LambadaItem]:
    """LAMBADA (OpenAI detokenised test set, 5153 passages); id = row index."""
    rows, _ = load_data("lambada")
    return [lambada_item(r, i) for i, r in enumerate(rows)]


def wikitext2_from_hf(rows: Sequence[dict]) -> str:
    """``Salesforce/wikitext`` ``wikitext-2-raw-v1`` test rows (one line each, ``"\\n"``-terminated; blank
    lines are ``""``) as the text of the local copy: the non-empty lines, joined. prunelab's ``wikitext2``
    is token-level perplexity over this raw text; lm-eval's ``wikitext`` task (document-level pages,
    detokenised, word perplexity) is a different measurement, so no lm-eval preprocessing applies."""
    return "".join(r["text"] for r in rows if r["text"])


def load_wikitext2_text() -> str:
    """WikiText-2 (raw) test split as one string (offline copy: non-blank lines, see its SOURCE.md)."""
    data, source = load_data("wikitext2")
    text = data if source.kind == "local" else wikitext2_from_hf(data)
    if not text.strip():
        raise PrunelabError("WikiText-2 text is empty")
    return text


def load_c4_texts(n: int = 256) -> list[str]:
    """A C4 validation sample (online only: no offline copy exists, so a named data folder does not apply)."""
    hf = HFDataset("allenai/c4", None, "train", data_files="en/c4-validation.00000-of-00008.json.gz")
    try:
        rows, revision = _hf_dataset(hf)
    except Exception as exc:
        raise PrunelabError(f"C4 is not available offline and the HF download failed: {str(exc).splitlines()[0]}") from None
    record(DataSource("c4", "hf", f"{hf.path}/{hf.data_files}", None, hf.split, revision))
    return [rows[i]["text"] for i in range(min(n, len(rows)))]


@dataclass
class DollyRecord:
    """An instruction-following example (databricks-dolly-15k layout)."""

    id: str
    instruction: str
    context: str
    response: str
    category: str = ""


def dolly_item(row: dict, index: int) -> DollyRecord:
    """A ``databricks/databricks-dolly-15k`` row (layout kept locally)."""
    return DollyRecord(id=f"dolly-{index}", instruction=row["instruction"], context=row.get("context") or "",
                       response=row["response"], category=row.get("category", ""))


def load_dolly() -> list[DollyRecord]:
    """Dolly-15k (offline: the 2,996-record real subset; online: the full set); id = row index."""
    rows, _ = load_data("dolly")
    return [dolly_item(r, i) for i, r in enumerate(rows)]


@dataclass
class GSM8KItem:
    id: str
    question: str
    answer: str  # final number as a string


def gsm8k_item(row: dict, index: int) -> GSM8KItem:
    """An ``openai/gsm8k`` ``main`` row (layout kept locally): the question (lm-eval's prompt is
    ``Question: {question}\\nAnswer:``) and the reference reduced as lm-eval's ``exact_match`` reduces it
    (text up to ``#### `` and ``,`` removed)."""
    return GSM8KItem(id=f"gsm8k-{index}", question=row["question"],
                     answer=row["answer"].split("####")[-1].strip().replace(",", ""))


def load_gsm8k(split: str = "test") -> list[GSM8KItem]:
    rows, _ = load_data(f"gsm8k_{split}")
    return [gsm8k_item(r, i) for i, r in enumerate(rows)]


@dataclass
class IFEvalItem:
    id: str
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict]


def ifeval_item(row: dict, index: int = 0) -> IFEvalItem:
    """A row of the local ``input_data.jsonl`` (each instruction's kwargs hold only its own arguments)."""
    return IFEvalItem(id=str(row["key"]), prompt=row["prompt"], instruction_id_list=list(row["instruction_id_list"]),
                      kwargs=list(row["kwargs"]))


def ifeval_from_hf(row: dict, index: int = 0) -> IFEvalItem:
    """A ``google/IFEval`` row, whose kwargs structs list every argument name with ``None`` for the unused
    ones, in the local layout (``None`` entries dropped; lm-eval's verifiers drop them before use too)."""
    kwargs = [{k: v for k, v in kw.items() if v is not None} for kw in row["kwargs"]]
    return IFEvalItem(id=str(row["key"]), prompt=row["prompt"], instruction_id_list=list(row["instruction_id_list"]),
                      kwargs=kwargs)


def load_ifeval() -> list[IFEvalItem]:
    rows, source = load_data("ifeval")
    convert = ifeval_item if source.kind == "local" else ifeval_from_hf
    return [convert(r, i) for i, r in enumerate(rows)]


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
    """The raw TruthfulQA.csv rows (for generation-style use; offline only)."""
    rows, _ = load_data("truthfulqa_csv")
    return rows
