"""Tables 1–6 with per-item outcomes: every difference has its paired CI and p mark, MDE lines, refusals of
unpaired comparisons, the zero-effect case, and a report equal before and after reopening the store."""

from __future__ import annotations

import csv
from dataclasses import replace
import json

import pytest
from scipy import stats as sps

from prunelab.runs.store import Store
from prunelab.report import build_report
from prunelab.report.comparisons import NO_DATA, NOT_PAIRED, Outcomes, accuracy_cell
from prunelab.report.tables import NOISE_COLUMN, build_tables, render_markdown
from tests.report._synthetic import KET, _rec, build, comp, item_outcomes, records


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The synthetic store with outcomes, and its tables built from the reopened store."""
    db = tmp_path_factory.mktemp("ci") / "r.sqlite"
    build(db, outcomes=True)
    with Store(db, readonly=True) as s:
        runs = s.runs()
        tables, omitted, data = build_tables(runs, Outcomes.from_store(s, runs))
    return db, {t.number: t for t in tables}, omitted, data


def _row(table, **match):
    return next(r for r, rec in zip(table.rows, table.records) if all(rec.get(k) == v for k, v in match.items()))


def test_every_difference_has_a_ci_from_stored_outcomes(stored):
    _, t, _, _ = stored
    for number in (2, 3, 5, 6):
        cells = t[number].cells()
        assert cells and all(c.has_ci for c in cells if c.summary is not None), number
    rec = next(r for r in t[2].records if r["model"] == "llama")
    ci = rec["recovery_ci"]
    # the per-item estimate equals the mean of the per-seed recoveries (3, 4, 2: equal item counts)
    assert ci["estimate"] == pytest.approx(3.0) and ci["low"] < 3.0 < ci["high"]
    assert ci["p"] < 0.05 and ci["significant"]
    # net retained = after relapse − untreated, item by item = recovery − relapse drop
    assert rec["net_retained_ci"]["estimate"] == pytest.approx(3.0 - 4 / 3)
    row = _row(t[2], model="llama")
    assert row[3].text().endswith("*") and "[" in row[3].text()


def test_markdown_csv_json_carry_low_high_p(stored, tmp_path):
    db, _, _, _ = stored
    build_report(db, tmp_path / "rep", figures=False)
    md = (tmp_path / "rep" / "tables.md").read_text()
    assert NOISE_COLUMN in md and "Minimum detectable difference" in md and NO_DATA not in md.split("## Runs")[0]
    with open(tmp_path / "rep" / "table2_treatment_effects.csv") as f:
        rows = list(csv.DictReader(f))
    llama = next(r for r in rows if r["Model"] == "llama")
    lo, hi, p = (float(llama[f"Recovery (pp) {k}"]) for k in ("low", "high", "p"))
    assert lo < float(llama["Recovery (pp)"]) < hi and 0 < p < 0.05
    payload = json.loads((tmp_path / "rep" / "tables.json").read_text())
    t2 = next(t for t in payload["tables"] if t["number"] == 2)
    assert "Recovery (pp) low" in t2["csv_columns"] and t2["records"][0]["recovery_ci"]["high"] == pytest.approx(hi, rel=1e-5)


def test_within_noise_is_labelled(stored):
    _, t, _, _ = stored
    t5 = t[5]
    # one seed, r32: relapse drop = 1 item per task (24 → 23) — a CI that reaches zero, no mark
    r32 = _row(t5, r=32)
    assert not r32[5].text().endswith("*") and r32[5].within_noise
    assert "Relapse Drop" in t5.noise(r32)
    # r16 vs rank 1 (r32): −5 pp on both tasks, every discordant item one way — a finding, not noise
    r16 = _row(t5, r=16)
    vs = r16[7]
    assert vs.estimate == pytest.approx(-5.0) and vs.text().endswith("*") and not vs.within_noise


def test_mcnemar_p_for_one_seed_one_task():
    recs = {r.hash: r for r, _ in records(outcomes=True)}
    out = Outcomes.from_records(list(recs.values()))
    # seed 0: ketamine ARC 24 % vs baseline 20 %: four items only the treated model gets right
    cell = accuracy_cell(out, {0: ("k0", "eval")}, {0: ("b0", "eval")}, ("arc_easy_gen",), None)
    assert cell.estimate == pytest.approx(4.0)
    assert cell.diff.p == pytest.approx(sps.binomtest(4, 4, 0.5).pvalue)  # 0.125: no mark
    assert not cell.text().endswith("*") and cell.within_noise


def test_zero_effect_prints_zero_interval_and_no_mark(tmp_path):
    db = tmp_path / "z.sqlite"
    with Store(db) as s:
        s.add_run(_rec("b0", "baseline", "m", "none", 0, comp(20.0, 30.0), outcomes=True), "z", 0)
        s.add_run(_rec("t0", "treated", "m", "none", 0, comp(20.0, 30.0), KET, comp(20.0, 30.0), 1e14,
                       outcomes=True), "z", 1)
        runs = s.runs()
        tables, _, _ = build_tables(runs, Outcomes.from_store(s, runs))
    t2 = next(t for t in tables if t.number == 2)
    rec = t2.rows[0][1]
    assert (rec.diff.estimate, rec.diff.low, rec.diff.high, rec.diff.p) == (0.0, 0.0, 0.0, 1.0)
    assert rec.text() == "+0.0 [+0.0, +0.0]" and rec.within_noise
    assert "Recovery" in t2.noise(t2.rows[0])


def test_different_items_are_never_paired(tmp_path):
    """The treated run was evaluated on other items: the composite is refused, one task computes unpaired."""
    db = tmp_path / "u.sqlite"
    base = _rec("b0", "baseline", "m", "none", 0, comp(20.0, 30.0), outcomes=True)
    treated = _rec("t0", "treated", "m", "none", 0, comp(25.0, 30.0), KET, None, 1e14, outcomes=True)
    treated.outcomes["eval"]["arc_easy_gen"] = [
        type(o)(f"other{i}", correct=o.correct) for i, o in enumerate(item_outcomes("arc_easy_gen", 25.0))]
    with Store(db) as s:
        s.add_run(base, "u", 0)
        s.add_run(treated, "u", 1)
        runs = s.runs()
        out = Outcomes.from_store(s, runs)
        tables, _, _ = build_tables(runs, out)
    t2 = next(t for t in tables if t.number == 2)
    cell = t2.rows[0][1]
    assert cell.reason == NOT_PAIRED and not cell.has_ci and cell.text().endswith("§")
    assert any(NOT_PAIRED in n for n in t2.all_notes())
    one = accuracy_cell(out, {0: ("t0", "eval")}, {0: ("b0", "eval")}, ("arc_easy_gen",), None)
    assert one.unpaired and one.text().endswith("(unpaired)") and one.estimate == pytest.approx(5.0)


def test_table3_both_costs_and_the_equalised_formula(tmp_path):
    db = tmp_path / "f.sqlite"
    with Store(db) as s:
        s.add_run(_rec("b0", "baseline", "m", "none", 0, comp(20.0, 20.0), outcomes=True), "f", 0)
        s.add_run(_rec("t0", "treated", "m", "none", 0, comp(24.0, 22.0), KET, None, 2e14, outcomes=True,
                       formula="honest"), "f", 1)
        s.add_run(_rec("t1", "treated", "m", "none", 0, comp(22.0, 22.0), KET.with_(name="ssri"), None, 1e14,
                       outcomes=True), "f", 2)
        runs = s.runs()
        tables, _, _ = build_tables(runs, Outcomes.from_store(s, runs))
    t3 = next(t for t in tables if t.number == 3)
    rows = {r[0]: r for r in t3.text_rows()}
    assert rows["Ketamine-like"][1] == "honest" and rows["SSRI-like"][1] == "study"  # default when not stored
    assert rows["Ketamine-like"][4:6] == ["2.00e14", "2.00e15"]
    eff = next(r for r in t3.records if r["treatment"] == "ketamine")["efficiency_ci"]
    rec = next(r for r in t3.records if r["treatment"] == "ketamine")["recovery_ci"]
    # efficiency CI = recovery CI at the fixed dose: × 1e15 / 2e14 = × 5
    assert eff["estimate"] == pytest.approx(5 * rec["estimate"]) and eff["low"] == pytest.approx(5 * rec["low"])
    assert "6·P·L·N·E" in t3.columns[4] and "T·(2F+6P)" in t3.columns[5]


def test_table6_delta_is_a_paired_difference_in_differences(stored):
    _, t, _, _ = stored
    gemma = next(r for r in t[6].records if r["model"] == "gemma")
    d = gemma["delta_vs_primary_ci"]
    assert d["estimate"] == pytest.approx(6.0 - 3.0) and d["low"] < 3.0 < d["high"]


def test_table4_cycles_have_intervals_and_a_paired_decline(stored):
    _, t, _, _ = stored
    rows = t[4].text_rows()
    assert rows[0][1].startswith("31.0 [")  # cycle 0: 30, 31, 32 % averaged per item
    decline = t[4].rows[-1][1]
    assert decline.estimate == pytest.approx(12.0) and decline.text().endswith("*")


def test_report_from_records_equals_report_after_reopening(stored, tmp_path):
    """Tables built from the runs in memory (before storing) equal those built from the reopened store."""
    db, t, omitted, data = stored
    with Store(db, readonly=True) as s:  # positions and memberships come from the store
        pos = {r.hash: (r.position, r.meta) for r in s.runs()}
    recs = [replace(r, position=pos[r.hash][0], meta=pos[r.hash][1]) for r, _ in records(outcomes=True)]
    recs.sort(key=lambda r: (r.position, r.finished_at))
    mem_tables, mem_omitted, mem_data = build_tables(recs, Outcomes.from_records(recs))
    assert render_markdown(mem_tables, mem_omitted, mem_data) == render_markdown(list(t.values()), omitted, data)
    assert [x.csv() for x in mem_tables] == [x.csv() for x in t.values()]
