"""Save and reload: uniform → plain transformers; per-layer → HF per_layer_config schema + prunelab.load."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunelab
from prunelab.errors import PrunelabError
from prunelab.models import prune_attention_heads, prune_mlp_neurons, remove_layers
from tests.tiny import tiny_model, tiny_tokenizer

X = torch.randint(3, 120, (2, 10), generator=torch.Generator().manual_seed(1))


def logits(model):
    with torch.no_grad():
        return model(input_ids=X).logits


def test_uniform_pruning_reloads_with_plain_transformers(family, tmp_path):
    model = tiny_model(family)
    for i in range(4):
        prune_mlp_neurons(model, i, range(0, 48, 2))
        prune_attention_heads(model, i, [0, 2])
    remove_layers(model, [3])
    before = logits(model)
    prunelab.save(model, tiny_tokenizer(), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["intermediate_size"] == 24 and cfg["num_hidden_layers"] == 3
    assert cfg["num_attention_heads"] == 2 and cfg["num_key_value_heads"] == 2
    assert not cfg.get("per_layer_config")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(logits(plain), before, rtol=0, atol=1e-6)


def test_per_layer_pruning_round_trips(family, tmp_path):
    model = tiny_model(family)
    prune_mlp_neurons(model, 0, range(10))
    prune_mlp_neurons(model, 2, range(30))
    prune_attention_heads(model, 1, [0, 1])  # one KV group left in layer 1
    before = logits(model)
    prunelab.save(model, tiny_tokenizer(), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    plc = {int(k): v for k, v in cfg["per_layer_config"].items()}
    assert plc[0]["intermediate_size"] == 10 and plc[2]["intermediate_size"] == 30
    assert plc[1]["num_key_value_heads"] == 1
    lm = prunelab.load(tmp_path / "m")
    torch.testing.assert_close(logits(lm.model), before, rtol=0, atol=1e-6)
    info = prunelab.model_info(lm.model)
    assert info.intermediate_sizes == [10, 48, 30, 48] and info.num_kv_heads == [2, 1, 2, 2]
    with torch.no_grad():
        out = lm.model.generate(X[:1], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 14)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    model = tiny_model("llama")
    target = tmp_path / "m"

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(model), "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        prunelab.save(model, None, target)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_missing_path():
    with pytest.raises(PrunelabError, match="not found"):
        prunelab.load("/no/such/model")


def test_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(PrunelabError, match="not a model directory"):
        prunelab.load(tmp_path)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(PrunelabError, match="unsupported architecture 'gpt2'"):
        prunelab.load(tmp_path)


def test_corrupt_safetensors(tmp_path):
    model = tiny_model("llama")
    prunelab.save(model, tiny_tokenizer(), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(PrunelabError, match="corrupt checkpoint"):
        prunelab.load(tmp_path / "m")


def test_corrupt_config(tmp_path):
    prunelab.save(tiny_model("llama"), tiny_tokenizer(), tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(PrunelabError, match="corrupt config.json"):
        prunelab.load(tmp_path / "m")


def test_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(PrunelabError, match="not a .gguf"):
        prunelab.load(f)
