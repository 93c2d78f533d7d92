"""GGUF export, checked with the gguf package's own reader and with transformers' GGUF loader (no llama.cpp)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import prunelab
from prunelab.errors import PrunelabError
from prunelab.export.gguf import _adds_special, export_gguf, gguf_vocab, permute_rotary
from prunelab.models import layer_shapes, remove_layers
from tests.export._helpers import per_layer_pruned, tiny_bpe_tokenizer, tiny_llama
from tests.tiny import tiny_model


@pytest.fixture
def tok():
    return tiny_bpe_tokenizer()


def _reader(path):
    import gguf

    return gguf.GGUFReader(str(path))


def _field(reader, key):
    f = reader.get_field(key)
    return None if f is None else f.contents()


def _tensor(reader, name) -> np.ndarray:
    """A tensor back in PyTorch [out, in] layout, dequantised to fp32."""
    import gguf

    t = next(t for t in reader.tensors if t.name == name)
    data = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(data, dtype=np.float32).reshape(list(reversed(t.shape.tolist())))


def _unpermute(w: np.ndarray, head_dim: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k permutation (interleaved pairs → rotate-half halves), written independently."""
    n = w.shape[0] // head_dim
    return w.reshape(n, head_dim // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def _check_weights(model, reader, head_dim=8):
    adapter = prunelab.models.adapter_for(model)
    emb = adapter.embeddings(model).weight.detach().numpy()
    np.testing.assert_array_equal(_tensor(reader, "token_embd.weight"), emb)
    for i, layer in enumerate(adapter.layers(model)):
        wq, wk, wv, wo = (w.detach().numpy() for w in adapter.attention_weights(layer))
        gate, up, down = (w.detach().numpy() for w in adapter.mlp_weights(layer))
        np.testing.assert_array_equal(_unpermute(_tensor(reader, f"blk.{i}.attn_q.weight"), head_dim), wq)
        np.testing.assert_array_equal(_unpermute(_tensor(reader, f"blk.{i}.attn_k.weight"), head_dim), wk)
        for name, ref in (("attn_v", wv), ("attn_output", wo), ("ffn_gate", gate), ("ffn_up", up),
                          ("ffn_down", down), ("attn_norm", layer.input_layernorm.weight.detach().numpy()),
                          ("ffn_norm", layer.post_attention_layernorm.weight.detach().numpy())):
            np.testing.assert_array_equal(_tensor(reader, f"blk.{i}.{name}.weight"), ref, err_msg=f"{i} {name}")
    np.testing.assert_array_equal(_tensor(reader, "output_norm.weight"), adapter.final_norm(model).weight.detach().numpy())


def test_permutation_matches_llama_cpp_formula():
    """``reshape(n_head, 2, d/2, H).swapaxes(1, 2)``: row r = h·d + 2j + s takes HF row h·d + s·d/2 + j."""
    d, n, hidden = 8, 3, 5
    w = torch.arange(n * d * hidden, dtype=torch.float32).reshape(n * d, hidden)
    p = permute_rotary(w, d)
    for h in range(n):
        for j in range(d // 2):
            for s in range(2):
                assert torch.equal(p[h * d + 2 * j + s], w[h * d + s * d // 2 + j])


def test_uniform_export_is_llama_architecture_with_exact_weights(tmp_path, tok):
    model = tiny_llama()
    rep = export_gguf(model, tok, tmp_path / "m.gguf", tokenizer_pre_name="gpt-2", pad_to=1)
    r = _reader(rep.path)
    assert rep.architecture == "llama" and _field(r, "general.architecture") == "llama"
    assert _field(r, "llama.block_count") == 4
    assert _field(r, "llama.feed_forward_length") == 48
    assert _field(r, "llama.attention.head_count") == 4 and _field(r, "llama.attention.head_count_kv") == 2
    assert _field(r, "llama.attention.key_length") == 8 and _field(r, "llama.rope.dimension_count") == 8
    assert _field(r, "llama.embedding_length") == 32 and _field(r, "llama.vocab_size") == 300
    names = [t.name for t in r.tensors]
    assert names[0] == "token_embd.weight" and names[-1] == "output_norm.weight"  # tied: no output.weight
    assert names[1:10] == [f"blk.0.{n}.weight" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                          "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")]
    _check_weights(model, r)


def test_per_layer_export_writes_deci_arrays_and_drops_removed_blocks(tmp_path, tok):
    model = per_layer_pruned(tiny_llama())
    shapes = layer_shapes(model)
    rep = export_gguf(model, tok, tmp_path / "m.gguf", tokenizer_pre_name="gpt-2", pad_to=1)
    r = _reader(rep.path)
    assert rep.architecture == "deci" and _field(r, "general.architecture") == "deci"
    assert _field(r, "deci.block_count") == len(shapes) == 3
    assert _field(r, "deci.feed_forward_length") == [s["intermediate_size"] for s in shapes] == [24, 40, 4]
    assert _field(r, "deci.attention.head_count") == [s["num_attention_heads"] for s in shapes]
    assert _field(r, "deci.attention.head_count_kv") == [s["num_key_value_heads"] for s in shapes]
    assert not any(t.name.startswith("blk.3.") for t in r.tensors)
    _check_weights(model, r)


def test_mistral_with_untied_lm_head_writes_output(tmp_path, tok):
    model = tiny_llama(family="mistral")
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    r = _reader(export_gguf(model, tok, tmp_path / "m.gguf", tokenizer_pre_name="gpt-2", pad_to=1).path)
    assert _field(r, "general.architecture") == "llama"
    np.testing.assert_array_equal(_tensor(r, "output.weight"), model.lm_head.weight.detach().numpy())
    _check_weights(model, r)


@pytest.mark.parametrize("outtype,kind,tol", [("f16", "F16", 1e-3), ("bf16", "BF16", 1e-2), ("q8_0", "Q8_0", 2e-2)])
def test_outtypes_store_matrices_in_the_type_and_norms_in_f32(tmp_path, tok, outtype, kind, tol):
    model = tiny_llama()
    rep = export_gguf(model, tok, tmp_path / "m.gguf", outtype=outtype, tokenizer_pre_name="gpt-2", pad_to=1)
    r = _reader(rep.path)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_q.weight"] == kind
    assert rep.f16_fallback == [] and types["blk.0.ffn_down.weight"] == kind
    up = model.model.layers[1].mlp.up_proj.weight.detach().numpy()
    got = _tensor(r, "blk.1.ffn_up.weight")
    assert got.shape[0] == (64 if outtype == "q8_0" else 48) and not got[48:].any()  # q8_0: zero neurons to 64
    np.testing.assert_allclose(got[:48], up, atol=tol * np.abs(up).max())
    assert _field(r, "general.file_type") == {"f16": 1, "bf16": 32, "q8_0": 7}[outtype]


def test_tokenizer_is_carried_over(tmp_path, tok):
    r = _reader(export_gguf(tiny_llama(), tok, tmp_path / "m.gguf", tokenizer_pre_name="gpt-2").path)
    vocab = tok.get_vocab()
    tokens = _field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == 300 and all(vocab[t] == i for i, t in enumerate(tokens))
    types = _field(r, "tokenizer.ggml.token_type")
    assert types[:3] == [3, 3, 3] and set(types[3:]) == {1}  # special tokens CONTROL, the rest NORMAL
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert len(_field(r, "tokenizer.ggml.merges")) == len(merges) > 0
    assert _field(r, "tokenizer.ggml.model") == "gpt2" and _field(r, "tokenizer.ggml.pre") == "gpt-2"
    assert _field(r, "tokenizer.ggml.bos_token_id") == tok.bos_token_id == 1
    assert _field(r, "tokenizer.ggml.eos_token_id") == tok.eos_token_id == 2
    assert "<|im_start|>" in _field(r, "tokenizer.chat_template")
    assert _field(r, "tokenizer.ggml.add_bos_token") is False and _field(r, "tokenizer.ggml.add_space_prefix") is False


def test_vocabulary_rows_beyond_the_tokenizer_are_unused_pads(tok):
    v = gguf_vocab(tok, 310, "gpt-2")
    assert v.tokens[300:] == [f"[PAD{i}]" for i in range(300, 310)] and set(v.token_types[300:]) == {5}


def test_unknown_bpe_fingerprint_needs_an_explicit_pre_tokenizer(tmp_path, tok):
    with pytest.raises(PrunelabError, match="--tokenizer-pre"):
        export_gguf(tiny_llama(), tok, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("family,what", [("qwen2", "biases"), ("gemma2", "soft-caps"), ("phi3", "fused")])
def test_families_llama_cpp_llama_graph_cannot_run_are_refused(tmp_path, tok, family, what):
    with pytest.raises(PrunelabError, match=f"{what}.*supported families: llama, mistral"):
        export_gguf(tiny_model(family, vocab_size=300), tok, tmp_path / "m.gguf", tokenizer_pre_name="gpt-2")
    assert list(tmp_path.iterdir()) == []


def test_unknown_outtype_and_foreign_target_are_refused_before_writing(tmp_path, tok):
    with pytest.raises(PrunelabError, match="unknown GGUF outtype 'q4_k'.*f32, f16, bf16, q8_0"):
        export_gguf(tiny_llama(), tok, tmp_path / "m.gguf", outtype="q4_k", tokenizer_pre_name="gpt-2")
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"user data")
    with pytest.raises(PrunelabError, match="did not write"):
        export_gguf(tiny_llama(), tok, mine, tokenizer_pre_name="gpt-2")
    assert mine.read_bytes() == b"user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.gguf"]


def test_a_prunelab_gguf_is_replaced_atomically(tmp_path, tok):
    out = tmp_path / "m.gguf"
    export_gguf(tiny_llama(seed=0), tok, out, tokenizer_pre_name="gpt-2")
    first = out.read_bytes()
    export_gguf(tiny_llama(seed=1), tok, out, tokenizer_pre_name="gpt-2")
    assert out.read_bytes() != first


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_uniform_gguf_reloads_in_prunelab_with_identical_logits(tmp_path, tok, cache):
    """transformers' GGUF loader undoes llama.cpp's q/k permutation: equal logits prove ours is its inverse."""
    model = tiny_llama()
    remove_layers(model, [1])  # depth pruning keeps the model uniform: plain llama architecture
    export_gguf(model, tok, tmp_path / "m.gguf", tokenizer_pre_name="gpt-2")
    lm = prunelab.load(tmp_path / "m.gguf")
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    assert lm.tokenizer.encode("the quick brown fox") == tok.encode("the quick brown fox")


def test_truncated_or_per_layer_gguf_is_one_line_in_prunelab(tmp_path, tok, cache):
    export_gguf(tiny_llama(), tok, tmp_path / "m.gguf", tokenizer_pre_name="gpt-2")
    data = (tmp_path / "m.gguf").read_bytes()
    for n, cut in (("a", len(data) // 2), ("b", 20), ("c", len(data) - 7)):
        (tmp_path / f"{n}.gguf").write_bytes(data[:cut])
        with pytest.raises(PrunelabError, match="truncated") as exc:
            prunelab.load(tmp_path / f"{n}.gguf")
        assert "\n" not in str(exc.value)
    export_gguf(per_layer_pruned(tiny_llama()), tok, tmp_path / "pl.gguf", tokenizer_pre_name="gpt-2")
    with pytest.raises(PrunelabError, match="per-layer GGUF.*deci") as exc:
        prunelab.load(tmp_path / "pl.gguf")
    assert "\n" not in str(exc.value)


@pytest.mark.real_model
def test_smollm2_tokenizer_metadata_matches_the_original_gguf():
    """Our scheme, filled from the HF tokenizer, reproduces the GGUF SmolLM2 is distributed as."""
    import gguf

    from prunelab.models.sources import alias_gguf

    lm = prunelab.load("smollm2-135m")
    v = gguf_vocab(lm.tokenizer, 49152)
    orig = gguf.GGUFReader(str(alias_gguf("smollm2-135m")))
    assert v.model == _field(orig, "tokenizer.ggml.model") == "gpt2"
    assert v.pre == _field(orig, "tokenizer.ggml.pre") == "smollm"
    assert v.tokens == _field(orig, "tokenizer.ggml.tokens")
    assert v.token_types == _field(orig, "tokenizer.ggml.token_type")
    assert v.special.merges == _field(orig, "tokenizer.ggml.merges")
    for key, name in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        assert v.special.special_token_ids.get(key) == _field(orig, f"tokenizer.ggml.{name}_token_id"), key
    assert v.special.chat_template == _field(orig, "tokenizer.chat_template")
    assert _adds_special(lm.tokenizer) == {"bos": _field(orig, "tokenizer.ggml.add_bos_token"), "eos": False}


def test_q8_0_pads_mlp_widths_to_whole_blocks_with_exact_zeros(tmp_path, tok):
    """Q8_0 packs rows of 32: widths 24/40/4 are written as 32/64/32 with zero neurons, so ffn_down quantises."""
    model = per_layer_pruned(tiny_llama())
    rep = export_gguf(model, tok, tmp_path / "m.gguf", outtype="q8_0", tokenizer_pre_name="gpt-2")
    r = _reader(rep.path)
    assert rep.intermediate_sizes == _field(r, "deci.feed_forward_length") == [32, 64, 32]
    assert rep.f16_fallback == ["blk.1.attn_output.weight", "blk.2.attn_output.weight"]  # 2 heads × 8 = 16 < 32
    for i, width in enumerate([24, 40, 4]):
        gate, up, down = (w.detach().numpy() for w in prunelab.models.adapter_for(model).mlp_weights(model.model.layers[i]))
        g, u, d = (_tensor(r, f"blk.{i}.ffn_{n}.weight") for n in ("gate", "up", "down"))
        assert not g[width:].any() and not u[width:].any() and not d[:, width:].any()
        np.testing.assert_allclose(d[:, :width], down, atol=0.02 * np.abs(down).max())


def test_default_export_pads_mlp_widths_to_32_with_exact_zeros(tmp_path, tok):
    """llama.cpp's fast f32 kernels need tile-sized widths; padding adds zero gate/up rows and down columns only."""
    model = per_layer_pruned(tiny_llama())
    widths = [layer.mlp.down_proj.weight.shape[1] for layer in model.model.layers]
    rep = export_gguf(model, tok, tmp_path / "m.gguf", tokenizer_pre_name="gpt-2")
    assert rep.intermediate_sizes == [-(-w // 32) * 32 for w in widths] and rep.intermediate_sizes != widths
    tensors = {t.name: t for t in _reader(rep.path).tensors}
    for i, (layer, w) in enumerate(zip(model.model.layers, widths, strict=True)):
        down = np.asarray(tensors[f"blk.{i}.ffn_down.weight"].data).reshape(-1, rep.intermediate_sizes[i])
        np.testing.assert_array_equal(down[:, :w], layer.mlp.down_proj.weight.detach().numpy())
        assert not down[:, w:].any()
    with pytest.raises(PrunelabError, match="pad_to"):
        export_gguf(model, tok, tmp_path / "bad.gguf", tokenizer_pre_name="gpt-2", pad_to=0)
