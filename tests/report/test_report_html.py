"""report.html: one self-contained, valid page holding every table of tables.md (same titles, same cells), the
figures as data URIs, the protocol and sizes, the CIs and Within-noise labels and the experiment's note, with all
user text escaped; written inside the report's atomic directory."""

from __future__ import annotations

import base64
import html
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from prunelab.atomic import read_manifest
from prunelab.report import build_report
from prunelab.report.comparisons import NO_DATA
from prunelab.runs.result import RunMeta
from prunelab.runs.store import Store
from prunelab.table import NOISE_COLUMN
from tests.report._synthetic import KET, _rec, build, comp

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictHTML(HTMLParser):
    """html.parser with a strict tag-balance check, collecting the tables (caption + cell texts), images,
    links and the text of every element."""

    def __init__(self):
        super().__init__(convert_charrefs=False)  # raw data: an unescaped < or > is seen as such
        self.stack: list[str] = []
        self.doctype = None
        self.tables: list[dict] = []
        self._table = self._row = self._cell = self._caption = None
        self.imgs: list[dict] = []
        self.refs: list[tuple[str, str, str]] = []   # (tag, attribute, value) of every src/href
        self.tags: list[str] = []
        self.by_class: dict[str, list[str]] = {}
        self._class_stack: list[tuple[str, list[str]]] = []
        self.text: list[str] = []

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        for k in ("src", "href"):
            if k in a:
                self.refs.append((tag, k, a[k]))
        if tag == "img":
            self.imgs.append(a)
        if tag in VOID:
            return
        self.stack.append(tag)
        self._class_stack.append((tag, (a.get("class") or "").split()))
        if tag == "table":
            assert self._table is None, "nested table"
            self._table = {"caption": None, "rows": [], "classes": []}
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
            self._table["classes"].append(a.get("class") or "")
        elif tag == "caption":
            self._caption = []

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        assert tag not in VOID, f"end tag for void <{tag}>"
        assert self.stack, f"stray </{tag}>"
        top = self.stack.pop()
        assert top == tag, f"</{tag}> closes <{top}>"
        _, classes = self._class_stack.pop()
        if tag in ("td", "th"):
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._table["rows"].append(self._row)
            self._row = None
        elif tag == "caption":
            self._table["caption"] = "".join(self._caption).strip()
            self._caption = None
        elif tag == "table":
            self.tables.append(self._table)
            self._table = None

    def handle_entityref(self, name):
        self._text(html.unescape(f"&{name};"))

    def handle_charref(self, name):
        self._text(html.unescape(f"&#{name};"))

    def handle_data(self, data):
        if self.stack[-1:] != ["style"]:
            assert "<" not in data and ">" not in data and "&" not in data, f"unescaped text: {data!r}"
        self._text(data)

    def _text(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._caption is not None:
            self._caption.append(data)
        for _, classes in self._class_stack:
            for c in classes:
                self.by_class.setdefault(c, []).append(data)

    def close(self):
        super().close()
        assert not self.stack, f"unclosed tags: {self.stack}"


def parse(text: str) -> StrictHTML:
    p = StrictHTML()
    p.feed(text)
    p.close()
    return p


def md_tables(md: str) -> list[dict]:
    """Every pipe table of tables.md with the bold title (or ## heading) above it."""
    out, title, lines = [], None, md.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if m := re.fullmatch(r"\*\*(.+)\*\*", ln.strip()):
            title = m.group(1)
        elif ln.startswith("## "):
            title = ln[3:].strip()
        elif ln.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append({"title": title, "rows": [block[0]] + block[2:]})
            continue
        i += 1
    return out


def omitted_lines(md: str) -> list[str]:
    return [ln.strip().replace("**", "") for ln in md.splitlines() if "** — omitted:" in ln]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The synthetic store with per-item outcomes, reported with figures."""
    d = tmp_path_factory.mktemp("html")
    build(d / "r.sqlite", outcomes=True)
    res = build_report(d / "r.sqlite", d / "rep")
    out = d / "rep"
    return res, out, (out / "report.html").read_text(encoding="utf-8"), (out / "tables.md").read_text()


def check_tables_match(md: str, page: StrictHTML) -> int:
    """Every table of tables.md is in the page: same title (caption; the runs table under its heading), same
    header and cell texts (Markdown code-span backticks are markup, not text). Returns how many matched."""
    html_tables = page.tables
    n = 0
    for t in md_tables(md):
        rows = [[c.strip("`") for c in r] for r in t["rows"]]
        if t["title"] == "Runs":
            got = [h for h in html_tables if h["caption"] is None and h["rows"][:1] == rows[:1]]
        else:
            got = [h for h in html_tables if h["caption"] == t["title"]]
        assert len(got) == 1, t["title"]
        assert got[0]["rows"] == rows, t["title"]
        n += 1
    return n


def test_html_is_written_listed_and_part_of_the_atomic_report(report):
    res, out, text, _ = report
    assert "report.html" in res.files and (out / "report.html").is_file()
    assert "report.html" in read_manifest(out)["files"]
    assert text.startswith("<!DOCTYPE html>")
    # written beside tables.md, never in a sibling directory
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.sqlite", "rep"]


def test_html_is_valid(report):
    _, _, text, _ = report
    page = parse(text)  # raises on any unbalanced, stray or unclosed tag and on unescaped markup
    assert page.doctype.lower() == "doctype html"
    assert page.tags.count("html") == page.tags.count("head") == page.tags.count("body") == 1
    assert page.tags[:3] == ["html", "head", "meta"]
    # also well-formed XML: a strict parser (expat) reads the whole page
    root = ET.fromstring(text)
    assert root.tag == "html" and root.find("head/title").text == "prunelab report"
    try:
        import html5lib
    except ImportError:
        return
    html5lib.HTMLParser(strict=True).parse(text)


def test_every_table_of_tables_md_is_in_the_page(report):
    _, _, text, md = report
    page = parse(text)
    assert check_tables_match(md, page) == 7  # Tables 1–6 and the runs appendix
    # the CIs, their markers and the Within-noise labels are in the cells; the notes under the tables
    t2 = next(t for t in page.tables if (t["caption"] or "").startswith("Table 2:"))
    assert t2["rows"][0][-1] == NOISE_COLUMN and any(re.search(r"\[.+, .+\]\*", c) for c in t2["rows"][1])
    assert "Relapse Drop" in t2["rows"][2][-1]
    for note in ("Minimum detectable difference", "Differences: estimate [95 % CI]", "within noise"):
        assert any(note in n for n in page.by_class["table-note"]), note
    # a within-noise interval is marked in the page too
    assert "+1.0 [+0.2, +2.5]" in page.by_class["noise"]


def test_numbers_are_right_aligned_as_in_the_markdown(report):
    _, _, text, md = report
    page = parse(text)
    t5 = next(t for t in page.tables if (t["caption"] or "").startswith("Table 5:"))
    ncols = len(t5["rows"][0])
    align = next(ln for ln in md.split("**Table 5:")[1].splitlines() if ln.startswith("|---"))
    num = [a.endswith(":") for a in align.strip("|").split("|")]
    assert [("num" in c.split()) for c in t5["classes"][:ncols]] == num


def test_figures_are_inlined_as_png_data_uris_with_captions(report):
    res, out, text, _ = report
    page = parse(text)
    assert len(res.figures) >= 3 and len(page.imgs) == len(res.figures)
    srcs = [i["src"] for i in page.imgs]
    for name in res.figures:
        data = (out / name).read_bytes()
        assert "data:image/png;base64," + base64.b64encode(data).decode() in srcs, name
    assert all(i.get("alt") for i in page.imgs)
    assert page.tags.count("figcaption") == len(res.figures)
    joined = "".join(page.text)
    assert "Figure 1:" in joined and f"Figure {len(res.figures)}:" in joined


def test_page_is_self_contained(report):
    _, _, text, _ = report
    page = parse(text)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    for tag, attr, value in page.refs:
        assert value.startswith("#") or (tag == "img" and value.startswith("data:image/png;base64,")), value
    style = text.split("<style>")[1].split("</style>")[0]
    assert "url(" not in style and "@import" not in style and "@font-face" not in style


def test_protocol_sizes_and_the_experiment_note(report):
    _, _, text, _ = report
    page = parse(text)
    proto = next(t for t in page.tables if t["rows"] and t["rows"][0][0] == "Runs" and t["caption"] is None)
    rows = dict(r for r in proto["rows"] if len(r) == 2)
    assert rows["Runs"] == "12 finished: 5 untreated, 7 treated"
    assert rows["Seeds (training)"] == "llama · w60: 0, 1, 2 (3 seeds); gemma · none: 0, 1 (2 seeds)"
    assert rows["Items per task"] == "arc_easy_gen: 100 evaluated (limit none); lambada_gen: 100 evaluated (limit none)"
    assert rows["Prompt protocol"].startswith("configured auto")
    assert rows["Composite"] == "mean of arc_easy_gen, lambada_gen"
    assert rows["Recovery data"].startswith("500 training samples, 100 held out, sequence length 512")
    assert "llama · w60 · ketamine-r16: 12 epochs" in rows["Dose"]
    assert rows["Stress"].startswith("chronic: 2 cycles")
    assert page.by_class["note"] == ["synthetic numbers"]
    assert NO_DATA not in text


def test_old_store_and_omitted_tables(tmp_path):
    build(tmp_path / "old.sqlite")  # no per-item outcomes
    build_report(tmp_path / "old.sqlite", tmp_path / "rep", figures=False)
    text = (tmp_path / "rep" / "report.html").read_text()
    md = (tmp_path / "rep" / "tables.md").read_text()
    page = parse(text)
    assert check_tables_match(md, page) == 7 and NO_DATA in "".join(page.text) and "<img" not in text
    db = tmp_path / "b.sqlite"
    with Store(db) as s:
        s.add_run(_rec("b0", "baseline", "m", "none", 0, comp(10.0, 20.0)), "only-baseline", 0)
    build_report(db, tmp_path / "rep2")
    text = (tmp_path / "rep2" / "report.html").read_text()
    md = (tmp_path / "rep2" / "tables.md").read_text()
    page = parse(text)
    assert check_tables_match(md, page) == 2  # Table 1 and the runs
    body = " ".join("".join(page.text).split())
    assert len(omitted_lines(md)) == 5 and all(line in body for line in omitted_lines(md))


def test_user_text_is_escaped(tmp_path):
    evil = "<script>alert('x')</script> & \"q\""
    model = "m<b>&amp;"
    db = tmp_path / "e.sqlite"
    with Store(db) as s:
        meta = RunMeta(description=f"desc {evil}", note=f"note {evil}\nsecond line")
        s.add_run(_rec("b0", "baseline", model, "none", 0, comp(10.0, 20.0)), "ex<p>", 0, meta)
        s.add_run(_rec("t0", "treated", model, "none", 0, comp(14.0, 22.0), KET, comp(12.0, 21.0), 1e14),
                  "ex<p>", 1, meta)
    build_report(db, tmp_path / "rep", experiment="ex<p>", figures=False)
    text = (tmp_path / "rep" / "report.html").read_text()
    page = parse(text)
    assert "script" not in page.tags and "b" not in page.tags and "p" in page.tags  # only the page's own <p>s
    ET.fromstring(text)
    joined = "".join(page.text)
    assert f"note {evil}\nsecond line" in joined and f"desc {evil}" in joined
    assert "prunelab report: ex<p>" in joined
    assert any(r[0] == model for t in page.tables for r in t["rows"])
    md = (tmp_path / "rep" / "tables.md").read_text()
    check_tables_match(md, page)


def test_a_failed_page_leaves_the_previous_report(tmp_path, monkeypatch):
    import prunelab.report.build as B

    db = tmp_path / "r.sqlite"
    build(db)
    out = tmp_path / "rep"
    build_report(db, out, figures=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("page failed")

    monkeypatch.setattr(B, "render_html", boom)
    with pytest.raises(RuntimeError, match="page failed"):
        build_report(db, out, figures=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.sqlite", "rep"]


def test_report_html_size(report):
    res, out, text, _ = report
    size = (out / "report.html").stat().st_size
    pngs = sum((out / f).stat().st_size for f in res.figures)
    # the figures dominate: base64 is 4/3 of the PNG bytes; the rest is a few tens of kB
    assert 4 * pngs / 3 < size < 4 * pngs / 3 + 80_000
    print(f"report.html: {size} bytes ({len(res.figures)} figures, {pngs} PNG bytes)")


@pytest.mark.parametrize("bad", ["<div><p>x</div>", "<div>x", "x</p>", "<p>a < b</p>", "<p>a & b</p>",
                                 "<img src='x'></img>"])
def test_the_checker_refuses_broken_pages(bad):
    with pytest.raises(AssertionError):
        parse(bad)


def test_the_table_check_sees_a_changed_cell(report):
    _, _, text, md = report
    with pytest.raises(AssertionError, match="Table 2"):
        check_tables_match(md, parse(text.replace("+1.0 [+0.2, +2.5]", "+1.0 [+0.2, +2.6]")))
