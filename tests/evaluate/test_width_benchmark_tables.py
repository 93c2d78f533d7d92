"""benchmarks/width_vs_peers.repair_table: which cells are paired with which (same windows: paired CIs)."""

from __future__ import annotations

import pytest

from benchmarks.width_vs_peers import repair_table


def _row(crit, fix, nll):
    return {"cell": (0.4, crit, fix), "params": 1, "ppl": 1.0, "arc": None, "seconds": 1.0, "arc_items": {},
            "window_nll": nll, "window_tokens": [10] * len(nll)}


def test_a_targeted_repair_is_paired_with_the_layer_targets_cell():
    rows = [_row("maw_hybrid", "none", [30.0, 31, 29, 33]), _row("maw_hybrid", "ls", [20.0, 22, 21, 20]),
            _row("maw_hybrid", "ls@layer+attn", [19.0, 21, 20, 20])]
    recs = {r["repair"]: r for r in repair_table(rows)}
    assert "ppl_vs_layer_target" not in recs["ls"] and "ppl_vs_layer_target" not in recs["none"]
    d = recs["ls@layer+attn"]["ppl_vs_layer_target"]
    assert d["estimate"] == pytest.approx(2.718281828 ** ((80 - 83) / 40))
    assert recs["ls@layer+attn"]["ppl_vs_none"]["estimate"] < 1
