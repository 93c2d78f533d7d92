"""Every command that writes follows prunelab.atomic's rule: refuse a foreign target before any work (one line
naming the path and --overwrite), replace prunelab's own output, and never touch ., ~, / or the checkout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.user_files import tree, user_folder
from prunelab import atomic
from prunelab.cli import main

NO_MODEL = "/no/such/model"  # a refusal must come before the model is even looked at


@pytest.fixture(autouse=True)
def _no_leftover_approvals():
    yield
    atomic._approved.clear()
    atomic._approved_trees.clear()


def run_main(argv: list[str], capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    return exc.value.code, [l for l in err.splitlines() if l.strip()]


DIR_COMMANDS = {
    "prune width": lambda o: ["prune", "width", NO_MODEL, "--ratio", "0.5", "-o", o],
    "prune depth": lambda o: ["prune", "depth", NO_MODEL, "--remove", "1", "-o", o],
    "recover": lambda o: ["recover", NO_MODEL, "-o", o],
    "accel": lambda o: ["accel", NO_MODEL, "-o", o],
    "stress relapse": lambda o: ["stress", "relapse", NO_MODEL, "-o", o],
    "stress chronic": lambda o: ["stress", "chronic", NO_MODEL, "-m", "ssri", "-o", o],
    "stress chronic --save-model": lambda o: ["stress", "chronic", NO_MODEL, "-m", "ssri", "-o", o + ".new",
                                              "--save-model", o],
    "report": lambda o: ["report", "--db", "/no/such.sqlite", "-o", o],
    "depth-study": lambda o: ["depth-study", NO_MODEL, "-o", o],
    "dichotomy": lambda o: ["dichotomy", NO_MODEL, "-e", "1.0", "-o", o],
    "run --work-dir": lambda o: ["run", "/no/such.yaml", "--db", o + ".sqlite", "--work-dir", o],
}
FILE_COMMANDS = {
    "eval": lambda f: ["eval", NO_MODEL, "--json", f],
    "perplexity": lambda f: ["perplexity", NO_MODEL, "--json", f],
    "bench": lambda f: ["bench", NO_MODEL, "--json", f],
    "info": lambda f: ["info", NO_MODEL, "-o", f],
    "prune width --json": lambda f: ["prune", "width", NO_MODEL, "--ratio", "0.5", "-o", f + ".d", "--json", f],
    "prune width --plot": lambda f: ["prune", "width", NO_MODEL, "--adaptive", "--ratio", "0.5", "-o", f + ".d",
                                     "--plot", f],
    "recover --json": lambda f: ["recover", NO_MODEL, "-o", f + ".d", "--json", f],
    "report --json": lambda f: ["report", "--db", "/no/such.sqlite", "-o", f + ".d", "--json", f],
    "run --json": lambda f: ["run", "/no/such.yaml", "--db", f + ".sqlite", "--json", f],
}


@pytest.mark.parametrize("command", list(DIR_COMMANDS))
def test_every_folder_output_refuses_a_user_folder_first(command, tmp_path, capsys):
    out = user_folder(tmp_path / "mine")
    code, lines = run_main(DIR_COMMANDS[command](str(out)), capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: refusing to") and str(out) in lines[0] and "--overwrite" in lines[0]
    assert tree(out) == {"notes.txt": "mine", "sub/a.txt": "also mine"}


@pytest.mark.parametrize("command", [c for c in DIR_COMMANDS if c != "run --work-dir"])
def test_every_folder_output_refuses_a_regular_file(command, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("mine")
    code, lines = run_main(DIR_COMMANDS[command](str(f)), capsys)
    assert code == 2 and len(lines) == 1 and "it is a file and a folder is wanted here" in lines[0], lines
    assert f.read_text() == "mine"


@pytest.mark.parametrize("command", list(FILE_COMMANDS))
def test_every_file_output_refuses_a_user_file_first(command, tmp_path, capsys):
    f = tmp_path / "mine.json"
    f.write_text('{"mine": 1}')
    code, lines = run_main(FILE_COMMANDS[command](str(f)), capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"refusing to replace {f}: it is a file prunelab did not write" in lines[0] and "--overwrite" in lines[0]
    assert f.read_text() == '{"mine": 1}'


@pytest.mark.parametrize("target", [".", "..", "/", "~"])
def test_protected_targets_refused_even_with_overwrite(target, tmp_path, capsys, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "keep.txt").write_text("x")
    monkeypatch.chdir(cwd)
    for argv in (["stress", "relapse", NO_MODEL, "-o", target, "--overwrite"],
                 ["eval", NO_MODEL, "--json", target, "--overwrite"]):
        code, lines = run_main(argv, capsys)
        assert code == 2 and len(lines) == 1 and "not even with --overwrite" in lines[0], lines
    assert tree(cwd) == {"keep.txt": "x"}


def test_the_checkout_is_refused(capsys, tmp_path, monkeypatch):
    import prunelab

    monkeypatch.chdir(tmp_path)  # so the checkout is not also the current folder

    checkout = Path(prunelab.__file__).resolve().parents[1]
    code, lines = run_main(["stress", "relapse", NO_MODEL, "-o", str(checkout), "--overwrite"], capsys)
    assert code == 2 and "the prunelab checkout" in lines[0]


def test_found_cases_end_to_end_on_a_tiny_model(saved_tiny, tmp_path, capsys):
    """The issue's cases with the real commands: user folder and file refused; own output replaced;
    --overwrite replaces atomically; own --json replaced, a user's refused."""
    mine = user_folder(tmp_path / "mine")
    prune = ["prune", "width", str(saved_tiny), "--criterion", "maw", "--ratio", "0.25"]
    code, lines = run_main([*prune, "-o", str(mine)], capsys)
    assert code == 2 and tree(mine) == {"notes.txt": "mine", "sub/a.txt": "also mine"}

    out, js = tmp_path / "pruned", tmp_path / "r.json"
    for _ in range(2):  # the second run replaces the first run's model and JSON: prunelab wrote both
        code, lines = run_main([*prune, "-o", str(out), "--json", str(js)], capsys)
        assert code == 0, lines
    assert json.loads((out / "prunelab.json").read_text())["pruning"] == "width"
    assert json.loads(js.read_text())["output"] == str(out)

    (out / "my-notes.txt").write_text("added by the user")
    code, lines = run_main([*prune, "-o", str(out)], capsys)
    assert code == 2 and "my-notes.txt" in lines[0] and (out / "my-notes.txt").exists()

    code, lines = run_main([*prune, "-o", str(mine), "--overwrite"], capsys)
    assert code == 0, lines
    assert not (mine / "notes.txt").exists() and (mine / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []

