"""`prunelab run` / `prunelab report` through typer's CliRunner (fake stages; seconds)."""

import json

import yaml
from typer.testing import CliRunner

from prunelab.cli import app
from prunelab.errors import PrunelabError

runner = CliRunner()


def test_run_then_report(tmp_path, fake_stages):
    spec = tmp_path / "e.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "cli", "note": "fake", "models": ["m"], "pruning": {"kind": "width", "ratio": 0.4},
        "mechanisms": ["ketamine", "ssri", "neurosteroid"], "isodose": "ketamine:1", "seeds": [0, 1],
        "stress": {"relapse": {"fraction": 0.3}}}))
    db = tmp_path / "r.sqlite"
    res = runner.invoke(app, ["run", str(spec), "--db", str(db), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "8 runs (0 stored, 8 pending)" in res.output
    res = runner.invoke(app, ["run", str(spec), "--db", str(db), "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["completed"], summary["total"], summary["failed"]) == (8, 8, 0)
    res = runner.invoke(app, ["run", str(spec), "--db", str(db)])
    assert "0 run(s) completed, 8 already stored" in res.output
    out = tmp_path / "rep"
    res = runner.invoke(app, ["report", "--db", str(db), "-o", str(out), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert (out / "tables.md").is_file() and (out / "figures" / "recovery_bars.png").is_file()
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["runs"] == 8 and len(rep["tables"]) == 3  # Tables 1-3; 4-6 omitted (no chronic/sweep/transfer)
    assert "omitted Table 4" in res.output


def test_bad_spec_is_one_error(tmp_path, fake_stages):
    spec = tmp_path / "e.yaml"
    spec.write_text(yaml.safe_dump({"name": "x", "models": ["m"], "pruning": {"kind": "width", "ratio": 2}}))
    res = runner.invoke(app, ["run", str(spec), "--db", str(tmp_path / "r.sqlite")])
    assert isinstance(res.exception, PrunelabError)
    assert str(res.exception) == f"{spec}: pruning.0.ratio: Input should be less than 1"
    assert not (tmp_path / "r.sqlite").exists()  # validated before any output


def test_cli_main_exit_code(tmp_path, fake_stages, capsys):
    import pytest

    from prunelab.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["report", "--db", str(tmp_path / "missing.sqlite"), "-o", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "does not exist" in capsys.readouterr().err
