"""`prunelab eval` / `prunelab bench` on a tiny saved model; bad inputs give one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from prunelab.cli import app
from tests.tiny import save_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m"), max_position_embeddings=1024)


def test_eval_json_and_table(saved_tiny, tmp_path):
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["eval", str(saved_tiny), "--tasks", "arc_easy,lambada_gen", "--limit", "3",
                              "--seed", "1", "--batch-size", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "arc_easy" in res.stdout and "lambada_gen" in res.stdout
    data = json.loads(out.read_text())
    assert data["limit"] == 3 and data["seed"] == 1
    arc = data["results"]["arc_easy"]
    assert arc["n"] == 3 and len(arc["item_ids"]) == 3 and 0 <= arc["metrics"]["acc"] <= 100


def test_bench_json(saved_tiny, tmp_path):
    out = tmp_path / "b.json"
    res = runner.invoke(app, ["bench", str(saved_tiny), "--new-tokens", "3", "--batch", "2", "--prompt-len", "4",
                              "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["new_tokens"] == 3 and data["batch_size"] == 2 and data["throughput_tok_s"] > 0
    assert "energy" in res.stdout


def _run(*args, env=None):
    import os

    proc = subprocess.run([sys.executable, "-m", "prunelab", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    return proc.returncode, lines


def test_unknown_task_lists_known(saved_tiny, tmp_path):
    code, lines = _run("eval", str(saved_tiny), "--tasks", "arc_easy,bogus", "--json", str(tmp_path / "x.json"))
    assert code == 2 and len(lines) == 1 and "unknown eval task 'bogus'" in lines[0] and "arc_easy_gen" in lines[0]
    assert not (tmp_path / "x.json").exists()


def test_limit_zero_and_missing_model(saved_tiny):
    code, lines = _run("eval", str(saved_tiny), "--limit", "0")
    assert code == 2 and len(lines) == 1 and "--limit must be a positive" in lines[0]
    code, lines = _run("eval", "/no/such/model", "--tasks", "arc_easy")
    assert code == 2 and len(lines) == 1 and "not found" in lines[0]


def test_malformed_data_row_names_file_and_line(saved_tiny, tmp_path):
    data = tmp_path / "data" / "arc_easy"
    data.mkdir(parents=True)
    good = ('{"id": "a1", "question": "q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, '
            '"answerKey": "A"}')
    (data / "arc_easy_test.jsonl").write_text(good + "\n" + '{"id": "a2", "question": \n')
    out = tmp_path / "r.json"
    code, lines = _run("--data-dir", str(tmp_path / "data"), "eval", str(saved_tiny), "--tasks", "arc_easy",
                       "--json", str(out))
    assert code == 2 and len(lines) == 1 and "arc_easy_test.jsonl:2" in lines[0]
    assert not out.exists()


def test_lmeval_backend_unknown_task(saved_tiny):
    code, lines = _run("eval", str(saved_tiny), "--backend", "lm-eval", "--tasks", "mmlu_5shot")
    assert code == 2 and "unknown lm-eval bridge task 'mmlu_5shot'" in lines[0] and "arc_easy" in lines[0]


def test_lmeval_backend_engines(saved_tiny, tmp_path):
    """``--backend lm-eval`` runs on the packed engine by default; ``--lm-eval-engine hflm`` on lm-eval's HFLM,
    with the same per-item log-likelihoods; a bad engine is one line."""
    out = {}
    for engine in (None, "hflm"):
        path = tmp_path / f"{engine}.json"
        extra = ["--lm-eval-engine", engine] if engine else []
        res = runner.invoke(app, ["eval", str(saved_tiny), "--backend", "lm-eval", "--tasks", "arc_easy", "--limit",
                                  "2", "--json", str(path), *extra])
        assert res.exit_code == 0, res.output
        out[engine] = json.loads(path.read_text())
    assert out[None]["lm_eval_engine"] == "packed" and out["hflm"]["lm_eval_engine"] == "hflm"
    a, b = (out[e]["results"]["arc_easy"] for e in (None, "hflm"))
    assert a["item_ids"] == b["item_ids"] and a["metrics"] == b["metrics"]
    for u, v in zip(a["details"]["loglikelihoods"], b["details"]["loglikelihoods"], strict=True):
        assert u == pytest.approx(v, abs=1e-4, rel=1e-6)
    code, lines = _run("eval", str(saved_tiny), "--backend", "lm-eval", "--lm-eval-engine", "vllm")
    assert code == 2 and len(lines) == 1 and "unknown --lm-eval-engine 'vllm'; known: packed, hflm" in lines[0]
