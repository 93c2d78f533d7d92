"""Prompt protocol (raw | chat | auto) of the generation tasks: resolution, the prompts sent, the protocol
named in every result, and chat on a tokenizer without a template refused before any work."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prunelab.cli import app
from prunelab.errors import PrunelabError
from prunelab.evaluate import evaluate
from prunelab.evaluate.generative_tasks import generation_settings, resolve_protocol
from prunelab.evaluate.tasks import generative
from tests.tiny import save_tiny, tiny_model, tiny_tokenizer

# a template in the shape of SmolLM2's (ChatML): the assistant turn is opened only with add_generation_prompt
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
OPEN = "<|assistant|>"


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", max_position_embeddings=1024)


def plain():
    return tiny_tokenizer()


def templated():
    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture
def sent(monkeypatch):
    """The prompts the generation tasks hand to the generator (the real generator still runs)."""
    prompts: list[str] = []
    real = generative.generate_greedy

    def spy(model, tokenizer, ps, *args, **kwargs):
        prompts.extend(ps)
        return real(model, tokenizer, ps, *args, **kwargs)

    monkeypatch.setattr(generative, "generate_greedy", spy)
    return prompts


def test_resolution():
    assert resolve_protocol(plain(), "auto") == "raw" and resolve_protocol(templated(), "auto") == "chat"
    assert resolve_protocol(plain(), "raw") == "raw" and resolve_protocol(templated(), "raw") == "raw"
    assert resolve_protocol(templated(), "chat") == "chat"
    with pytest.raises(PrunelabError, match="needs a chat template"):
        resolve_protocol(plain(), "chat")
    with pytest.raises(PrunelabError, match="unknown prompt protocol 'instruct'; known: raw, chat, auto"):
        resolve_protocol(plain(), "instruct")


@pytest.mark.parametrize("protocol, tok, used", [
    ("auto", plain, "raw"), ("auto", templated, "chat"), ("raw", templated, "raw"), ("chat", templated, "chat"),
])
def test_prompts_and_results_name_the_protocol(model, sent, protocol, tok, used):
    rep = evaluate(model, tok(), ["composite"], limit=2, protocol=protocol)
    assert rep.protocol == used
    assert rep.results["composite"].details["protocol"] == used
    for part in ("arc_easy_gen", "lambada_gen"):
        assert rep.dependencies[part].details["protocol"] == used
    arc_items = rep.dependencies["arc_easy_gen"]
    assert len(sent) == 4  # 2 ARC prompts, then 2 LAMBADA prompts
    arc, lam = sent[:2], sent[2:]
    from prunelab.evaluate.tasks.generative import lambada_eval_items

    contexts = [it.context for it in lambada_eval_items(2, 0)]
    if used == "raw":
        assert all(p.endswith("\nAnswer:") and OPEN not in p for p in arc)
        assert lam == contexts
    else:  # the study's prompt as the user turn; the assistant turn opened so the model answers
        assert all(p.startswith("<|user|>Question: ") and p.endswith("\nAnswer:<|end|>" + OPEN) for p in arc)
        opening = f"<|user|>{generative.LAMBADA_CHAT_INSTRUCTION}<|end|>{OPEN}"
        assert lam == [opening + c for c in contexts]  # the passage opens the assistant's reply
    assert arc_items.n == 2


def test_chat_without_template_fails_before_any_work(model, sent, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("data was loaded")

    monkeypatch.setattr(generative, "load_arc", no_data)
    monkeypatch.setattr(generative, "lambada_eval_items", no_data)
    for tasks in (["arc_easy_gen"], ["lambada_gen"], ["composite"], ["arc_easy", "arc_easy_gen_chat"]):
        with pytest.raises(PrunelabError, match="chat template"):
            evaluate(model, plain(), tasks, limit=2, protocol="chat" if "arc_easy" not in tasks else "raw")
    assert sent == []
    # a protocol the requested tasks do not use is not refused (only checked for being a known one)
    with pytest.raises(PrunelabError, match="unknown prompt protocol"):
        evaluate(model, plain(), ["wikitext2"], limit=1, protocol="instruct")


def test_explicit_parameter_overrides_the_setting(model, sent):
    with generation_settings(protocol="raw"):
        res = generative.arc_easy_gen(model, templated(), 1, 0, 1, protocol="chat")
    assert res.details["protocol"] == "chat" and sent[0].endswith(OPEN)
    with generation_settings(protocol="chat"):
        assert generative.lambada_gen(model, templated(), 1, 0, 1).details["protocol"] == "chat"
    with pytest.raises(PrunelabError, match="unknown prompt protocol"):
        with generation_settings(protocol="instruct"):
            pass


def test_arc_easy_gen_chat_alias_is_chat_protocol(model, sent):
    """The old task name still runs: arc_easy_gen with protocol chat, whatever protocol was asked for."""
    alias = evaluate(model, templated(), ["arc_easy_gen_chat"], limit=2, protocol="raw").results["arc_easy_gen_chat"]
    new = evaluate(model, templated(), ["arc_easy_gen"], limit=2, protocol="chat").results["arc_easy_gen"]
    assert alias.details["protocol"] == "chat" and sent[:2] == sent[2:]
    assert alias.item_ids == new.item_ids and alias.details["outputs"] == new.details["outputs"]


def test_cli_protocol(tmp_path):
    path = save_tiny(tmp_path, max_position_embeddings=1024)  # its tokenizer has no chat template
    runner = CliRunner()
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["eval", str(path), "--tasks", "lambada_gen", "--limit", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["protocol"] == "raw" and data["results"]["lambada_gen"]["details"]["protocol"] == "raw"
    assert "protocol raw" in res.stdout
    for args, msg in ((["--protocol", "chat"], "needs a chat template"),
                      (["--protocol", "instruct"], "unknown prompt protocol 'instruct'")):
        res = runner.invoke(app, ["eval", str(path), "--tasks", "lambada_gen", "--limit", "2", *args])
        assert isinstance(res.exception, PrunelabError) and msg in str(res.exception), res.output


@pytest.mark.real_model
def test_smollm2_chat_prompts_open_the_assistant_turn():
    """SmolLM2-Instruct has a template; auto picks chat and every chat prompt ends with the assistant turn
    opened (``add_generation_prompt=True``), so the model's next tokens are its answer."""
    from transformers import AutoTokenizer

    from prunelab.models.io import resolve_source

    path, _ = resolve_source("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(str(path))
    assert resolve_protocol(tok, "auto") == "chat"
    arc = generative.arc_prompt(tok, "Which is a gas?", ["ice", "steam"], "chat")
    assert arc.endswith("B. steam\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
    lam = generative.lambada_prompt(tok, "He opened the", "chat")
    assert lam.endswith("<|im_start|>assistant\nHe opened the")
