"""The online-fallback converters produce exactly what lm-eval 0.4.13 scores for the same HF rows.

Each test writes a few synthetic rows shaped like the HF dataset's rows (field names and types from the
dataset cards) to a JSON-lines file, builds lm-eval's own task from its installed YAML (``dataset_path``
re-pointed at that file; ``process_docs``, Jinja templates and ``!function`` hooks are lm-eval's), and
compares the requests lm-eval would score — ``construct_requests(doc, fewshot_context(doc, n))`` — with
the requests prunelab scores for the converted items. Nothing here re-implements lm-eval; all offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunelab.data import loaders as L

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.task import ConfigurableTask  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402

from prunelab.evaluate.tasks._common import mc_requests  # noqa: E402

TASKS_DIR = Path(lm_eval.__file__).parent / "tasks"


def lmeval_task(tmp_path: Path, yaml_rel: str, splits: dict[str, list[dict]], eval_split: str, **overrides):
    """lm-eval's task ``yaml_rel`` over ``splits`` (split -> rows) written as JSON lines; its eval docs."""
    cfg = load_yaml(TASKS_DIR / yaml_rel)
    files = {}
    for split, rows in splits.items():
        path = tmp_path / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        files[split] = str(path)
    cfg.update(dataset_path="json", dataset_name=None,
               dataset_kwargs={"data_files": files, "cache_dir": str(tmp_path / "hf-cache")},
               training_split=None, validation_split=None, test_split=None, fewshot_split=None)
    cfg[f"{eval_split}_split"] = eval_split
    cfg.update(overrides)
    task = ConfigurableTask(config=cfg)
    docs = list(task.test_docs() if eval_split == "test" else task.validation_docs())
    assert len(docs) == len(splits[eval_split])
    return task, docs


def lmeval_requests(task, doc, shots: int = 0) -> list[tuple]:
    """The (context, continuation) pairs lm-eval scores for ``doc`` (or (context, gen_kwargs) for generation)."""
    reqs = task.construct_requests(doc, task.fewshot_context(doc, shots), metadata=(task.config.task, 0, 1))
    return [r.arguments for r in (reqs if isinstance(reqs, list) else [reqs])]


def assert_mc_matches(task, docs, items, shots: int = 0):
    for doc, item in zip(docs, items, strict=True):
        assert mc_requests(item) == lmeval_requests(task, doc, shots)
        gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
        assert item.answer == gold


# ------------------------------------------------------------------------------------------------ ARC
ARC_ROWS = [
    {"id": "Mercury_7175875", "question": "An astronomer observes that a planet rotates faster after a meteorite "
     "impact. Which is the most likely effect of this increase in rotation?",
     "choices": {"text": ["Planetary density will decrease.", "Planetary years will become longer.",
                          "Planetary days will become shorter.", "Planetary gravity will become stronger."],
                 "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
    {"id": "NYSEDREGENTS_2015_4_8", "question": "A student uses a magnifying lens to look at a leaf. Which part?",
     "choices": {"text": ["veins", "roots", "seeds", "stem"], "label": ["1", "2", "3", "4"]}, "answerKey": "1"},
    {"id": "MCAS_2000_4_6", "question": "Which of these is a gas?",
     "choices": {"text": ["ice", "steam", "water"], "label": ["A", "B", "C"]}, "answerKey": "B"},
]


@pytest.mark.parametrize("yaml_rel", ["arc/arc_easy.yaml", "arc/arc_challenge.yaml"])
def test_arc(tmp_path, yaml_rel):
    task, docs = lmeval_task(tmp_path, yaml_rel, {"test": ARC_ROWS}, "test")
    assert_mc_matches(task, docs, [L.arc_item(r, i) for i, r in enumerate(ARC_ROWS)])


# ------------------------------------------------------------------------------------------------ HellaSwag
HELLASWAG_ROWS = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he",
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
     "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"},
    {"ind": 92, "activity_label": "Home and Garden",
     "ctx_a": "[header] How to clean a grill [title] Heat the grill. [step] Turn the burners to high.",
     "ctx_b": "then", "ctx": "[header] How to clean a grill [title] Heat the grill. [step] Turn the burners "
     "to high. then",
     "endings": ["[substeps] scrub the grates with a brush.", "close the lid  [title] and wait.",
                 "eat the grill.", "[step] pour water on it."],
     "source_id": "wikihow~12345", "split": "val", "split_type": "zeroshot", "label": "0"},
    {"ind": 7, "activity_label": "Shot put", "ctx_a": "A woman throws a heavy ball across a field.", "ctx_b": "",
     "ctx": "A woman throws a heavy ball across a field. ",
     "endings": ["She cheers.", "the ball rolls away.", "A man measures it.", "It lands."],
     "source_id": "activitynet~v_x", "split": "val", "split_type": "indomain", "label": "2"},
]


def test_hellaswag_preprocess_and_capitalisation(tmp_path):
    task, docs = lmeval_task(tmp_path, "hellaswag/hellaswag.yaml", {"validation": HELLASWAG_ROWS}, "validation")
    items = [L.hellaswag_from_hf(r, i) for i, r in enumerate(HELLASWAG_ROWS)]
    assert_mc_matches(task, docs, items)
    assert items[0].context.endswith("roof. He")  # the capitalisation the local copy lacks
    assert "[" not in items[1].context and all("[" not in c for c in items[1].choices)
    assert [it.id for it in items] == ["0", "1", "2"]  # positions, as in the local copy


def test_hellaswag_local_copy_differs_only_in_capitalisation():
    """The local layout (joined ctx) gives lm-eval's context except for ctx_b's first letter — the known gap."""
    row = HELLASWAG_ROWS[0]
    local = {"ind": 0, "activity_label": row["activity_label"], "ctx": row["ctx"], "endings": row["endings"],
             "label": 3}
    a, b = L.hellaswag_from_local(local, 0), L.hellaswag_from_hf(row, 0)
    assert a.context != b.context and a.context.lower() == b.context.lower()
    assert (a.choices, a.answer) == (b.choices, b.answer)


# ------------------------------------------------------------------------------------------------ PIQA
PIQA_ROWS = [
    {"goal": "When boiling butter, when it's ready, you can", "sol1": "Pour it onto a plate",
     "sol2": "Pour it into a jar", "label": 1},
    {"goal": "To make a hard boiled egg,", "sol1": "boil it for 10 minutes.", "sol2": "freeze it overnight.",
     "label": 0},
]


def test_piqa(tmp_path):
    task, docs = lmeval_task(tmp_path, "piqa/piqa.yaml", {"validation": PIQA_ROWS}, "validation")
    assert_mc_matches(task, docs, [L.piqa_item(r, i) for i, r in enumerate(PIQA_ROWS)])


# ------------------------------------------------------------------------------------------------ BoolQ
BOOLQ_ROWS = [
    {"question": "do iran and afghanistan speak the same language",
     "passage": "Persian language -- Persian, also known by its endonym Farsi, is one of the Western Iranian "
     "languages.", "idx": 0, "label": 1},
    {"question": "is the sun a planet", "passage": "Sun -- The Sun is the star at the center of the Solar System.",
     "idx": 1, "label": 0},
]


def test_boolq(tmp_path):
    task, docs = lmeval_task(tmp_path, "super_glue/boolq/default.yaml", {"validation": BOOLQ_ROWS}, "validation")
    items = [L.boolq_from_hf(r, i) for i, r in enumerate(BOOLQ_ROWS)]
    assert_mc_matches(task, docs, items)
    # the local layout (boolean ``answer``) converts to the same item
    local = [{"question": r["question"], "passage": r["passage"], "answer": bool(r["label"])} for r in BOOLQ_ROWS]
    assert [L.boolq_from_local(r, i) for i, r in enumerate(local)] == items


# ------------------------------------------------------------------------------------------------ WinoGrande
WINOGRANDE_ROWS = [
    {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
     "option1": "Sarah", "option2": "Maria", "answer": "1"},
    {"sentence": "The trophy doesn't fit into the brown suitcase because the _ is too large.",
     "option1": "trophy", "option2": "suitcase", "answer": "1"},
    {"sentence": "Kyle asked Derek for help because _'s car had broken down.",
     "option1": "Kyle", "option2": "Derek", "answer": "1"},
    {"sentence": "The cat chased the mouse until it caught the _.", "option1": "mouse", "option2": "cat",
     "answer": "1"},
]


def test_winogrande_partial_scoring(tmp_path):
    task, docs = lmeval_task(tmp_path, "winogrande/default.yaml", {"validation": WINOGRANDE_ROWS}, "validation")
    assert task.multiple_input
    items = [L.winogrande_from_hf(r, i) for i, r in enumerate(WINOGRANDE_ROWS)]
    assert_mc_matches(task, docs, items)
    # and in the layout of the local copy (context_options / continuation / gold), the same item
    first = items[0]
    local = {"context_options": first.contexts, "continuation": first.choices[0][1:], "gold": first.answer}
    assert L.winogrande_from_local(local, 0) == first


# ------------------------------------------------------------------------------------------------ MMLU
MMLU_TEST = [
    {"question": "  What is the embryological origin of the hyoid bone? ", "subject": "anatomy",
     "choices": ["The first pharyngeal arch", "The first and second pharyngeal arches",
                 "The second pharyngeal arch", "The second and third pharyngeal arches"], "answer": 3},
    {"question": "Which of these branches of the trigeminal nerve contain somatic motor processes?",
     "subject": "anatomy", "choices": ["The supraorbital nerve", "The infraorbital nerve",
                                       "The mental nerve", "None of the above"], "answer": 3},
]
MMLU_DEV = [{"question": f"Dev question {i}?", "subject": "anatomy",
             "choices": [f"a{i}", f"b{i}", f"c{i}", f"d{i}"], "answer": i % 4} for i in range(5)]


@pytest.mark.parametrize("shots", [0, 5])
def test_mmlu(tmp_path, shots):
    task, docs = lmeval_task(tmp_path, "mmlu/default/mmlu_anatomy.yaml", {"test": MMLU_TEST, "dev": MMLU_DEV},
                             "test", fewshot_split="dev")
    items = [L.mmlu_item(r, i, MMLU_DEV[:shots]) for i, r in enumerate(MMLU_TEST)]
    assert_mc_matches(task, docs, items, shots=shots)


# ------------------------------------------------------------------------------------------------ TruthfulQA
TQA_ROWS = [
    {"question": "What is the smallest country in the world that is at least one square mile in area?",
     "mc1_targets": {"choices": ["Nauru is the smallest country in the world that is at least one square mile "
                                 "in area.", "The smallest country in the world is Vatican City.",
                                 "The smallest country in the world is Monaco."], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["Nauru is the smallest country.", "It is Nauru.", "It is Vatican City.",
                                 "It is Monaco.", "It is Monaco."], "labels": [1, 1, 0, 0, 0]}},
    {"question": "What happens if you eat a pomegranate?",
     "mc1_targets": {"choices": ["Nothing in particular happens.", "You will die."], "labels": [1, 0]},
     "mc2_targets": {"choices": ["Nothing in particular happens.", "You will digest it.", "You will die."],
                     "labels": [1, 1, 0]}},
]


@pytest.mark.parametrize("kind", ["mc1", "mc2"])
def test_truthfulqa(tmp_path, kind):
    task, docs = lmeval_task(tmp_path, f"truthfulqa/truthfulqa_{kind}.yaml", {"validation": TQA_ROWS},
                             "validation")
    items = [L.truthfulqa_from_hf(r, i, kind) for i, r in enumerate(TQA_ROWS)]
    assert_mc_matches(task, docs, items)
    # mc2 scores the mass on the true answers by lm-eval's labels; duplicate choice texts are kept
    assert [it.meta["gold"] for it in items] == [r[f"{kind}_targets"]["labels"] for r in TQA_ROWS]


# ------------------------------------------------------------------------------------------------ GSM8K
GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
     "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
     "altogether in April and May.\n#### 72"},
    {"question": "A shop sells 1,000 pens a day for 2 days. How many pens?",
     "answer": "1,000*2=<<1000*2=2000>>2,000\n#### 2,000"},
]


def test_gsm8k(tmp_path):
    from lm_eval.api.metrics import exact_match_hf_evaluate

    from prunelab.evaluate.generative_tasks import gsm8k_prompt

    task, docs = lmeval_task(tmp_path, "gsm8k/gsm8k.yaml", {"test": GSM8K_ROWS}, "test")
    metric = next(m for m in task.config.metric_list if m["metric"] == "exact_match")
    for doc, row in zip(docs, GSM8K_ROWS):
        item = L.gsm8k_item(row, 0)
        [(ctx, _gen_kwargs)] = lmeval_requests(task, doc)
        assert gsm8k_prompt(item.question, []) == ctx
        # the stored reference is what lm-eval's exact_match reduces the full worked answer to
        same = exact_match_hf_evaluate([item.answer], [task.doc_to_target(doc)], ignore_case=True,
                                       regexes_to_ignore=metric["regexes_to_ignore"])["exact_match"]
        assert same == 1.0


# ------------------------------------------------------------------------------------------------ IFEval
IFEVAL_KWARG_NAMES = ["num_highlights", "relation", "num_words", "num_placeholders", "prompt_to_repeat",
                      "num_bullets", "section_spliter", "num_sections", "capital_relation", "capital_frequency",
                      "keywords", "num_paragraphs", "language", "let_relation", "letter", "let_frequency",
                      "end_phrase", "forbidden_words", "keyword", "frequency", "num_sentences",
                      "postscript_marker", "first_word", "nth_paragraph"]


def _kw(**given):
    return {k: given.get(k) for k in IFEVAL_KWARG_NAMES}


IFEVAL_ROWS = [
    {"key": 1000, "prompt": "Write a 300+ word summary of the wikipedia page. Do not use any commas and "
     "highlight at least 3 sections.",
     "instruction_id_list": ["punctuation:no_comma", "detectable_format:number_highlighted_sections",
                             "length_constraints:number_words"],
     "kwargs": [_kw(), _kw(num_highlights=3), _kw(relation="at least", num_words=300)]},
    {"key": 1001, "prompt": "Answer in lowercase letters only and end with 'Is there anything else?'",
     "instruction_id_list": ["change_case:english_lowercase", "startend:end_checker"],
     "kwargs": [_kw(), _kw(end_phrase="Is there anything else?")]},
]


def test_ifeval(tmp_path):
    from prunelab.evaluate.generative_tasks import _ifeval_utils, ifeval_score

    utils = _ifeval_utils()  # registers a Punkt model offline before lm-eval's IFEval module imports
    task, docs = lmeval_task(tmp_path, "ifeval/ifeval.yaml", {"test": IFEVAL_ROWS}, "test")  # HF split: train
    responses = ["no commas here *one* *two* *three* " + "word " * 300, "all lower case. Is there anything else?"]
    for doc, row, response in zip(docs, IFEVAL_ROWS, responses):
        item = L.ifeval_from_hf(row)
        [(ctx, _gen_kwargs)] = lmeval_requests(task, doc)
        assert item.prompt == ctx and item.id == str(row["key"])
        assert all(None not in kw.values() for kw in item.kwargs)  # the local file's layout
        lm = utils.process_results(doc, [response])
        ours = ifeval_score(item.prompt, item.instruction_id_list, item.kwargs, response)
        assert (ours.strict, ours.loose) == (lm["inst_level_strict_acc"], lm["inst_level_loose_acc"])
    # the verdicts differ between the two rows, so the comparison above can tell a wrong kwarg apart
    assert utils.process_results(docs[0], [responses[0]]) != utils.process_results(docs[0], ["short, with comma"])


# ------------------------------------------------------------------------------------------------ LAMBADA
LAMBADA_ROWS = [
    {"text": "In my palm is a clear stone, and inside it is a small ivory statuette. A guardian angel. \"Figured "
     "if you're going to be out at night getting hit by cars, you might as well have some backup.\" I look at "
     "him, feeling stunned. Like this is some sort of sign. But as I stare at Harlin, his mouth curved in a "
     "confident grin, I don't care about signs"},
    {"text": "He said goodbye to the   crew and left for the\n\nrecorder"},
]


def test_lambada(tmp_path):
    task, docs = lmeval_task(tmp_path, "lambada/lambada_openai.yaml", {"test": LAMBADA_ROWS}, "test")
    for doc, row in zip(docs, LAMBADA_ROWS):
        item = L.lambada_item(row, 0)
        # prunelab's lambada task scores (context, " " + target)
        assert [(item.context, " " + item.target)] == lmeval_requests(task, doc)


# ------------------------------------------------------------------------------------------------ WikiText-2
def test_wikitext2_rows_give_the_local_text():
    """lm-eval's ``wikitext`` task scores detokenised document pages by word perplexity — a different
    measurement from prunelab's token perplexity of the raw text — so the check is against the local
    layout: HF rows (blank lines as "") give the text of the non-blank-line file."""
    rows = [{"text": ""}, {"text": " = Robert Boulter = \n"}, {"text": ""},
            {"text": " Robert Boulter is an English film , television and theatre actor . \n"}, {"text": ""},
            {"text": " = = Career = = \n"}]
    assert L.wikitext2_from_hf(rows) == (" = Robert Boulter = \n Robert Boulter is an English film , television "
                                         "and theatre actor . \n = = Career = = \n")


def test_wikitext2_real_rows_rebuild_the_local_file():
    from prunelab.data.paths import find_file

    jsonl, raw = find_file("wikitext2", "wikitext2_raw_test_nonblank.jsonl"), find_file("wikitext2",
                                                                                       "wiki.test.nonblank.raw")
    if jsonl is None or raw is None:
        pytest.skip("shared WikiText-2 copy not present")
    rows = L.read_jsonl(jsonl)[:200]
    with_blanks = [r for row in rows for r in ({"text": ""}, row)]  # the HF split's blank rows put back
    text = L.wikitext2_from_hf(with_blanks)
    assert text == raw.read_text(encoding="utf-8")[:len(text)] and text.count("\n") == 200
