"""Generative and truthfulness tasks: ``gsm8k``, ``ifeval``, ``truthfulqa_mc1``, ``truthfulqa_mc2``.

Each task follows lm-evaluation-harness 0.4.13 and reuses its code where it exists:

- **gsm8k**: prompt ``Question: {q}\\nAnswer:`` after ``shots`` exemplars ``Question: q\\nAnswer: a\\n\\n`` from the
  train split (lm-eval's ``gsm8k`` task, no chat template); greedy decoding until ``Question:``, ``</s>``,
  ``<|im_end|>`` or EOS. The answer is extracted with lm-eval's own ``RegexFilter`` — *strict-match*
  ``#### (-?[0-9.,]+)`` (first match) and *flexible-extract* ``(-?[$0-9.,]{2,})|(-?[0-9]+)`` (last match) — and
  compared with lm-eval's ``exact_match`` (ignore case, strip ``,``, ``$``, a trailing ``.``). Primary metric:
  ``exact_match_flexible`` (a small model rarely writes ``####``; strict-match is reported beside it).
- **ifeval**: the IFEval prompts, wrapped in the tokenizer's chat template when it has one, decoded greedily
  (``max_new_tokens``, default 256; lm-eval uses 1280); scored by lm-eval's IFEval verifiers
  (``lm_eval.tasks.ifeval.utils.test_instruction_following_strict/_loose``). Metrics (percent):
  prompt-level strict/loose = share of prompts whose every instruction is followed; instruction-level
  strict/loose = share of all instructions followed. Primary: ``prompt_level_strict_acc``.
- **truthfulqa_mc1**: lm-eval's 6-shot QA preamble + ``Q: {q}\\nA:``; each choice scored by its summed
  log-likelihood ℓ_i; acc = 1 if argmax_i ℓ_i is the (single) true answer.
- **truthfulqa_mc2**: the normalised probability mass on the true answers,
  ``MC2 = Σ_{i true} exp(ℓ_i) / Σ_i exp(ℓ_i)`` (lm-eval's ``process_results_mc2``), computed in log space.

Each task's fixed description (kind, primary metric, default budget) is its
:class:`~prunelab.evaluate.registry.TaskSpec`. What a run may change (new-token budgets, GSM8K shots, chat
template on/off, the prompt ``protocol`` of the recovery study's generation tasks) is not part of the
registry's task signature, so it lives in :data:`SETTINGS` and is changed with :func:`generation_settings`
(``evaluate(..., protocol=...)`` does this).

**Prompt protocol** (``arc_easy_gen``, ``lambada_gen`` and ``composite``; :func:`resolve_protocol`): ``raw``
sends the study's prompt as plain text (right for a base model, e.g. the study's Llama-3.2-1B); ``chat`` sends
it as one user turn of the tokenizer's chat template with the assistant turn opened
(``add_generation_prompt=True``), which an instruction-tuned model needs (SmolLM2-Instruct ends its turn right
after a raw ``Answer:``); ``auto`` = ``chat`` when the tokenizer has a chat template, else ``raw``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from prunelab.data import load_gsm8k, load_ifeval, load_truthfulqa, seeded_sample
from prunelab.errors import PrunelabError
from prunelab.evaluate.generation import cut_at_stop, generate_until  # noqa: F401  (cut_at_stop: re-exported)
from prunelab.evaluate.registry import TASK_SPECS, GenerationSpec, ItemOutcome, TaskResult, TaskSpec, register_task


# ----------------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------------
GenerationProtocol = Literal["raw", "chat", "auto"]
#: the prompt protocols (module docstring); ``auto`` resolves to ``raw`` or ``chat``
PROTOCOLS: tuple[str, ...] = get_args(GenerationProtocol)


def protocol_tasks() -> frozenset[str]:
    """The tasks whose prompts follow the protocol: every registered task whose
    :class:`~prunelab.evaluate.registry.GenerationSpec` says ``follows_protocol`` (``arc_easy_gen``,
    ``lambada_gen``), plus ``composite``, which has no prompts of its own and follows it through its parts."""
    from prunelab.evaluate import load_tasks  # the built-in tasks register when their modules are imported

    load_tasks()
    followers = {name for name in TASK_SPECS.names()
                 if (g := TASK_SPECS.get(name).generation) is not None and g.follows_protocol}
    return frozenset(followers | {"composite"})


def check_protocol(protocol: str) -> GenerationProtocol:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else a one-line :class:`PrunelabError`."""
    if protocol not in PROTOCOLS:
        raise PrunelabError(f"unknown prompt protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
    return protocol  # type: ignore[return-value]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_protocol(tokenizer: Any, protocol: str) -> Literal["raw", "chat"]:
    """The protocol actually used with ``tokenizer``: ``auto`` → ``chat`` iff it has a chat template.

    ``chat`` on a tokenizer without a template is a :class:`PrunelabError` (call this before any work).
    """
    protocol = check_protocol(protocol)
    if protocol == "auto":
        return "chat" if has_chat_template(tokenizer) else "raw"
    if protocol == "chat" and not has_chat_template(tokenizer):
        raise PrunelabError("protocol 'chat' needs a chat template, but this model's tokenizer has none; "
                            "use protocol raw or auto")
    return protocol  # type: ignore[return-value]


#: the default new-token budgets (lm-eval uses 1280 for IFEval); a run may change them (:func:`generation_settings`)
IFEVAL_MAX_NEW_TOKENS = 256
GSM8K_MAX_NEW_TOKENS = 256


@dataclass
class GenerationSettings:
    """Per-run knobs of the generative tasks (the registry's task signature has no room for them); the
    defaults are the tasks' :class:`~prunelab.evaluate.registry.GenerationSpec` budgets."""

    ifeval_max_new_tokens: int = IFEVAL_MAX_NEW_TOKENS
    gsm8k_max_new_tokens: int = GSM8K_MAX_NEW_TOKENS
    gsm8k_shots: int = 5
    #: wrap IFEval prompts in the tokenizer's chat template when it has one
    chat_template: bool = True
    #: prompt protocol of the generation tasks (module docstring); ``auto`` is resolved per tokenizer
    protocol: GenerationProtocol = "auto"


SETTINGS = GenerationSettings()


@contextlib.contextmanager
def generation_settings(**changes: Any) -> Iterator[GenerationSettings]:
    """Temporarily change :data:`SETTINGS` (validated), e.g. ``with generation_settings(gsm8k_shots=0): ...``."""
    unknown = set(changes) - {f.name for f in dataclasses.fields(GenerationSettings)}
    if unknown:
        raise PrunelabError(f"unknown generation setting(s) {', '.join(sorted(unknown))}")
    for key in ("ifeval_max_new_tokens", "gsm8k_max_new_tokens"):
        if key in changes and int(changes[key]) <= 0:
            raise PrunelabError(f"{key} must be a positive number of tokens, got {changes[key]}")
    if "gsm8k_shots" in changes and int(changes["gsm8k_shots"]) < 0:
        raise PrunelabError(f"gsm8k_shots must be ≥ 0, got {changes['gsm8k_shots']}")
    if "protocol" in changes:
        check_protocol(changes["protocol"])
    old = dataclasses.replace(SETTINGS)
    for k, v in changes.items():
        setattr(SETTINGS, k, v)
    try:
        yield SETTINGS
    finally:
        for f in dataclasses.fields(GenerationSettings):
            setattr(SETTINGS, f.name, getattr(old, f.name))


# ----------------------------------------------------------------------------------------------------------
# chat template
# ----------------------------------------------------------------------------------------------------------
def apply_chat(tokenizer: Any, prompt: str, enabled: bool = True) -> tuple[str, bool]:
    """``(text, templated)``: the prompt as a single user turn of the chat template, if the tokenizer has one."""
    if enabled and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return str(text), True
    return prompt, False


# ----------------------------------------------------------------------------------------------------------
# GSM8K
# ----------------------------------------------------------------------------------------------------------
GSM8K_STRICT = r"#### (\-?[0-9\.\,]+)"
GSM8K_FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
GSM8K_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]
GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")


def gsm8k_extract(response: str) -> tuple[str, str]:
    """``(strict, flexible)`` answers of one response, with lm-eval's ``RegexFilter`` ("[invalid]" if none)."""
    from lm_eval.filters.extraction import RegexFilter

    strict = RegexFilter(GSM8K_STRICT, group_select=0).apply([[response]], [{}])[0][0]
    flexible = RegexFilter(GSM8K_FLEXIBLE, group_select=-1).apply([[response]], [{}])[0][0]
    return strict, flexible


def gsm8k_match(prediction: str, reference: str) -> bool:
    """lm-eval's ``exact_match`` with the gsm8k task's options (ignore case, ``,``/``$``/trailing ``.``)."""
    from lm_eval.api.metrics import exact_match_hf_evaluate

    return bool(exact_match_hf_evaluate([prediction], [reference], regexes_to_ignore=GSM8K_IGNORE,
                                        ignore_case=True)["exact_match"])


def gsm8k_prompt(question: str, shots: Sequence[tuple[str, str]]) -> str:
    """lm-eval's gsm8k prompt: exemplars ``Question: q\\nAnswer: a`` joined by blank lines, then the question."""
    return "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots) + f"Question: {question}\nAnswer:"


def _gsm8k_shots(n: int, seed: int) -> list[tuple[str, str]]:
    if n == 0:
        return []
    from prunelab.data.loaders import _local_or_hf

    # the loader keeps only the final number; exemplars need the full worked answer (with "#### N")
    rows, _ = _local_or_hf("gsm8k", "train.jsonl", ("question", "answer"), ("openai/gsm8k", "main", "train"))
    return [(r["question"], r["answer"]) for r in seeded_sample(rows, n, seed + 1234)]


@register_task(TaskSpec("gsm8k", "generation", "exact_match_flexible", higher_is_better=True, label="GSM8K (%)",
                        generation=GenerationSpec(GSM8K_MAX_NEW_TOKENS, lm_eval_rules=True)))
def gsm8k(model: Any, tokenizer: Any, limit: int | None, seed: int, batch_size: int) -> TaskResult:
    """GSM8K test: greedy, exact final number (strict and flexible extraction), percent."""
    t0 = time.perf_counter()
    items = seeded_sample(load_gsm8k("test"), limit, seed)
    shots = _gsm8k_shots(SETTINGS.gsm8k_shots, seed)
    stop = list(GSM8K_STOP) + ([tokenizer.eos_token] if tokenizer.eos_token else [])
    responses = generate_until(model, tokenizer, [gsm8k_prompt(it.question, shots) for it in items],
                                SETTINGS.gsm8k_max_new_tokens, batch_size, stop=stop)
    strict_ok, flex_ok, preds = [], [], []
    for it, resp in zip(items, responses):
        strict, flexible = gsm8k_extract(resp)
        strict_ok.append(gsm8k_match(strict, it.answer))
        flex_ok.append(gsm8k_match(flexible, it.answer))
        preds.append({"id": it.id, "strict": strict, "flexible": flexible, "answer": it.answer})
    n = len(items)
    return TaskResult(
        task="gsm8k",
        metrics={"exact_match_flexible": 100.0 * sum(flex_ok) / n, "exact_match_strict": 100.0 * sum(strict_ok) / n},
        primary="exact_match_flexible", n=n, item_ids=[it.id for it in items], seconds=time.perf_counter() - t0,
        details={"shots": len(shots), "max_new_tokens": SETTINGS.gsm8k_max_new_tokens, "predictions": preds},
        # per item: the primary (flexible-extract) verdict and the number it extracted
        outcomes=[ItemOutcome(it.id, correct=float(ok), prediction=p["flexible"])
                  for it, ok, p in zip(items, flex_ok, preds)],
    )


# ----------------------------------------------------------------------------------------------------------
# IFEval
# ----------------------------------------------------------------------------------------------------------
#: True when the trained English Punkt model (nltk ``punkt_tab``) was missing and an untrained one was used.
PUNKT_FALLBACK = False


def _ensure_punkt() -> None:
    """Make nltk's ``punkt_tab`` resource findable before lm-eval's IFEval module imports.

    lm-eval downloads ``punkt_tab`` at import time; offline that download fails and sentence counting
    (``length_constraints:number_sentences``) and ``word_tokenize`` (``change_case:capital_word_frequency``)
    then crash. When the trained English model is absent we register an *untrained* Punkt model (empty
    parameter files = Punkt's default rules without the learned abbreviation list) under prunelab's cache,
    and flag it in the results (``details["punkt"]``) so the deviation is visible.
    """
    global PUNKT_FALLBACK
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    from prunelab.models.sources import cache_dir

    root = cache_dir() / "nltk_data"
    english = root / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True, exist_ok=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (english / name).touch()
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    PUNKT_FALLBACK = True


def _ifeval_utils() -> Any:
    _ensure_punkt()
    try:
        import langdetect
        from lm_eval.tasks.ifeval import utils
    except ImportError as exc:
        raise PrunelabError(f"IFEval scoring needs lm-eval's verifiers and their dependencies ({exc.name} is "
                            "missing): pip install langdetect immutabledict nltk") from None
    langdetect.DetectorFactory.seed = 0  # langdetect is randomised; fixed seed = same verdicts on every run
    return utils


@dataclass
class IFEvalScore:
    """Verdicts for one response: per instruction, strict and loose."""

    strict: list[bool]
    loose: list[bool]


def ifeval_score(prompt: str, instruction_id_list: list[str], kwargs: list[dict], response: str) -> IFEvalScore:
    """Score one response with lm-eval's IFEval verifiers (strict: as written; loose: also with the first
    and/or last line removed and ``*`` stripped, any variant passing)."""
    utils = _ifeval_utils()
    inp = utils.InputExample(key=0, instruction_id_list=instruction_id_list, prompt=prompt, kwargs=kwargs)
    strict = utils.test_instruction_following_strict(inp, response)
    loose = utils.test_instruction_following_loose(inp, response)
    return IFEvalScore(strict=list(strict.follow_instruction_list), loose=list(loose.follow_instruction_list))


def ifeval_metrics(scores: Sequence[IFEvalScore]) -> dict[str, float]:
    """Prompt-level accuracy = mean over prompts of all(followed); instruction-level = mean over all
    instructions (lm-eval's ``agg_inst_level_acc``); percent."""
    if not scores:
        raise PrunelabError("no IFEval responses to score")
    out = {}
    for mode in ("strict", "loose"):
        verdicts = [getattr(s, mode) for s in scores]
        flat = [v for vs in verdicts for v in vs]
        out[f"prompt_level_{mode}_acc"] = 100.0 * sum(all(vs) for vs in verdicts) / len(verdicts)
        out[f"inst_level_{mode}_acc"] = 100.0 * sum(flat) / len(flat)
    return out


@register_task(TaskSpec("ifeval", "generation", "prompt_level_strict_acc", higher_is_better=True, label="IFEval (%)",
                        generation=GenerationSpec(IFEVAL_MAX_NEW_TOKENS, lm_eval_rules=True)))
def ifeval(model: Any, tokenizer: Any, limit: int | None, seed: int, batch_size: int) -> TaskResult:
    """IFEval: greedy responses (chat template if any) scored strictly and loosely, percent."""
    t0 = time.perf_counter()
    items = seeded_sample(load_ifeval(), limit, seed)
    _ifeval_utils()  # fail on missing verifier dependencies before generating anything
    wrapped = [apply_chat(tokenizer, it.prompt, SETTINGS.chat_template) for it in items]
    stop = [tokenizer.eos_token] if tokenizer.eos_token else []
    responses = generate_until(model, tokenizer, [w[0] for w in wrapped], SETTINGS.ifeval_max_new_tokens,
                                batch_size, stop=stop)
    scores = [ifeval_score(it.prompt, it.instruction_id_list, it.kwargs, r) for it, r in zip(items, responses)]
    return TaskResult(
        task="ifeval", metrics=ifeval_metrics(scores), primary="prompt_level_strict_acc", n=len(items),
        item_ids=[it.id for it in items], seconds=time.perf_counter() - t0,
        details={"chat_template": bool(wrapped and wrapped[0][1]), "max_new_tokens": SETTINGS.ifeval_max_new_tokens,
                 "punkt": "untrained (punkt_tab absent)" if PUNKT_FALLBACK else "punkt_tab",
                 "responses": [{"id": it.id, "response": r, "strict": s.strict, "loose": s.loose}
                               for it, r, s in zip(items, responses, scores)]},
        # correct = the primary prompt-level strict verdict: every instruction followed
        outcomes=[ItemOutcome(it.id, correct=float(all(s.strict)), verdicts=tuple(s.strict),
                              verdicts_loose=tuple(s.loose)) for it, s in zip(items, scores)],
    )


# ----------------------------------------------------------------------------------------------------------
# TruthfulQA MC1 / MC2
# ----------------------------------------------------------------------------------------------------------
def mc1_correct(logliks: Sequence[float], gold: Sequence[int]) -> bool:
    """MC1: the highest-log-likelihood choice is a true one (exactly one is)."""
    if len(logliks) != len(gold) or not logliks:
        raise PrunelabError("MC1 needs one log-likelihood per labelled choice")
    best = max(range(len(logliks)), key=lambda i: logliks[i])  # first index wins ties, as numpy's argmax
    return bool(gold[best])


def mc2_score(logliks: Sequence[float], gold: Sequence[int]) -> float:
    """MC2 = Σ_{i: gold_i=1} exp(ℓ_i) / Σ_i exp(ℓ_i), in [0, 1].

    lm-eval computes ``exp`` directly; here both sums are taken as log-sum-exp so long answers (ℓ ≪ −700)
    do not underflow to 0/0. The value is the same wherever lm-eval's is finite.
    """
    if len(logliks) != len(gold) or not logliks:
        raise PrunelabError("MC2 needs one log-likelihood per labelled choice")
    if not any(gold) or all(gold):
        raise PrunelabError("MC2 needs at least one true and one false choice")
    ll = torch.tensor([float(x) for x in logliks], dtype=torch.float64)
    true = torch.tensor([bool(g) for g in gold])
    return float(torch.exp(torch.logsumexp(ll[true], 0) - torch.logsumexp(ll, 0)))


def choice_logliks(model: Any, tokenizer: Any, items: Sequence[Any], batch_size: int) -> list[list[float]]:
    """Summed log-likelihood ℓ of every choice of every item given its context (lm-eval's scorer, with the
    shared context run once per item: :func:`prunelab.evaluate.loglik.loglikelihood_groups`)."""
    from prunelab.evaluate.loglik import loglikelihood_groups

    groups = [[(it.context, c) for c in it.choices] for it in items]
    return [[float(ll) for ll, _ in g] for g in loglikelihood_groups(model, tokenizer, groups, batch_size=batch_size)]


def _truthfulqa(kind: str, model: Any, tokenizer: Any, limit: int | None, seed: int, batch_size: int) -> TaskResult:
    t0 = time.perf_counter()
    items = seeded_sample(load_truthfulqa(kind), limit, seed)
    lls = choice_logliks(model, tokenizer, items, batch_size)
    if kind == "mc1":
        scores = [float(mc1_correct(ll, it.meta["gold"])) for ll, it in zip(lls, items)]
    else:
        scores = [mc2_score(ll, it.meta["gold"]) for ll, it in zip(lls, items)]
    acc = 100.0 * sum(scores) / len(scores)
    if not math.isfinite(acc):
        raise PrunelabError(f"TruthfulQA {kind} produced a non-finite score (the model's logits hold NaN/inf)")
    # prediction = the highest-log-likelihood choice (first wins ties), for MC1 and MC2 alike
    outcomes = [ItemOutcome(it.id, correct=sc, prediction=str(max(range(len(ll)), key=lambda i: ll[i])),
                            logliks=tuple(ll)) for it, sc, ll in zip(items, scores, lls)]
    return TaskResult(task=f"truthfulqa_{kind}", metrics={"acc": acc}, primary="acc", n=len(items),
                      item_ids=[it.id for it in items], seconds=time.perf_counter() - t0, outcomes=outcomes)


@register_task(TaskSpec("truthfulqa_mc1", "loglikelihood", "acc", higher_is_better=True, label="TruthfulQA MC1 (%)"))
def truthfulqa_mc1(model: Any, tokenizer: Any, limit: int | None, seed: int, batch_size: int) -> TaskResult:
    """TruthfulQA MC1 accuracy (percent)."""
    return _truthfulqa("mc1", model, tokenizer, limit, seed, batch_size)


@register_task(TaskSpec("truthfulqa_mc2", "loglikelihood", "acc", higher_is_better=True, label="TruthfulQA MC2 (%)"))
def truthfulqa_mc2(model: Any, tokenizer: Any, limit: int | None, seed: int, batch_size: int) -> TaskResult:
    """TruthfulQA MC2: mean normalised probability mass on the true answers (percent)."""
    return _truthfulqa("mc2", model, tokenizer, limit, seed, batch_size)
