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

Both take a prompt **protocol** (``raw`` | ``chat`` | ``auto``; :mod:`prunelab.evaluate.generative_tasks`,
``evaluate(..., protocol=...)``): ``raw`` sends the prompts above as plain text (the study, on a base model);
``chat`` sends them through the tokenizer's chat template with the assistant turn opened
(``add_generation_prompt=True``) — ARC-Easy's prompt as the user turn (:func:`arc_prompt`), LAMBADA's passage
as the start of the assistant's reply after the user turn :data:`LAMBADA_CHAT_INSTRUCTION`
(:func:`lambada_prompt`); ``auto`` = chat iff the tokenizer has a template. Items, parsing and metric are the
same under every protocol; ``details["protocol"]`` names the one used.
"""

from __future__ import annotations

import math
import re
import string
import time

from prunelab.data import load_arc, load_lambada, seeded_sample, split_lambada
from prunelab.evaluate.generation import generate_greedy
from prunelab.evaluate.generative_tasks import SETTINGS, resolve_protocol
from prunelab.evaluate.loglik import loglikelihood_groups
from prunelab.evaluate.progress import Counter
from prunelab.evaluate.registry import GenerationSpec, ItemOutcome, TaskResult, TaskSpec, register_task
from prunelab.errors import PrunelabError
from prunelab.evaluate.tasks._common import percent_stderr

MAX_NEW_TOKENS = 10
#: the study's short answers: ≤ 10 new tokens, prompt in the run's protocol
SHORT_ANSWER = GenerationSpec(MAX_NEW_TOKENS, follows_protocol=True)
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
    """``prompt`` as one user turn in the tokenizer's chat template, with the assistant turn opened
    (``add_generation_prompt=True``) so the model's next tokens are its reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise PrunelabError("this tokenizer has no chat template; use protocol raw (or auto)")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def task_protocol(tokenizer, protocol: str | None) -> str:
    """The protocol a generation task uses: ``protocol`` if given, else the current setting, resolved for
    ``tokenizer`` (``auto`` → ``chat`` iff it has a chat template)."""
    return resolve_protocol(tokenizer, protocol if protocol is not None else SETTINGS.protocol)


def arc_prompt(tokenizer, question: str, choices: list[str], protocol: str) -> str:
    """The ARC-Easy generation prompt under a resolved ``protocol`` (``raw`` or ``chat``)."""
    prompt = arc_gen_prompt(question, choices)
    return chat_wrap(tokenizer, prompt) if protocol == "chat" else prompt


def _arc_easy_gen(name: str, model, tokenizer, limit, seed, batch_size, protocol: str | None) -> TaskResult:
    used = task_protocol(tokenizer, protocol)  # before any work: chat without a template is an error
    start = time.perf_counter()
    items = seeded_sample(load_arc("easy", "test"), limit, seed)
    prompts = [arc_prompt(tokenizer, it.query, it.choices, used) for it in items]
    outputs = generate_greedy(model, tokenizer, prompts, MAX_NEW_TOKENS, batch_size, Counter(name, len(items)))
    preds = [parse_choice_letter(o, len(it.choices)) for o, it in zip(outputs, items)]
    hits = [float(p == it.answer) for p, it in zip(preds, items)]
    n = len(items)
    return TaskResult(name, {"acc": 100.0 * sum(hits) / n, "acc_stderr": percent_stderr(hits),
                             "unparsed": 100.0 * sum(p is None for p in preds) / n},
                      "acc", n, [it.id for it in items], time.perf_counter() - start,
                      {"outputs": outputs, "predictions": preds, "protocol": used},
                      outcomes=[ItemOutcome(it.id, correct=h, prediction=None if p is None else str(p))
                                for it, h, p in zip(items, hits, preds)])


@register_task(TaskSpec("arc_easy_gen", "generation", "acc", higher_is_better=True, label="ARC-Easy (%)",
                        generation=SHORT_ANSWER))
def arc_easy_gen(model, tokenizer, limit, seed, batch_size, protocol: str | None = None) -> TaskResult:
    """ARC-Easy test, generation protocol (module docstring); acc = 100·mean[parsed letter == answerKey].

    ``protocol`` (``raw`` | ``chat`` | ``auto``; default: the current ``generation_settings`` one) picks the
    prompt format (module docstring).
    """
    return _arc_easy_gen("arc_easy_gen", model, tokenizer, limit, seed, batch_size, protocol)


@register_task(TaskSpec("arc_easy_gen_chat", "generation", "acc", higher_is_better=True, label="ARC-Easy chat (%)",
                        generation=GenerationSpec(MAX_NEW_TOKENS)))  # always chat, whatever the protocol
def arc_easy_gen_chat(model, tokenizer, limit, seed, batch_size) -> TaskResult:
    """Alias kept for old specs: ``arc_easy_gen`` with protocol ``chat`` (whatever the current setting).

    Instruction-tuned models (e.g. SmolLM2-Instruct) often end their turn right after a raw ``Answer:``;
    in their own chat format they answer. Same items, same parsing, same metric.
    """
    return _arc_easy_gen("arc_easy_gen_chat", model, tokenizer, limit, seed, batch_size, "chat")


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


#: user turn of the chat LAMBADA prompt; the passage itself opens the assistant's reply (:func:`lambada_prompt`)
LAMBADA_CHAT_INSTRUCTION = "Continue the text."


def lambada_prompt(tokenizer, context: str, protocol: str) -> str:
    """The LAMBADA generation prompt under a resolved ``protocol``: ``raw`` = the passage without its last
    word; ``chat`` = user turn :data:`LAMBADA_CHAT_INSTRUCTION`, then the assistant turn opened and the passage
    written as the start of its reply, so the model's next word is the passage's next word.

    Why not the passage (or an instruction plus the passage) as the user turn: a small instruct model then
    answers *about* the text or starts a new sentence ("The next word of this text is ..."), which the
    first-word rule scores. Measured on SmolLM2-135M-Instruct, 40 items, seed 0: passage as the user turn
    2.5 %; "Continue the text with one word." + passage 5 %; "What is the next word of this text? Answer with
    one word." + passage 2.5 %; this prompt 17.5 %, the raw prompt's 17.5 %.
    """
    return chat_wrap(tokenizer, LAMBADA_CHAT_INSTRUCTION) + context if protocol == "chat" else context


@register_task(TaskSpec("lambada_gen", "generation", "acc", higher_is_better=True, label="LAMBADA (%)",
                        generation=SHORT_ANSWER))
def lambada_gen(model, tokenizer, limit, seed, batch_size, protocol: str | None = None) -> TaskResult:
    """LAMBADA generation protocol (module docstring); acc = 100·mean[lambada_match(pred, target)].

    ``protocol`` (``raw`` | ``chat`` | ``auto``; default: the current ``generation_settings`` one) picks the
    prompt format (:func:`lambada_prompt`).
    """
    used = task_protocol(tokenizer, protocol)  # before any work: chat without a template is an error
    start = time.perf_counter()
    items = lambada_eval_items(limit, seed)
    outputs = generate_greedy(model, tokenizer, [lambada_prompt(tokenizer, it.context, used) for it in items],
                              MAX_NEW_TOKENS, batch_size, Counter("lambada_gen", len(items)))
    preds = [first_word(o) for o in outputs]
    exact = [float(p.lower() == it.target.strip(_PUNCT).lower()) for p, it in zip(preds, items)]
    hits = [float(lambada_match(p, it.target)) for p, it in zip(preds, items)]
    n = len(items)
    return TaskResult("lambada_gen", {"acc": 100.0 * sum(hits) / n, "acc_stderr": percent_stderr(hits),
                                      "exact": 100.0 * sum(exact) / n},
                      "acc", n, [it.id for it in items], time.perf_counter() - start,
                      {"outputs": outputs, "predictions": preds, "protocol": used},
                      outcomes=[ItemOutcome(it.id, correct=h, prediction=p) for it, h, p in zip(items, hits, preds)])


@register_task(TaskSpec("lambada", "loglikelihood", "acc", higher_is_better=True, label="LAMBADA LL (%)"))
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
                      "acc", n, [it.id for it in items], time.perf_counter() - start, {"loglikelihoods": lls},
                      outcomes=[ItemOutcome(it.id, correct=h, logliks=(ll,)) for it, h, ll in zip(items, hits, lls)])
