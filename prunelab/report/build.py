"""Write the recovery study's report directory: Tables 1–6 (Markdown, one CSV each, JSON) and the figures.

The one module that combines :mod:`prunelab.report.tables` and :mod:`prunelab.report.figures` (the figures draw
the tables' data, so the tables never import the figures), reading the runs from the results store
(:class:`prunelab.runs.store.Store`).
"""

from __future__ import annotations

import json
from pathlib import Path

from prunelab.atomic import atomic_dir, to_jsonable
from prunelab.errors import PrunelabError
from prunelab.report.comparisons import NO_DATA, Outcomes
from prunelab.report.figures import write_figures
from prunelab.report.tables import build_tables, render_markdown, runs_appendix
from prunelab.runs.store import Store


def write_report(db: str | Path, out_dir: str | Path, experiment: str | None = None, figures: bool = True):
    """See :func:`prunelab.report.build_report`."""
    from prunelab.report import ReportResult

    with Store(db, readonly=True) as store:
        runs = store.runs(experiment)
        outcomes = Outcomes.from_store(store, runs)
    if not runs:
        raise PrunelabError(f"{db} holds no finished runs{f' of {experiment}' if experiment else ''}; run an experiment first")
    tables, omitted, data = build_tables(runs, outcomes)
    out_dir = Path(out_dir)
    title = f"# prunelab report{f': {experiment}' if experiment else ''}\n\n" \
            f"{len(runs)} finished runs from `{Path(db).name}`. Accuracies in percent, differences in percentage " \
            f"points as estimate [95 % CI] from the stored per-item outcomes, * = p < 0.05; ± is the sample SD " \
            f"over seeds (a single seed shows the mean only). " + \
            ("" if outcomes else f"This store holds no per-item outcomes: {NO_DATA}.") + "\n"
    files, figs = [], []
    with atomic_dir(out_dir) as tmp:
        (tmp / "tables.md").write_text(render_markdown(tables, omitted, data, title) + "\n" + runs_appendix(runs),
                                       encoding="utf-8")
        files.append("tables.md")
        for t in tables:
            name = f"table{t.number}_{t.slug}.csv"
            (tmp / name).write_text(t.csv(), encoding="utf-8")
            files.append(name)
        payload = {"tables": [t.as_dict() for t in tables],
                   "omitted": [{"number": o.number, "title": o.title, "reason": o.reason} for o in omitted],
                   "notes": data.notes, "runs": len(runs)}
        (tmp / "tables.json").write_text(json.dumps(to_jsonable(payload), indent=2) + "\n", encoding="utf-8")
        files.append("tables.json")
        if figures:
            figs = [f"figures/{p.name}" for p in write_figures(data, tables, tmp / "figures")]
            files += figs
    return ReportResult(out_dir=str(out_dir), runs=len(runs), tables=[f"Table {t.number}: {t.title}" for t in tables],
                        omitted=[f"Table {o.number}: {o.reason}" for o in omitted], figures=figs, files=files)
