"""CLI: `prunelab power` output, JSON, and one-line exit-2 errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from prunelab import stats as S
from prunelab.cli import app
from prunelab.errors import PrunelabError

runner = CliRunner()


def test_power_json_matches_library():
    result = runner.invoke(app, ["power", "--n", "200", "--acc", "0.3", "--paired-discordance", "0.2",
                                 "--effect", "3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mde_pp"] == pytest.approx(S.mde_paired(200, 0.3, 0.2))
    assert data["n_needed"] == [{"effect_pp": 3.0, "n": S.n_needed(3, 0.3, 0.2)}]
    assert data["discordance"] == 0.2 and data["design"] == "paired"


def test_power_text_default_effects():
    result = runner.invoke(app, ["power", "--n", "200", "--acc", "0.3"])
    assert result.exit_code == 0, result.output
    assert f"{S.mde_paired(200, 0.3):.1f} pp" in result.stdout
    for effect in (1, 2, 3, 5, 10):
        assert f"n needed for {effect} pp: {S.n_needed(effect, 0.3):,} items" in result.stdout
    assert "binomial bound" in result.stdout


def test_power_unpaired():
    result = runner.invoke(app, ["power", "--n", "200", "--acc", "0.3", "--unpaired", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["mde_pp"] == pytest.approx(S.mde_unpaired(200, 0.3))


@pytest.mark.parametrize("args, message", [
    (["--n", "0", "--acc", "0.3"], "--n must be a positive"),
    (["--n", "200", "--acc", "1.2"], "--acc must be strictly between 0 and 1"),
    (["--n", "200", "--acc", "0"], "--acc must be strictly between 0 and 1"),
    (["--n", "200", "--acc", "0.3", "--paired-discordance", "1.5"], "--paired-discordance must be in (0, 1]"),
    (["--n", "200", "--acc", "0.3", "--paired-discordance", "0"], "--paired-discordance must be in (0, 1]"),
    (["--n", "200", "--acc", "0.3", "--bogus"], "No such option"),
    (["--n", "200", "--acc", "x"], "Invalid value for '--acc'"),
    (["--acc", "0.3"], "Missing option '--n'"),
    (["--n", "200", "--acc", "0.3", "--effect", "60"], "impossible"),
    (["--n", "200", "--acc", "0.3", "--effect", "three"], "--effect must be"),
])
def test_power_bad_input_raises_one_sentence(args, message):
    """Every mistake surfaces as PrunelabError, which ``prunelab.cli.main`` prints as one line with exit 2."""
    result = runner.invoke(app, ["power", *args])
    assert isinstance(result.exception, PrunelabError), result.output
    assert message in str(result.exception) and "\n" not in str(result.exception)
    assert result.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["--n", "0", "--acc", "0.3"], "--n must be a positive"),
    (["--n", "200", "--acc", "0.3", "--bogus"], "No such option"),
])
def test_power_bad_input_one_line_exit_2(args, message):
    proc = subprocess.run([sys.executable, "-m", "prunelab", "power", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert proc.stdout == ""
