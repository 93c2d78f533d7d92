"""The model card (README.md) every save writes: HF front matter, recipe, shapes, how to load, no invented metrics."""

from __future__ import annotations

import re

import pytest
import yaml

import prunelab
from prunelab.models.card import model_card, source_info
from tests.export._helpers import per_layer_pruned, tiny_bpe_tokenizer, tiny_llama


def _split(card: str) -> tuple[dict, str]:
    m = re.match(r"^---\n(.*?)\n---\n(.*)$", card, re.S)
    assert m, card[:200]
    return yaml.safe_load(m.group(1)), m.group(2)


def test_save_writes_a_card_with_the_recipe_and_per_layer_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "empty-cache"))  # licence unknown: not in the card
    model = per_layer_pruned(tiny_llama())
    meta = {"pruning": "adaptive", "source": "smollm2-135m", "criterion": "taylor", "ratio": 0.4, "amplitude": 0.02,
            "steps": 10, "calibration_shape": [128, 256]}
    out = prunelab.save(model, tiny_bpe_tokenizer(), tmp_path / "m", metadata=meta)
    front, body = _split((out / "README.md").read_text())
    assert front == {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "library_name": "transformers",
                     "pipeline_tag": "text-generation", "tags": ["pruned", "prunelab"]}
    assert "Adapt-Pruner" in body and "criterion `taylor`" in body and "128 samples × 256 tokens" in body
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", body, re.M)
    assert [tuple(map(int, r)) for r in rows] == [(0, 24, 4, 2), (1, 40, 2, 2), (2, 4, 2, 1)]
    total = prunelab.models.count_parameters(model).total
    assert f"{total:,}" in body
    assert 'prunelab.load("path/to/this/folder")' in body and "--pad-uniform" in body
    assert "No evaluation results were measured" in body


def test_uniform_card_loads_with_plain_transformers_and_shows_stored_metrics_only(tmp_path):
    card = model_card(tiny_llama(), {"source": "org/base-model", "metrics": {"wikitext2_ppl": 21.5}})
    front, body = _split(card)
    assert front["base_model"] == "org/base-model"
    assert "AutoModelForCausalLM.from_pretrained" in body and "Every block: MLP width 48, 4 query heads" in body
    assert "| wikitext2_ppl | 21.5 |" in body and "No evaluation results" not in body


def test_licence_and_base_model_come_from_the_source_card(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "README.md").write_text("---\nlicense: mit\nbase_model: org/original\n---\n# a model\n")
    assert (source_info(str(src)).license, source_info(str(src)).base_model) == ("mit", "org/original")
    front, _ = _split(model_card(tiny_llama(), {"depth_pruning": {"source": str(src), "removed": [1], "n_blocks": 4,
                                                                    "search": "greedy", "objective": "perplexity"}}))
    assert front["license"] == "mit" and front["base_model"] == "org/original"


def test_a_resaved_model_keeps_the_original_base_model(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "empty-cache"))
    first = prunelab.save(tiny_llama(), tiny_bpe_tokenizer(), tmp_path / "a", metadata={"source": "org/base"})
    card = model_card(tiny_llama(), {"source": str(first), "stress": "relapse"})
    assert _split(card)[0]["base_model"] == "org/base"


@pytest.mark.parametrize("meta", [None, {}, {"seed": 3}])
def test_no_metadata_still_gives_a_valid_card(meta):
    front, body = _split(model_card(tiny_llama(), meta))
    assert "base_model" not in front and front["tags"] == ["pruned", "prunelab"]
    assert "No pruning recipe was recorded" in body
