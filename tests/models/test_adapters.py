"""Family adapters: an abstract test base that every family subclasses with a tiny config (SliceGPT's pattern)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models import adapter_for, supported_model_types
from tests.tiny import tiny_model


class AdapterContract:
    """Checks every family adapter must pass; subclasses set ``family``."""

    family: str

    @pytest.fixture
    def model(self):
        return tiny_model(self.family)

    def test_layers_and_norms(self, model):
        adapter = adapter_for(model)
        layers = adapter.layers(model)
        assert len(layers) == model.config.num_hidden_layers
        for layer in layers:
            norms = adapter.norms(layer)
            assert len(norms) >= 2 and all(hasattr(n, "weight") for n in norms)
        assert hasattr(adapter.final_norm(model), "weight")
        assert adapter.embeddings(model).weight.shape[0] == model.config.vocab_size

    def test_projection_shapes(self, model):
        adapter = adapter_for(model)
        hidden = model.config.hidden_size
        for layer in adapter.layers(model):
            lay = adapter.head_layout(layer)
            assert (lay.num_heads, lay.num_kv_heads) == (4, 2)
            gate, up, down = adapter.mlp_weights(layer)
            assert gate.shape == up.shape == (48, hidden) and down.shape == (hidden, 48)
            q, k, v, o = adapter.attention_weights(layer)
            d = lay.head_dim
            assert q.shape == (4 * d, hidden) and k.shape == v.shape == (2 * d, hidden) and o.shape == (hidden, 4 * d)
            assert adapter.mlp_width(layer) == 48

    def test_weights_are_views(self, model):
        """Criteria read the adapter's tensors: they must be the model's storage, not copies."""
        adapter = adapter_for(model)
        layer = adapter.layers(model)[0]
        storages = {p.untyped_storage().data_ptr() for p in layer.parameters()}
        for tensor in (*adapter.mlp_weights(layer), *adapter.attention_weights(layer)):
            assert tensor.untyped_storage().data_ptr() in storages

    def test_linear_modules_cover_all_block_linears(self, model):
        adapter = adapter_for(model)
        layer = adapter.layers(model)[0]
        found = {id(m) for m in adapter.linear_modules(layer).values()}
        actual = {id(m) for m in layer.modules() if isinstance(m, nn.Linear)}
        assert found == actual

    def test_lora_targets(self, model):
        adapter = adapter_for(model)
        names = adapter.lora_target_modules(["q", "k", "v", "o", "gate", "up", "down"])
        leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        assert set(names) <= leaves
        assert len(names) == len(set(names))


class TestLlama(AdapterContract):
    family = "llama"


class TestQwen2(AdapterContract):
    family = "qwen2"


class TestQwen3(AdapterContract):
    """Qwen3 maps to the Qwen2 adapter; its per-head q/k RMSNorm (``q_norm``, ``k_norm``) must not get in the way."""

    family = "qwen3"

    def test_maps_to_the_qwen2_adapter(self, model):
        assert model.config.model_type == "qwen3" and adapter_for(model).family == "qwen2"


class TestMistral(AdapterContract):
    family = "mistral"


class TestGemma2(AdapterContract):
    family = "gemma2"


class TestPhi3(AdapterContract):
    family = "phi3"

    def test_fused_targets(self, model):
        assert adapter_for(model).lora_target_modules(["q", "v", "gate", "up"]) == ["qkv_proj", "gate_up_proj"]


def test_unsupported_architecture_lists_supported():
    with pytest.raises(PrunelabError) as err:
        adapter_for("gpt2")
    msg = str(err.value)
    assert "gpt2" in msg and all(t in msg for t in supported_model_types())


def test_unknown_projection():
    with pytest.raises(PrunelabError, match="unknown projection"):
        adapter_for("llama").lora_target_modules(["qq"])
