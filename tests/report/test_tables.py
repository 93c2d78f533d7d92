import csv
import json

import pytest

from prunelab.errors import PrunelabError
from prunelab.runs.store import Store
from prunelab.report import build_report
from prunelab.report.comparisons import NO_DATA
from prunelab.report.tables import build_tables, fmt, summarize
from tests.report._synthetic import build


@pytest.fixture
def db(tmp_path):
    p = tmp_path / "r.sqlite"
    build(p)
    return p


def _tables(db):
    with Store(db) as s:
        tables, omitted, data = build_tables(s.runs())
    return {t.number: t for t in tables}, omitted


def test_mean_sd_formatting():
    assert summarize([3.0, 4.0, 2.0]) == {"mean": 3.0, "sd": 1.0, "n": 3}
    assert summarize([5.0]) == {"mean": 5.0, "sd": None, "n": 1}
    assert fmt(summarize([3.0, 4.0, 2.0]), signed=True) == "+3.0 ± 1.0"
    assert fmt(summarize([5.0])) == "5.0" and fmt(None) == "–"


def test_table1_post_treatment_mean_sd(db):
    t, _ = _tables(db)
    t1 = t[1]
    rows = {(r[0], r[2]): r for r in t1.rows}  # multi-model: Model, Pruning, Treatment, ...
    ket = rows[("llama", "Ketamine-like")]
    # composite of ketamine seeds: 23, 25, 24 -> 24.0 ± 1.0; ARC = composite + 1
    assert ket[3:] == ["25.0 ± 1.0", "23.0 ± 1.0", "24.0 ± 1.0", "3"]
    assert rows[("llama", "Untreated (pruned)")][5] == "21.0 ± 1.0"
    assert rows[("gemma", "Untreated")][5] == "30.0 ± 0.0"
    # sweep arms are not treatments of Table 1
    assert not any("r16" in r[2] for r in t1.rows)


def test_table2_and_3_effects_and_efficiency(db):
    t, _ = _tables(db)
    rec = next(r for r in t[2].records if r["model"] == "llama")
    assert rec["recovery"] == {"mean": 3.0, "sd": 1.0, "n": 3}
    assert rec["relapse_drop"]["mean"] == pytest.approx(4 / 3)
    assert rec["relapse_drop"]["sd"] == pytest.approx(0.57735, abs=1e-4)
    assert rec["net_retained"]["mean"] == pytest.approx(3.0 - 4 / 3)
    eff = next(r for r in t[3].records if r["model"] == "llama")["efficiency"]
    # efficiency = recovery / (1e14 / 1e15) = 10 × recovery -> 30, 40, 20
    assert eff == {"mean": 30.0, "sd": 10.0, "n": 3}
    row = next(r for r in t[3].text_rows() if r[0] == "llama")
    # Model, Pruning, Treatment, Equalised, Epochs, Recovery, FLOPs, Honest FLOPs, Efficiency
    assert row[3] == "study" and row[4] == "3" and row[6] == "1.00e14" and row[7] == "1.00e15"
    assert row[8] == "+30.00 ± 10.00 ‡"  # old store: the seed summary, marked as having no CI


def test_table4_longitudinal(db):
    t, _ = _tables(db)
    t4 = t[4]
    rows = t4.text_rows()
    assert rows[0][1] == "31.0 ± 1.0"  # cycle 0: 30, 31, 32
    assert rows[1][1] == "25.0 ± 0.0"
    assert rows[-1] == ["Decline (pp)", "+12.0 ± 2.0 ‡"]  # declines 10, 12, 14


def test_table5_ranked_by_sweep_score(db):
    t, _ = _tables(db)
    recs = t[5].records
    assert [r["r"] for r in recs] == [32, 16]
    r32 = recs[0]
    # seed-0 baseline is 20 -> recovery +4; efficiency 4 / 0.2 = 20; relapse drop 1
    assert r32["recovery"]["mean"] == 4.0 and r32["efficiency"]["mean"] == 20.0 and r32["relapse_drop"]["mean"] == 1.0
    assert r32["sweep_score"] == pytest.approx(0.4 * 4 + 0.1 * 20 - 0.4 * 1 + 4)
    assert t[5].text_rows()[0][:3] == ["1", "32", "6"]
    assert t[5].text_rows()[1][7] == "\u22125.0 ‡"  # r16 − r32 recovery: −1 − 4 (seed summary, no CI)


def test_table6_transfer_delta_vs_primary(db):
    t, _ = _tables(db)
    recs = t[6].records
    assert [r["model"] for r in recs] == ["llama", "gemma"] and recs[0]["primary"]
    assert recs[1]["recovery"] == {"mean": 6.0, "sd": pytest.approx(2 ** 0.5), "n": 2}
    assert recs[1]["delta_vs_primary"] == pytest.approx(3.0)
    assert t[6].text_rows()[1][-1] == "+3.0 ‡"


def test_old_store_says_no_per_item_data(db, tmp_path):
    build_report(db, tmp_path / "rep", figures=False)
    md = (tmp_path / "rep" / "tables.md").read_text()
    assert NO_DATA in md and "[" not in md.split("## Runs")[0].replace("[95 % CI]", "")
    with open(tmp_path / "rep" / "table2_treatment_effects.csv") as f:
        rows = list(csv.DictReader(f))
    llama = next(r for r in rows if r["Model"] == "llama")
    assert float(llama["Recovery (pp)"]) == 3.0
    assert llama["Recovery (pp) low"] == llama["Recovery (pp) high"] == llama["Recovery (pp) p"] == ""
    assert NO_DATA in llama["ci note"]
    payload = json.loads((tmp_path / "rep" / "tables.json").read_text())
    t2 = next(t for t in payload["tables"] if t["number"] == 2)
    ci = t2["records"][0]["recovery_ci"]
    assert ci["low"] is None and ci["reason"] == NO_DATA


def test_empty_tables_are_omitted_not_invented(tmp_path):
    from tests.report._synthetic import _rec, comp

    db = tmp_path / "b.sqlite"
    with Store(db) as s:
        s.add_run(_rec("b0", "baseline", "m", "none", 0, comp(10.0, 20.0)), "only-baseline", 0)
    tables, omitted = _tables(db)
    assert list(tables) == [1]
    assert [o.number for o in omitted] == [2, 3, 4, 5, 6]
    out = build_report(db, tmp_path / "rep")
    md = (tmp_path / "rep" / "tables.md").read_text()
    assert "Table 2: Treatment Effects" in md and "omitted" in md
    assert out.figures == []


def test_report_files_are_complete_and_consistent(db, tmp_path):
    out = tmp_path / "rep"
    res = build_report(db, out)
    names = {p.name for p in out.iterdir()}
    assert {"tables.md", "tables.json", "table1_post_treatment_accuracy.csv", "table5_rank_sweep.csv",
            "table6_transfer.csv", "figures"} <= names
    with open(out / "table2_treatment_effects.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][:5] == ["Model", "Pruning", "Treatment", "Recovery (pp)", "Recovery (pp) low"] and rows[1][3] == "3"
    payload = json.loads((out / "tables.json").read_text())
    assert [t["number"] for t in payload["tables"]] == [1, 2, 3, 4, 5, 6]
    assert "synthetic numbers" in (out / "tables.md").read_text()
    assert res.runs == 12
    # nothing is left behind but the report directory itself
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_report_errors(tmp_path):
    with pytest.raises(PrunelabError, match="does not exist"):
        build_report(tmp_path / "none.sqlite", tmp_path / "rep")
    Store(tmp_path / "empty.sqlite").close()
    with pytest.raises(PrunelabError, match="holds no finished runs"):
        build_report(tmp_path / "empty.sqlite", tmp_path / "rep")
    assert not (tmp_path / "rep").exists()


def test_sweep_arm_and_treatment_with_the_same_name_stay_apart(tmp_path):
    from tests.report._synthetic import KET, _rec, comp

    db = tmp_path / "s.sqlite"
    k32 = KET.with_(name="ketamine-r32", r=32, alpha=64.0)
    with Store(db) as s:
        s.add_run(_rec("b0", "baseline", "m", "none", 0, comp(10.0, 10.0)), "x", 0)
        s.add_run(_rec("t0", "treated", "m", "none", 0, comp(14.0, 14.0), k32, comp(13.0, 13.0), 1e14), "x", 1)
        s.add_run(_rec("w0", "treated", "m", "none", 0, comp(12.0, 12.0), k32,
                       comp(12.0, 12.0), 1e14, sweep=True), "x", 2)
    tables, _ = _tables(db)
    assert tables[2].records[0]["recovery"]["mean"] == 4.0   # the treatment
    assert tables[5].records[0]["recovery"]["mean"] == 2.0   # the sweep arm
