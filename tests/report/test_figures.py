import pytest

from prunelab.runs.result import PruningInfo
from prunelab.runs.store import Store
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
    depth = PruningInfo(layer_widths=(8,) * 4, num_layers=4, original={"layer_widths": (8,) * 6, "num_layers": 6},
                        removed_layers=(2, 4))
    with Store(db) as s:
        s.add_run(_rec("b0", "baseline", "m", "depth-k2", 0, comp(10.0, 20.0), structure=depth), "d", 0)
        tables, _, data = build_tables(s.runs())
    paths = write_figures(data, tables, tmp_path / "fig")
    assert [p.name for p in paths] == ["depth_mask.png"]  # no treatment -> no recovery bars, no sweep, ...
    assert _is_png(paths[0])


@pytest.fixture(scope="module")
def with_outcomes(tmp_path_factory):
    from prunelab.report.comparisons import Outcomes
    from tests.report._synthetic import KET

    db = tmp_path_factory.mktemp("fig") / "r.sqlite"
    build(db, outcomes=True)
    # a second chronic mechanism with exactly ketamine's accuracies: its line must not hide under ketamine's
    with Store(db) as s:
        for seed in range(3):
            base = {0: 22.0, 1: 25.0, 2: 24.0}[seed]
            s.add_run(_rec(f"n{seed}", "treated", "llama", "w60", seed, comp(base + 1, base - 1),
                           KET.with_(name="neurosteroid"), comp(base, base), 1e14,
                           chronic=[30.0 + seed, 25.0, 20.0 - seed], outcomes=True), "synthetic", 50 + seed)
        runs = s.runs()
        tables, _, data = build_tables(runs, Outcomes.from_store(s, runs))
    return tables, data


def test_recovery_bars_draw_the_paired_ci_not_the_sd(with_outcomes):
    from prunelab.report.figures import draw_recovery_bars

    tables, _ = with_outcomes
    t2 = next(t for t in tables if t.number == 2)
    fig = draw_recovery_bars(t2)
    ax = fig.axes[0]
    from matplotlib.container import BarContainer, ErrorbarContainer

    bars = next(c for c in ax.containers if isinstance(c, BarContainer))
    err = bars.errorbar if getattr(bars, "errorbar", None) is not None else next(
        c for c in ax.containers if isinstance(c, ErrorbarContainer))
    rec = next(r for r in t2.records if r["model"] == "llama" and r["treatment"] == "ketamine")
    seg = err.lines[2][0].get_segments()[0]  # first bar's vertical error segment
    assert [y for _, y in seg] == pytest.approx([rec["recovery_ci"]["low"], rec["recovery_ci"]["high"]])
    # not the SD band of the seeds (mean 3, sd 1 -> [2, 4])
    assert [y for _, y in seg] != pytest.approx([2.0, 4.0])
    assert "95 % paired CI" in ax.get_title()


def test_longitudinal_integer_cycles_every_series_visible(with_outcomes):
    from prunelab.report.figures import draw_longitudinal

    _, data = with_outcomes
    fig = draw_longitudinal(data)
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [0, 1, 2]
    lines = [c.lines[0] for c in ax.containers]  # one errorbar container per mechanism
    assert len(lines) == 2
    assert lines[0].get_marker() != lines[1].get_marker() and lines[0].get_linestyle() != lines[1].get_linestyle()
    # same accuracies, but drawn side by side rather than on top of each other
    assert list(lines[0].get_ydata()) == pytest.approx(list(lines[1].get_ydata()))
    assert all(a != b for a, b in zip(lines[0].get_xdata(), lines[1].get_xdata()))
    assert "95 % CI" in ax.get_title()


def test_figures_without_per_item_data_say_so(tmp_path):
    from prunelab.report.figures import draw_longitudinal, draw_recovery_bars

    db = tmp_path / "r.sqlite"
    build(db)
    with Store(db) as s:
        tables, _, data = build_tables(s.runs())
    assert "no per-item data, no CI" in draw_recovery_bars(next(t for t in tables if t.number == 2)).axes[0].get_title()
    ax = draw_longitudinal(data).axes[0]
    assert "no per-item data, no CI" in ax.get_title()
    assert not ax.containers[0].has_yerr  # no SD band passed off as uncertainty
