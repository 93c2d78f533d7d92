"""A named data location (--data-dir / PRUNELAB_DATA) is binding; results name the data source they used."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prunelab.data import check_task_data, load_arc, load_hellaswag, load_winogrande, set_data_dir
from prunelab.data import loaders, paths
from prunelab.data.sources import DataSource, tracking
from prunelab.errors import PrunelabError

ARC_ROW = {"id": "x1", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}
HELLASWAG_LOCAL_ROW = {"ind": 0, "activity_label": "Roof", "ctx": "A man is on a roof. he",
                       "endings": ["falls.", "sits.", "waves.", "jumps."], "label": 1}
HELLASWAG_HF_ROW = {"ind": 24, "activity_label": "Roof", "ctx_a": "A man is on a roof.", "ctx_b": "he",
                    "ctx": "A man is on a roof. he", "endings": ["falls.", "sits.", "waves.", "jumps."],
                    "source_id": "activitynet~v_x", "split": "val", "split_type": "indomain", "label": "1"}


@pytest.fixture(autouse=True)
def _no_named_location(monkeypatch):
    """Every test starts with no --data-dir and no PRUNELAB_DATA, and leaves none behind."""
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)
    set_data_dir(None)
    yield
    set_data_dir(None)


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if anything tries the HF fallback."""
    def refuse(hf):
        raise AssertionError(f"HF fallback used for {hf.path}")
    monkeypatch.setattr(loaders, "_hf_dataset", refuse)


@pytest.fixture
def fake_hub(monkeypatch):
    """An HF fallback that serves synthetic rows (and a revision) instead of downloading; records calls."""
    calls = []
    rows = {"allenai/ai2_arc": [ARC_ROW], "Rowan/hellaswag": [HELLASWAG_HF_ROW],
            "allenai/winogrande": [{"sentence": "Ann beat Bo so _ won.", "option1": "Ann", "option2": "Bo",
                                    "answer": "1"}]}

    def serve(hf):
        calls.append(hf)
        return [dict(r) for r in rows[hf.path]], "0123abcd"
    monkeypatch.setattr(loaders, "_hf_dataset", serve)
    return calls


def _data_dir(tmp_path, files: dict[str, list[dict]]):
    root = tmp_path / "data"
    root.mkdir()
    for rel, rows in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


@pytest.mark.parametrize("how", ["--data-dir", "PRUNELAB_DATA"])
def test_named_folder_lacking_a_dataset_is_an_error_not_a_download(tmp_path, monkeypatch, no_download, how):
    empty = tmp_path / "empty"
    empty.mkdir()
    if how == "--data-dir":
        set_data_dir(empty)
    else:
        monkeypatch.setenv("PRUNELAB_DATA", str(empty))
    with pytest.raises(PrunelabError) as err:
        load_arc("easy", "test")
    msg = str(err.value)
    assert msg.startswith(f"{how} {empty} has no arc_easy data") and "\n" not in msg
    assert str(empty / "arc_easy" / "arc_easy_test.jsonl") in msg


def test_data_dir_wins_over_the_environment(tmp_path, monkeypatch, no_download):
    full = _data_dir(tmp_path, {"arc_easy/arc_easy_test.jsonl": [ARC_ROW]})
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PRUNELAB_DATA", str(full))
    assert [it.id for it in load_arc("easy", "test")] == ["x1"]
    set_data_dir(empty)  # --data-dir is binding even when PRUNELAB_DATA would have the file
    with pytest.raises(PrunelabError, match="--data-dir"):
        load_arc("easy", "test")


def test_missing_named_folder_says_so(tmp_path, no_download):
    set_data_dir(tmp_path / "typo")
    with pytest.raises(PrunelabError, match=r"typo \(not a folder\) has no hellaswag data"):
        load_hellaswag()


def test_no_location_named_falls_back_to_hf_and_names_the_revision(tmp_path, monkeypatch, fake_hub):
    """The implicit default (shared/data beside the checkout) lacking a dataset is not binding."""
    monkeypatch.setattr(paths, "candidate_roots", lambda: [tmp_path / "nothing-here"])
    with tracking() as used:
        items = load_arc("easy", "test")
    assert [it.id for it in items] == ["x1"] and len(fake_hub) == 1
    assert used == [DataSource("arc_easy", "hf", "allenai/ai2_arc", "ARC-Easy", "test", "0123abcd")]
    assert str(used[0]) == "hf:allenai/ai2_arc/ARC-Easy:test@0123abcd"


def test_failed_fallback_is_one_line_that_names_the_data_location_settings(tmp_path, monkeypatch):
    """A clone with no shared/data beside it, offline: the error says how to point prunelab at the data."""
    monkeypatch.setattr(paths, "candidate_roots", lambda: [tmp_path / "nothing-here"])
    monkeypatch.setattr(loaders, "candidate_roots", lambda: [tmp_path / "nothing-here"])

    def offline(hf):
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (LocalEntryNotFoundError)\nmore detail")
    monkeypatch.setattr(loaders, "_hf_dataset", offline)
    with pytest.raises(PrunelabError) as err:
        load_arc("easy", "test")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "nothing-here") in msg and "Couldn't reach" in msg
    assert "set PRUNELAB_DATA or --data-dir" in msg


def test_fallback_rows_are_converted(tmp_path, monkeypatch, fake_hub):
    """The HF rows go through their converters (WinoGrande used to lack context_options: KeyError)."""
    monkeypatch.setattr(paths, "candidate_roots", lambda: [tmp_path / "nothing-here"])
    [wino] = load_winogrande()
    assert wino.contexts == ["Ann beat Bo so Ann", "Ann beat Bo so Bo"] and wino.choices == [" won."] * 2
    [hs] = load_hellaswag()
    assert hs.context == "Roof: A man is on a roof. He" and hs.answer == 1


def test_local_source_is_recorded_with_its_path(tmp_path, no_download):
    root = _data_dir(tmp_path, {"arc_easy/arc_easy_test.jsonl": [ARC_ROW]})
    set_data_dir(root)
    with tracking() as outer:
        with tracking() as inner:
            load_arc("easy", "test")
    path = str(root / "arc_easy" / "arc_easy_test.jsonl")
    assert [str(s) for s in inner] == [path] and outer == inner and inner[0].kind == "local"


def test_preflight_lists_every_missing_file(tmp_path):
    root = _data_dir(tmp_path, {"arc_easy/arc_easy_test.jsonl": [ARC_ROW]})
    check_task_data(["composite", "mmlu_5shot"])  # nothing named: no check (the loaders may fall back)
    set_data_dir(root)
    check_task_data(["arc_easy", "arc_easy_gen", "c4", "someone_elses_task"])  # all present / not pre-checked
    with pytest.raises(PrunelabError) as err:
        check_task_data(["composite", "mmlu_5shot"])
    msg = str(err.value)
    assert "has no lambada, mmlu data" in msg and "arc_easy" not in msg.split(": looked for")[0]
    for rel in ("lambada/lambada_test.jsonl", "mmlu/mmlu_test.jsonl", "mmlu/mmlu_dev.jsonl"):
        assert str(root / rel) in msg


def test_every_task_listed_in_the_preflight_exists_and_reads_real_files():
    from prunelab.data.loaders import DATA_FILES
    from prunelab.data.preflight import TASK_DATA
    from prunelab.evaluate import TASKS, load_tasks

    load_tasks()
    assert set(TASK_DATA) <= set(TASKS.names())
    assert {k for keys in TASK_DATA.values() for k in keys} <= set(DATA_FILES)


# ---------------------------------------------------------------------------------------- through evaluate()
def test_results_name_their_data_source_and_hellaswag_local_note(tmp_path, tiny_llama, tokenizer, no_download):
    from prunelab.evaluate import evaluate

    root = _data_dir(tmp_path, {"arc_easy/arc_easy_test.jsonl": [ARC_ROW],
                                "hellaswag/hellaswag_val.jsonl": [HELLASWAG_LOCAL_ROW]})
    set_data_dir(root)
    report = evaluate(tiny_llama, tokenizer, ["arc_easy", "hellaswag"], batch_size=2)
    arc, hs = report.results["arc_easy"], report.results["hellaswag"]
    assert arc.data_source == str(root / "arc_easy" / "arc_easy_test.jsonl") and "note" not in arc.details
    assert hs.data_source == str(root / "hellaswag" / "hellaswag_val.jsonl")
    assert "capitalize()" in hs.details["note"] and "acc_norm 39 (local) vs 40" in hs.details["note"]


def test_hf_fallback_result_names_the_hub_revision_without_note(tmp_path, monkeypatch, tiny_llama, tokenizer,
                                                                 fake_hub):
    from prunelab.evaluate import evaluate

    monkeypatch.setattr(paths, "candidate_roots", lambda: [tmp_path / "nothing-here"])
    hs = evaluate(tiny_llama, tokenizer, ["hellaswag"], batch_size=2).results["hellaswag"]
    assert hs.data_source == "hf:Rowan/hellaswag:validation@0123abcd" and "note" not in hs.details


# ---------------------------------------------------------------------------------------- CLI
def _prunelab(*args, env_data: str | None = None):
    import os

    env = {k: v for k, v in os.environ.items() if k != "PRUNELAB_DATA"}
    if env_data is not None:
        env["PRUNELAB_DATA"] = env_data
    return subprocess.run([sys.executable, "-m", "prunelab", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.parametrize("how", ["--data-dir", "PRUNELAB_DATA"])
def test_cli_empty_data_dir_exits_2_before_the_model_loads(tmp_path, how):
    """The model argument does not exist: had the model been loaded first, the error would be about it."""
    empty = tmp_path / "empty"
    empty.mkdir()
    head = ["--data-dir", str(empty)] if how == "--data-dir" else []
    proc = _prunelab(*head, "eval", str(tmp_path / "no-such-model"), "--tasks", "arc_easy", "--limit", "5",
                     env_data=str(empty) if how == "PRUNELAB_DATA" else None)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {how} {empty} has no arc_easy data")
    assert str(empty / "arc_easy" / "arc_easy_test.jsonl") in lines[0]


def test_cli_json_names_each_tasks_data_source(tmp_path, saved_tiny):
    root = _data_dir(tmp_path, {"arc_easy/arc_easy_test.jsonl": [ARC_ROW],
                                "hellaswag/hellaswag_val.jsonl": [HELLASWAG_LOCAL_ROW]})
    out = tmp_path / "r.json"
    proc = _prunelab("--data-dir", str(root), "eval", str(saved_tiny), "--tasks", "arc_easy,hellaswag",
                     "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    assert results["arc_easy"]["data_source"] == str(root / "arc_easy" / "arc_easy_test.jsonl")
    assert results["hellaswag"]["data_source"] == str(root / "hellaswag" / "hellaswag_val.jsonl")
    assert "note" in results["hellaswag"]["details"]
