"""One table object, rendered four ways: Markdown (a pipe table), CSV, JSON and an HTML fragment.

Every table prunelab writes — the report's Tables 1–6, the studies' tables, the stress reports — is a
:class:`Table`: ``columns`` and ``rows`` of display cells plus ``records`` (the machine numbers, for JSON). A cell
is a display string (or anything ``str`` renders) or an :class:`IntervalCell` — a difference with a confidence
interval — which Markdown prints as one cell (``+2.1 [−1.3, +5.4]*``) and CSV as separate estimate / low / high /
p columns; a table holding intervals gets a ``Within noise`` column naming the differences whose CI includes
zero. :meth:`Table.html` is the same table as an escaped HTML ``<table>`` (the report's ``report.html``). What an
interval's brackets and markers mean is the caller's to explain: a subclass overrides
:meth:`Table.legend` (the report does, :class:`prunelab.report.tables.Table`).

Ground floor: the standard library only.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["NOISE_COLUMN", "WITHIN_NOISE", "IntervalCell", "Table"]

#: the Markdown column listing a row's differences that cannot be told from noise
NOISE_COLUMN = "Within noise (CI ∋ 0)"
#: the same column's CSV header
WITHIN_NOISE = "within noise"


@runtime_checkable
class IntervalCell(Protocol):
    """A printed difference: its display text, its ``(estimate, low, high, p)`` numbers and whether its CI
    includes the null (``within_noise``); ``reason`` says why it has no CI (empty when it has one)."""

    @property
    def has_ci(self) -> bool: ...

    @property
    def within_noise(self) -> bool: ...

    reason: str

    def text(self) -> str: ...

    def fields(self) -> tuple[float | None, float | None, float | None, float | None]: ...


def _number(value: float | None) -> str:
    """A CSV number: six significant digits, empty when undefined."""
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


@dataclass
class Table:
    """One table: ``rows`` hold display cells (strings or :class:`IntervalCell`), ``records`` the machine numbers.

    ``number=None`` renders the title without a "Table N:" prefix. ``notes`` print under the table, then the
    :meth:`legend` of its intervals, then ``mde`` (the report's minimum detectable differences). ``short`` names a
    column in the Within-noise column (default: its header without the unit). The first ``label_columns`` columns
    are left-aligned in Markdown (row labels), the rest right-aligned (numbers).
    """

    number: int | None
    slug: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mde: list[str] = field(default_factory=list)
    #: short names for the Within-noise column (default: the column header without its unit)
    short: dict[str, str] = field(default_factory=dict)
    label_columns: int = 1

    # ----- intervals ---------------------------------------------------------------------------------------
    def legend(self, cells: Sequence[IntervalCell]) -> list[str]:
        """Notes explaining the intervals' brackets and markers; none here (a subclass knows what they mean)."""
        return []

    def cells(self) -> list[IntervalCell]:
        return [c for r in self.rows for c in r if isinstance(c, IntervalCell)]

    def _interval_columns(self) -> list[int]:
        return [i for i in range(len(self.columns)) if any(isinstance(r[i], IntervalCell) for r in self.rows)]

    def _short(self, col: str) -> str:
        return self.short.get(col, col.replace(" (%)", "").replace(" (pp)", "").strip())

    def noise(self, row: list[Any]) -> str:
        """The Within-noise cell of ``row``: its differences whose CI includes zero, "–" if none, "" without CIs."""
        names = [self._short(self.columns[i]) for i in self._interval_columns()
                 if isinstance(row[i], IntervalCell) and row[i].within_noise]
        if names:
            return ", ".join(names)
        return "–" if any(isinstance(c, IntervalCell) and c.has_ci for c in row) else ""

    def _has_ci(self) -> bool:
        return any(c.has_ci for c in self.cells())

    # ----- Markdown ----------------------------------------------------------------------------------------
    def display_columns(self) -> list[str]:
        return self.columns + ([NOISE_COLUMN] if self._has_ci() else [])

    def text_rows(self) -> list[list[str]]:
        noise = self._has_ci()
        return [[c.text() if isinstance(c, IntervalCell) else str(c) for c in r] + ([self.noise(r)] if noise else [])
                for r in self.rows]

    def all_notes(self) -> list[str]:
        return self.notes + self.legend(self.cells()) + self.mde

    def pipe_table(self) -> str:
        """The Markdown pipe table alone (header, alignment row, rows), without title or notes."""
        cols = self.display_columns()
        align = ["---" if i < self.label_columns else "---:" for i in range(len(cols))]
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.text_rows()]
        return "\n".join(lines) + "\n"

    def markdown(self) -> str:
        """Bold title ("Table N: ..." when numbered), the pipe table, then every note in italics."""
        head = f"**Table {self.number}: {self.title}**\n\n" if self.number is not None else f"**{self.title}**\n\n"
        return head + self.pipe_table() + "".join(f"\n_{n}_\n" for n in self.all_notes())

    # ----- HTML --------------------------------------------------------------------------------------------
    def anchor(self) -> str:
        """The ``id`` of this table's HTML fragment: ``table<N>-<slug>`` (``table-<slug>`` unnumbered)."""
        return f"table{'' if self.number is None else self.number}-{self.slug}"

    def html(self) -> str:
        """An HTML fragment: the Markdown table's title (as ``<caption>``), header and cells, then every note.

        Cell texts are the Markdown's (:meth:`text_rows`), each escaped with :func:`html.escape`; like the
        Markdown, the first ``label_columns`` columns are left-aligned and the rest (numbers) get ``class="num"``
        (right-aligned by the page's style). An interval whose CI includes the null also gets ``noise``. The
        fragment is well-formed XML as well as HTML (no void elements, every tag closed)."""
        esc = html.escape
        cols = self.display_columns()

        def cls(i: int, extra: str = "") -> str:
            names = " ".join(n for n in ("num" if i >= self.label_columns else "", extra) if n)
            return f' class="{names}"' if names else ""

        title = f"Table {self.number}: {self.title}" if self.number is not None else self.title
        out = [f'<div class="table" id="{esc(self.anchor())}">', "<table>", f"<caption>{esc(title)}</caption>",
               "<thead><tr>" + "".join(f'<th scope="col"{cls(i)}>{esc(c)}</th>' for i, c in enumerate(cols))
               + "</tr></thead>", "<tbody>"]
        for raw, row in zip(self.rows, self.text_rows()):
            tds = []
            for i, text in enumerate(row):
                cell = raw[i] if i < len(raw) else None
                noisy = isinstance(cell, IntervalCell) and cell.has_ci and cell.within_noise
                tip = ' title="CI includes the null: within noise"' if noisy else ""
                tds.append(f"<td{cls(i, 'noise' if noisy else '')}{tip}>{esc(text)}</td>")
            out.append("<tr>" + "".join(tds) + "</tr>")
        out += ["</tbody>", "</table>"]
        out += [f'<p class="table-note">{esc(n)}</p>' for n in self.all_notes()]
        out.append("</div>")
        return "\n".join(out) + "\n"

    # ----- CSV ---------------------------------------------------------------------------------------------
    def csv_header(self) -> list[str]:
        intervals = set(self._interval_columns())
        out = []
        for i, c in enumerate(self.columns):
            out += [c, f"{c} low", f"{c} high", f"{c} p"] if i in intervals else [c]
        if intervals:
            out += [WITHIN_NOISE, "ci note"]
        return out

    def csv_rows(self) -> list[list[str]]:
        intervals = set(self._interval_columns())
        out = []
        for r in self.rows:
            row: list[str] = []
            reasons = []
            for i, c in enumerate(r):
                if i not in intervals:
                    row.append(str(c))
                elif isinstance(c, IntervalCell):
                    row += [_number(v) for v in c.fields()]
                    if c.reason:
                        reasons.append(f"{self._short(self.columns[i])}: {c.reason}")
                else:
                    row += [str(c), "", "", ""]
            if intervals:
                row += [self.noise(r), "; ".join(reasons)]
            out.append(row)
        return out

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.csv_header())
        writer.writerows(self.csv_rows())
        return buf.getvalue()

    # ----- JSON --------------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """JSON: display rows, CSV-shaped rows (separate low/high/p) and the records."""
        return {"number": self.number, "title": self.title, "columns": self.display_columns(),
                "rows": self.text_rows(), "csv_columns": self.csv_header(), "csv_rows": self.csv_rows(),
                "records": self.records, "notes": self.all_notes()}
