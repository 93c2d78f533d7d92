"""The recovery study's generation protocols (ARC-Easy lettered choices, LAMBADA last word) and the
log-likelihood LAMBADA of lm-eval's ``lambada_openai``.

``arc_easy_gen``: prompt ::

    Question: {question}
    A. {choice 1}
    B. {choice 2}
    ...
    Answer:

greedy (temperature 0), ≤ 10 new tokens; the prediction is the first choice letter in the output that
stands alone (not inside a word: `` B.``, ``(C)``, ``answer is D`` all count; ``Because`` does not).
Letters are A, B, C, ... by position (ARC's numeric labels 1-4 are re-lettered). Accuracy in percent.

``lambada_gen``: context = passage without its last word; greedy, ≤ 10 new tokens; prediction = first
whitespace-separated word of the output with punctuation stripped from both ends. See
:func:`lambada_match` for the (case-insensitive exact-or-prefix) rule.
"""

from __future__ import annotations

import math
import re
import string
import time

from prunelab.data import load_arc, load_lambada, seeded_sample, split_lambada
from prunelab.evaluate.generation import generate_greedy
from prunelab.evaluate.loglik import loglikelihood_groups
from prunelab.evaluate.progress import Counter
from prunelab.evaluate.registry import TASKS, TaskResult
from prunelab.errors import PrunelabError
from prunelab.evaluate.tasks._common import percent_stderr

MAX_NEW_TOKENS = 10
LETTERS = "ABCDEFGHIJ"
_PUNCT = string.punctuation + "“”‘’«»…—–"


# ------------------------------------------------------------------------------------------------ ARC (gen)
def arc_gen_prompt(question: str, choices: list[str]) -> str:
    lines = [f"Question: {question}"] + [f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer:"


def parse_choice_letter(output: str, n_choices: int) -> int | None:
    """Index of the first stand-alone choice letter (A.. for ``n_choices``) in ``output``, or None."""
    letters = LETTERS[:n_choices]
    m = re.search(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", output)
    return None if m is None else letters.index(m.group(1))


def chat_wrap(tokenizer, prompt: str) -> str:
    """``prompt`` as one user turn in the tokenizer's chat template, ready for the assistant's reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise PrunelabError("this tokenizer has no chat template; use the raw-prompt task (without _chat)")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def _arc_easy_gen(name: str, model, tokenizer, limit, seed, batch_size, chat: bool) -> TaskResult:
    start = time.perf_counter()
    items = seeded_sample(load_arc("easy", "test"), limit, seed)
    prompts = [arc_gen_prompt(it.query, it.choices) for it in items]
    if chat:
        prompts = [chat_wrap(tokenizer, p) for p in prompts]
    outputs = generate_greedy(model, tokenizer, prompts, MAX_NEW_TOKENS, batch_size, Counter(name, len(items)))
    preds = [parse_choice_letter(o, len(it.choices)) for o, it in zip(outputs, items)]
    hits = [float(p == it.answer) for p, it in zip(preds, items)]
    n = len(items)
    return TaskResult(name, {"acc": 100.0 * sum(hits) / n, "acc_stderr": percent_stderr(hits),
                             "unparsed": 100.0 * sum(p is None for p in preds) / n},
                      "acc", n, [it.id for it in items], time.perf_counter() - start,
                      {"outputs": outputs, "predictions": preds})


@TASKS.register("arc_easy_gen")
def arc_easy_gen(model, tokenizer, limit, seed, batch_size) -> TaskResult:
    """ARC-Easy test, generation protocol (module docstring); acc = 100·mean[parsed letter == answerKey]."""
    return _arc_easy_gen("arc_easy_gen", model, tokenizer, limit, seed, batch_size, chat=False)


@TASKS.register("arc_easy_gen_chat")
def arc_easy_gen_chat(model, tokenizer, limit, seed, batch_size) -> TaskResult:
    """``arc_easy_gen`` with the prompt sent as a user turn of the tokenizer's chat template.

    Instruction-tuned models (e.g. SmolLM2-Instruct) often end their turn right after a raw ``Answer:``;
    in their own chat format they answer. Same items, same parsing, same metric.
    """
    return _arc_easy_gen("arc_easy_gen_chat", model, tokenizer, limit, seed, batch_size, chat=True)


# ------------------------------------------------------------------------------------------------ LAMBADA
def first_word(output: str) -> str:
    """First whitespace-separated word of ``output`` with punctuation stripped from both ends ('' if none)."""
    words = output.split()
    return words[0].strip(_PUNCT) if words else ""


def lambada_match(prediction: str, target: str) -> bool:
    """The LAMBADA generation rule (case-insensitive, punctuation stripped from both words):

    correct iff ``prediction == target``, or ``prediction`` starts with ``target`` (e.g. the model wrote the
    word plus a clitic: "Harry's" → "Harrys" for "Harry"), or ``target`` starts with a ``prediction`` of at
    least 3 characters (a truncated word). An empty prediction is wrong.
    """
    p = prediction.strip(_PUNCT).lower()
    t = target.strip(_PUNCT).lower() or target.lower()
    if not p:
        return False
    return p == t or p.startswith(t) or (len(p) >= 3 and t.startswith(p))


def lambada_eval_items(limit, seed):
    """Seeded sample of the LAMBADA *evaluation* pool (the calibration pool is never evaluated)."""
    return seeded_sample(split_lambada(load_lambada())[0], limit, seed)


@TASKS.register("lambada_gen")
def lambada_gen(model, tokenizer, limit, seed, batch_size) -> TaskResult:
    """LAMBADA generation protocol (module docstring); acc = 100·mean[lambada_match(pred, target)]."""
    start = time.perf_counter()
    items = lambada_eval_items(limit, seed)
    outputs = generate_greedy(model, tokenizer, [it.context for it in items], MAX_NEW_TOKENS, batch_size,
                              Counter("lambada_gen", len(items)))
    preds = [first_word(o) for o in outputs]
    exact = [float(p.lower() == it.target.strip(_PUNCT).lower()) for p, it in zip(preds, items)]
    hits = [float(lambada_match(p, it.target)) for p, it in zip(preds, items)]
    n = len(items)
    return TaskResult("lambada_gen", {"acc": 100.0 * sum(hits) / n, "acc_stderr": percent_stderr(hits),
                                      "exact": 100.0 * sum(exact) / n},
                      "acc", n, [it.id for it in items], time.perf_counter() - start,
                      {"outputs": outputs, "predictions": preds})


@TASKS.register("lambada")
def lambada(model, tokenizer, limit, seed, batch_size) -> TaskResult:
    """lm-eval ``lambada_openai``: context + `` {last word}``; acc = 100·mean[is_greedy],
    ppl = exp(−mean loglik) over passages (lm-eval's ``perplexity`` aggregation)."""
    start = time.perf_counter()
    items = lambada_eval_items(limit, seed)
    scores = loglikelihood_groups(model, tokenizer, [[(it.context, " " + it.target)] for it in items],
                                  batch_size=batch_size * 4, progress=Counter("lambada", len(items)))
    lls = [sc[0][0] for sc in scores]
    hits = [float(sc[0][1]) for sc in scores]
    n = len(items)
    return TaskResult("lambada", {"acc": 100.0 * sum(hits) / n, "acc_stderr": percent_stderr(hits),
                                  "ppl": math.exp(-sum(lls) / n)},
                      "acc", n, [it.id for it in items], time.perf_counter() - start, {"loglikelihoods": lls})
