"""prunelab.table: one object, four renderings (Markdown, CSV, JSON, HTML); interval cells split into numbers in CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from prunelab.table import NOISE_COLUMN, WITHIN_NOISE, IntervalCell, Table


@dataclass
class Interval:
    estimate: float
    low: float
    high: float
    reason: str = ""

    @property
    def has_ci(self) -> bool:
        return True

    @property
    def within_noise(self) -> bool:
        return self.low <= 0 <= self.high

    def text(self) -> str:
        return f"{self.estimate:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"

    def fields(self):
        return self.estimate, self.low, self.high, 0.5


def test_plain_table_renders_markdown_csv_and_json():
    t = Table(None, "t", "Plain", ["cycle", "acc (%)"], [["0", "50.00"], ["1", "40.00"]], label_columns=0)
    assert t.pipe_table() == "| cycle | acc (%) |\n|---:|---:|\n| 0 | 50.00 |\n| 1 | 40.00 |\n"
    assert t.markdown().startswith("**Plain**\n\n| cycle")
    assert t.csv() == "cycle,acc (%)\n0,50.00\n1,40.00\n"
    assert t.as_dict()["rows"] == [["0", "50.00"], ["1", "40.00"]]


def test_interval_cells_get_a_noise_column_and_split_csv_fields():
    cell, noisy = Interval(2.0, 1.0, 3.0), Interval(0.5, -1.0, 2.0)
    assert isinstance(cell, IntervalCell) and not isinstance("2.0", IntervalCell)
    t = Table(3, "d", "Diffs", ["arm", "recovery (pp)", "drop (pp)"], [["a", cell, noisy]], notes=["n1"])
    md = t.markdown()
    assert md.startswith("**Table 3: Diffs**") and NOISE_COLUMN in md and "| a | +2.0 [+1.0, +3.0] |" in md
    assert "| drop |" in md and "_n1_" in md
    rows = list(csv.reader(io.StringIO(t.csv())))
    assert rows[0] == ["arm", "recovery (pp)", "recovery (pp) low", "recovery (pp) high", "recovery (pp) p",
                       "drop (pp)", "drop (pp) low", "drop (pp) high", "drop (pp) p", WITHIN_NOISE, "ci note"]
    assert rows[1] == ["a", "2", "1", "3", "0.5", "0.5", "-1", "2", "0.5", "drop", ""]


def test_a_subclass_supplies_the_legend_of_its_intervals():
    class Explained(Table):
        def legend(self, cells):
            return [f"{len(cells)} intervals"]

    t = Explained(None, "e", "E", ["x", "d"], [["a", Interval(1.0, 0.5, 2.0)]], mde=["mde"])
    assert t.all_notes() == ["1 intervals", "mde"]


def test_html_renders_the_markdown_cells_escaped_aligned_with_notes():
    import xml.etree.ElementTree as ET

    cell, noisy = Interval(2.0, 1.0, 3.0), Interval(0.5, -1.0, 2.0)
    t = Table(3, "d", "Diffs <b>&</b>", ["arm", "recovery (pp)", "drop (pp)"],
              [["<script>x</script> & 'q'", cell, noisy]], notes=["a < b & c", "n2"])
    frag = t.html()
    assert "<script>" not in frag and "&lt;script&gt;x&lt;/script&gt; &amp; &#x27;q&#x27;" in frag
    root = ET.fromstring(frag)  # one well-formed element
    assert root.tag == "div" and root.get("id") == "table3-d"
    assert root.find("table/caption").text == "Table 3: Diffs <b>&</b>"
    heads = root.findall("table/thead/tr/th")
    assert [h.text for h in heads] == t.display_columns() == ["arm", "recovery (pp)", "drop (pp)", NOISE_COLUMN]
    cells = root.findall("table/tbody/tr/td")
    assert [c.text for c in cells] == t.text_rows()[0] == ["<script>x</script> & 'q'", "+2.0 [+1.0, +3.0]",
                                                           "+0.5 [-1.0, +2.0]", "drop"]
    # the Markdown's alignment: label columns left, the rest right ("num"); a within-noise interval is marked
    assert [h.get("class") for h in heads] == [None, "num", "num", "num"]
    assert [c.get("class") for c in cells] == [None, "num", "num noise", "num"]
    assert t.pipe_table().splitlines()[1] == "|---|---:|---:|---:|"
    assert [p.text for p in root.findall("p")] == t.all_notes() == ["a < b & c", "n2"]
    assert all(p.get("class") == "table-note" for p in root.findall("p"))


def test_html_unnumbered_title_and_label_columns():
    import xml.etree.ElementTree as ET

    t = Table(None, "p", "Plain", ["cycle", "acc (%)"], [["0", "50.00"], ["1", ""]], label_columns=0)
    root = ET.fromstring(t.html())
    assert root.get("id") == "table-p" and root.find("table/caption").text == "Plain"
    assert {c.get("class") for c in root.iter("td")} == {"num"} and root.findall("p") == []
    assert [[c.text or "" for c in r] for r in root.findall("table/tbody/tr")] == [["0", "50.00"], ["1", ""]]
