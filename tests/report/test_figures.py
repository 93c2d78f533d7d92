import pytest

from prunelab.experiments.store import Store
from prunelab.report.figures import write_figures
from prunelab.report.tables import build_tables
from tests.report._synthetic import _rec, build, comp


def _is_png(p):
    return p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000


def test_all_supported_figures_written(tmp_path):
    db = tmp_path / "r.sqlite"
    build(db)
    with Store(db) as s:
        tables, _, data = build_tables(s.runs())
    paths = write_figures(data, tables, tmp_path / "fig")
    assert sorted(p.name for p in paths) == ["longitudinal.png", "rank_sweep.png", "recovery_bars.png",
                                             "width_profile.png"]
    assert all(_is_png(p) for p in paths)


def test_depth_mask_and_nothing_for_missing_data(tmp_path):
    db = tmp_path / "d.sqlite"
    depth = {"layer_widths": [8] * 4, "num_layers": 4, "original": {"layer_widths": [8] * 6, "num_layers": 6},
             "removed_layers": [2, 4]}
    with Store(db) as s:
        s.add_run(_rec("b0", "baseline", "m", "depth-k2", 0, comp(10.0, 20.0), structure=depth), "d", 0)
        tables, _, data = build_tables(s.runs())
    paths = write_figures(data, tables, tmp_path / "fig")
    assert [p.name for p in paths] == ["depth_mask.png"]  # no treatment -> no recovery bars, no sweep, ...
    assert _is_png(paths[0])
