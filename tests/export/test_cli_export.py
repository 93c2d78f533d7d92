"""``prunelab export gguf|hf``: the happy paths, and every bad input as one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
import torch

import prunelab
from prunelab import atomic
from prunelab.cli import main
from tests.export._helpers import per_layer_pruned, tiny_bpe_tokenizer, tiny_llama
from tests.tiny import tiny_model


@pytest.fixture(autouse=True)
def _no_leftover_approvals():
    yield
    atomic._approved.clear()
    atomic._approved_trees.clear()


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, [l for l in captured.err.splitlines() if l.strip()]


@pytest.fixture
def per_layer_dir(tmp_path):
    return prunelab.save(per_layer_pruned(tiny_llama()), tiny_bpe_tokenizer(), tmp_path / "pl",
                         metadata={"pruning": "adaptive", "source": "org/base", "criterion": "taylor", "ratio": 0.4})


def test_export_gguf_writes_a_per_layer_file_with_the_recipe(per_layer_dir, tmp_path, capsys):
    import gguf

    out = tmp_path / "m.gguf"
    code, stdout, _ = run(["export", "gguf", str(per_layer_dir), "-o", str(out), "--outtype", "f16",
                           "--tokenizer-pre", "gpt-2", "--json", str(tmp_path / "r.json")], capsys)
    assert code in (0, None), stdout
    r = gguf.GGUFReader(str(out))
    assert r.get_field("general.architecture").contents() == "deci"
    meta = json.loads(r.get_field("prunelab.metadata").contents())
    assert meta["pruning"] == "adaptive" and meta["criterion"] == "taylor"
    # widths 24, 40, 4 zero-padded to multiples of 32 by default (llama.cpp's fast kernels); --pad-to 1 keeps them
    assert json.loads((tmp_path / "r.json").read_text())["intermediate_sizes"] == [32, 64, 32]
    code, stdout, _ = run(["export", "gguf", str(per_layer_dir), "-o", str(tmp_path / "exact.gguf"), "--pad-to", "1",
                           "--tokenizer-pre", "gpt-2", "--json", str(tmp_path / "exact.json")], capsys)
    assert code in (0, None), stdout
    assert json.loads((tmp_path / "exact.json").read_text())["intermediate_sizes"] == [24, 40, 4]


def test_export_hf_pad_uniform_gives_a_vanilla_checkpoint_with_the_same_logits(per_layer_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "padded"
    code, stdout, _ = run(["export", "hf", "--pad-uniform", str(per_layer_dir), "-o", str(out)], capsys)
    assert code in (0, None), stdout
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = prunelab.load(per_layer_dir).model(ids).logits
        got = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "base_model: org/base" in card and "Padded to uniform shapes" in card and "from_pretrained" in card


def _assert_one_line_nothing_written(code, err, tmp_path, before, match):
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("args,match", [
    (["--outtype", "q4_k"], "unknown GGUF outtype 'q4_k'"),
    (["--tokenizer-pre", "nonsense"], "unknown --tokenizer-pre 'nonsense'"),
    ([], "pre-tokenizer"),  # the tiny tokenizer's fingerprint is not in llama.cpp's table
])
def test_bad_options_are_one_line(per_layer_dir, tmp_path, capsys, args, match):
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["export", "gguf", str(per_layer_dir), "-o", str(tmp_path / "m.gguf"), *args], capsys)
    _assert_one_line_nothing_written(code, err, tmp_path, before, match)


@pytest.mark.parametrize("family,match", [("gemma2", "cannot export a gemma2 model"),
                                          ("qwen2", "cannot export a qwen2 model")])
def test_unsupported_family_is_one_line(tmp_path, capsys, family, match):
    prunelab.save(tiny_model(family, vocab_size=300), tiny_bpe_tokenizer(), tmp_path / "src")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["export", "gguf", str(tmp_path / "src"), "-o", str(tmp_path / "m.gguf")], capsys)
    _assert_one_line_nothing_written(code, err, tmp_path, before, match)


def test_corrupt_or_missing_source_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    before = sorted(p.name for p in tmp_path.iterdir())
    for cmd in (["export", "gguf", str(bad), "-o", str(tmp_path / "m.gguf")],
                ["export", "hf", "--pad-uniform", str(bad), "-o", str(tmp_path / "out")],
                ["export", "gguf", str(tmp_path / "nothing"), "-o", str(tmp_path / "m.gguf")]):
        code, _, err = run(cmd, capsys)
        _assert_one_line_nothing_written(code, err, tmp_path, before, "")


def test_foreign_targets_are_refused_untouched(per_layer_dir, tmp_path, capsys):
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"mine")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for cmd in (["export", "gguf", str(per_layer_dir), "-o", str(mine), "--tokenizer-pre", "gpt-2"],
                ["export", "hf", "--pad-uniform", str(per_layer_dir), "-o", str(folder)]):
        code, _, err = run(cmd, capsys)
        assert code == 2 and len(err) == 1 and "--overwrite" in err[0], err
    assert mine.read_bytes() == b"mine" and [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_per_layer_hf_export_without_padding_is_refused(per_layer_dir, tmp_path, capsys):
    code, _, err = run(["export", "hf", str(per_layer_dir), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and "--pad-uniform" in err[0] and not (tmp_path / "out").exists()


def test_output_must_be_a_gguf_file(per_layer_dir, tmp_path, capsys):
    code, _, err = run(["export", "gguf", str(per_layer_dir), "-o", str(tmp_path / "m.bin")], capsys)
    assert code == 2 and ".gguf" in err[0] and not (tmp_path / "m.bin").exists()
