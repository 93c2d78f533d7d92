"""Plain value tables for the studies: raw numbers in, one :class:`Table` out (Markdown, CSV and JSON).

A study's row holds machine values (floats, ints, strings, ``None``); :func:`value_table` keeps them as the
table's ``records`` (what the JSON carries, at full precision) and renders each as display text for the rows
that Markdown and CSV print, so every study table goes through the one renderer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from prunelab.table import Table

#: Significant digits of a printed float: the precision ``Table`` itself prints CI bounds with in CSV.
DIGITS = 6
#: What a missing value prints as (Markdown and CSV alike).
MISSING = "–"


def number_text(value: Any, digits: int = DIGITS, missing: str = MISSING) -> str:
    """Display text of one cell: ``None`` → ``missing``, a float → ``digits`` significant digits (``nan`` /
    ``inf`` spelled out), anything else → ``str``."""
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def value_table(slug: str, title: str, columns: Sequence[str], values: Sequence[Sequence[Any]],
                notes: Sequence[str] = (), *, label_columns: int = 1, digits: int = DIGITS,
                missing: str = MISSING) -> Table:
    """A :class:`Table` (no table number) whose rows print ``values`` with :func:`number_text` and whose
    records keep them, one ``{column: value}`` dict per row. The first ``label_columns`` columns are row labels
    (left-aligned in Markdown)."""
    columns = list(columns)
    rows = [[number_text(v, digits, missing) for v in row] for row in values]
    records = [dict(zip(columns, row, strict=True)) for row in values]
    return Table(None, slug, title, columns, rows, records, list(notes), label_columns=label_columns)
