"""Write the recovery study's report directory: Tables 1–6 (Markdown, one CSV each, JSON), the figures and one
self-contained ``report.html``.

The one module that combines :mod:`prunelab.report.tables` and :mod:`prunelab.report.figures` (the figures draw
the tables' data, so the tables never import the figures), reading the runs from the results store
(:class:`prunelab.runs.store.Store`).

``report.html`` is the study on one page, with no external CSS, JS, fonts or images: the introduction, the
experiment's note, the protocol and sizes as recorded in the runs' configs (:func:`protocol_rows`), every table
of ``tables.md`` (:meth:`prunelab.table.Table.html`: the same titles, cells, CIs, Within-noise labels and notes),
the figures inlined as base64 PNG data URIs, and the runs appendix. Every piece of text is escaped with
:func:`html.escape` (model names, descriptions and experiment notes are user text). The page is well-formed XML
as well as HTML, so a strict parser reads it.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prunelab.atomic import atomic_dir, to_jsonable
from prunelab.errors import PrunelabError
from prunelab.report.comparisons import NO_DATA, Outcomes
from prunelab.report.figures import write_figures
from prunelab.report.tables import Data, Omitted, Table, build_tables, render_markdown, runs_appendix
from prunelab.runs.result import RunRecord
from prunelab.runs.store import Store

HTML_NAME = "report.html"

#: figure file stem -> (the table it illustrates, its caption); others go to the Figures section with their stem
FIGURES: dict[str, tuple[int | None, str]] = {
    "recovery_bars": (2, "Recovery (treated − untreated composite, pp) per treatment, with the paired 95 % CIs "
                         "of Table 2 (estimates only without per-item data)."),
    "longitudinal": (4, "Accuracy per chronic-stress cycle, each cycle with its 95 % interval over items "
                        "(Table 4)."),
    "rank_sweep": (5, "Rank sweep: recovery and relapse drop (95 % CIs) and the sweep score against the LoRA "
                      "rank (Table 5)."),
    "width_profile": (None, "Per-layer MLP width of each width-pruned model (dashed: before pruning)."),
    "depth_mask": (None, "Depth-pruning mask: kept (filled) and removed (empty) blocks of each depth-pruned model."),
}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; line-height: 1.45;
       color: #1a1a1a; background: #fff; margin: 0; }
main { max-width: 64rem; margin: 0 auto; padding: 1.5rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
nav ul { columns: 2; font-size: 0.9rem; }
.table { overflow-x: auto; margin: 1.2rem 0 1.8rem; }
table { border-collapse: collapse; font-size: 0.88rem; }
th, td { border: 1px solid #b8b8b8; padding: 0.25rem 0.5rem; vertical-align: top; text-align: left; }
thead th { background: #eef0f2; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 0.3rem 0; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
td.noise { color: #666; background: #f6f6f6; }
.table-note { font-size: 0.84rem; color: #444; margin: 0.35rem 0; max-width: 60rem; }
.omitted { color: #555; }
blockquote.note { border-left: 4px solid #999; margin: 1rem 0; padding: 0.3rem 1rem; background: #fafafa;
                  white-space: pre-line; }
table.protocol th { background: #f6f6f6; white-space: nowrap; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9rem; color: #333; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.9em; }
"""

_RESULTS = ("Accuracies in percent, differences in percentage points as estimate [95 % CI] from the stored per-item "
            "outcomes, * = p < 0.05; ± is the sample SD over seeds (a single seed shows the mean only). ")


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
    heading = f"prunelab report{f': {experiment}' if experiment else ''}"
    no_items = "" if outcomes else f"This store holds no per-item outcomes: {NO_DATA}."
    title = f"# {heading}\n\n{len(runs)} finished runs from `{Path(db).name}`. {_RESULTS}{no_items}\n"
    appendix = runs_appendix(runs)
    files, figs = [], []
    with atomic_dir(out_dir) as tmp:
        (tmp / "tables.md").write_text(render_markdown(tables, omitted, data, title) + "\n" + appendix,
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
        pngs: list[Path] = []
        if figures:
            pngs = write_figures(data, tables, tmp / "figures")
            figs = [f"figures/{p.name}" for p in pngs]
            files += figs
        intro = (f"{len(runs)} finished runs from <code>{html.escape(Path(db).name)}</code>. "
                 f"{html.escape(_RESULTS + no_items)}")
        (tmp / HTML_NAME).write_text(render_html(heading, intro, runs, tables, omitted, data, pngs, appendix),
                                     encoding="utf-8")
        files.append(HTML_NAME)
    return ReportResult(out_dir=str(out_dir), runs=len(runs), tables=[f"Table {t.number}: {t.title}" for t in tables],
                        omitted=[f"Table {o.number}: {o.reason}" for o in omitted], figures=figs, files=files)


# ------------------------------------------------------------------------------------------------ HTML
def render_html(heading: str, intro_html: str, runs: Sequence[RunRecord], tables: list[Table],
                omitted: list[Omitted], data: Data, pngs: Sequence[Path], appendix_md: str) -> str:
    """The whole page. ``intro_html`` is already escaped; every other text is escaped here."""
    esc = html.escape
    placed: dict[int | None, list[tuple[Path, str]]] = {}
    numbers = {t.number for t in tables}
    for p in pngs:
        number, caption = FIGURES.get(p.stem, (None, p.stem.replace("_", " ").capitalize() + "."))
        placed.setdefault(number if number in numbers else None, []).append((p, caption))
    counter = iter(range(1, len(pngs) + 1))

    def figure_html(path: Path, caption: str) -> str:
        n = next(counter)
        data_uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        return (f'<figure id="figure-{esc(path.stem)}">\n<img src="{data_uri}" alt="{esc(caption)}" />\n'
                f"<figcaption><strong>Figure {n}:</strong> {esc(caption)}</figcaption>\n</figure>\n")

    sections = sorted([(t.number, 0, t) for t in tables] + [(o.number, 1, o) for o in omitted],
                      key=lambda x: (x[0], x[1]))
    nav = ['<li><a href="#protocol">Protocol and sizes</a></li>']
    body = [f"<h1>{esc(heading)}</h1>", f'<p class="intro">{intro_html}</p>']
    body += [f'<blockquote class="note">{esc(n)}</blockquote>' for n in data.notes]
    body += ['<h2 id="protocol">Protocol and sizes</h2>',
             '<p>As recorded in the runs\' configs and results; each table\'s Seeds column and MDE line give the '
             'sizes behind its numbers.</p>',
             '<div class="table"><table class="protocol"><tbody>']
    body += [f'<tr><th scope="row">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in protocol_rows(runs, data)]
    body += ["</tbody></table></div>", '<h2 id="tables">Tables</h2>']
    for number, _, item in sections:
        if isinstance(item, Omitted):
            anchor = f"table{number}-omitted"
            nav.append(f'<li><a href="#{anchor}">Table {number}: {esc(item.title)}</a> (omitted)</li>')
            body.append(f'<p class="omitted" id="{anchor}"><strong>Table {number}: {esc(item.title)}</strong> '
                        f"— omitted: {esc(item.reason)}.</p>")
            continue
        nav.append(f'<li><a href="#{esc(item.anchor())}">Table {number}: {esc(item.title)}</a></li>')
        body.append(item.html())
        body += [figure_html(p, c) for p, c in placed.get(number, [])]
    if placed.get(None):
        nav.append('<li><a href="#figures">Figures</a></li>')
        body.append('<h2 id="figures">Figures</h2>')
        body += [figure_html(p, c) for p, c in placed[None]]
    nav.append('<li><a href="#runs">Runs</a></li>')
    # the marker matches tables.md's "## Runs": what follows is per-run bookkeeping (wall times, hashes)
    body += ["<!-- ## Runs -->", '<h2 id="runs">Runs</h2>', markdown_table_html(appendix_md)]
    head = ['<!DOCTYPE html>', '<html lang="en">', "<head>", '<meta charset="utf-8" />',
            '<meta name="viewport" content="width=device-width, initial-scale=1" />', f"<title>{esc(heading)}</title>",
            f"<style>{STYLE}</style>", "</head>", "<body>", "<main>"]
    lead = 2 + len(data.notes)  # title, introduction and the experiment's notes come before the contents
    return "\n".join(head + body[:lead] + ["<nav><ul>", *nav, "</ul></nav>"] + body[lead:]
                     + ["</main>", "</body>", "</html>"]) + "\n"


def _inline(text: str) -> str:
    """Escaped text with Markdown code spans (`` `x` ``) as ``<code>``."""
    parts = re.split(r"`([^`]*)`", text)
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def markdown_table_html(markdown: str) -> str:
    """The first pipe table of ``markdown`` (the runs appendix) as an HTML table, aligned as its alignment row
    says; cells are escaped, code spans become ``<code>``."""
    lines = [ln.strip() for ln in markdown.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return ""

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip("|").split("|")]

    header, align, rows = cells(lines[0]), cells(lines[1]), [cells(ln) for ln in lines[2:]]
    num = [a.endswith(":") for a in align]

    def cls(i: int) -> str:
        return ' class="num"' if i < len(num) and num[i] else ""

    out = ['<div class="table">', "<table>",
           "<thead><tr>" + "".join(f'<th scope="col"{cls(i)}>{_inline(c)}</th>' for i, c in enumerate(header))
           + "</tr></thead>", "<tbody>"]
    out += ["<tr>" + "".join(f"<td{cls(i)}>{_inline(c)}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows]
    out += ["</tbody>", "</table>", "</div>"]
    return "\n".join(out)


# -------------------------------------------------------------------------------------- protocol / sizes
def _distinct(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _join(values: Iterable[Any], sep: str = "; ", empty: str = "–") -> str:
    return sep.join(str(v) for v in _distinct(values)) or empty


def _g(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _range(values: Iterable[int]) -> str:
    vals = sorted(set(values))
    if not vals:
        return "–"
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}–{vals[-1]}"


def _pruning_text(spec: Any) -> str:
    dump = spec.model_dump()
    kind = dump.pop("kind", "none")
    dump.pop("name", None)
    if kind == "none":
        return "none (dense)"
    cal = dump.pop("calibration", None)
    if not dump.get("adaptive", True):
        for k in ("adaptive", "amplitude", "steps"):
            dump.pop(k, None)
    parts = [f"{k.replace('_', ' ')} {_g(v)}" for k, v in dump.items() if v is not None]
    if cal:
        parts.append(f"calibration {cal.get('source')} {cal.get('samples')} × {cal.get('seq_len')} tokens")
    return f"{kind}: " + ", ".join(parts)


def _dose_text(rec: RunRecord) -> str:
    t = rec.config.treatment
    d = t.dose
    done = rec.metrics.training.epochs if rec.metrics.training is not None else None
    arm = f"{rec.model} · {rec.pruning} · {t.mechanism.name}"
    if d.reference is None:
        return f"{arm}: {d.epochs} epoch{'' if d.epochs == 1 else 's'}"
    return (f"{arm}: isodose with {d.reference.name} (r {d.reference.r}) × {d.reference_epochs} epochs, "
            f"{d.formula or 'study'} cost → {'?' if done is None else _g(done)} epochs")


def protocol_rows(runs: Sequence[RunRecord], data: Data) -> list[tuple[str, str]]:
    """The protocol and sizes of the study, read from the runs' configs and results: ``(label, text)`` rows.

    Values that differ between runs are all listed (in run order); nothing is inferred or filled in."""
    treated = [r for r in runs if r.config.treatment is not None]
    rows = [("Runs", f"{len(runs)} finished: {len(runs) - len(treated)} untreated, {len(treated)} treated")]
    models = []
    for r in runs:
        m = r.config.model
        text = m.name if m.source == m.name else f"{m.name} ({m.source})"
        desc = data.descriptions.get(r.model) or m.description
        models.append(text + (f" — {desc}" if desc else ""))
    rows.append(("Models", _join(models)))
    rows.append(("Pruning", _join(f"{r.model} · {r.pruning}: {_pruning_text(r.config.pruning)}" for r in runs)))
    seeds: dict[tuple[str, str], set[int]] = {}
    for r in runs:
        seeds.setdefault((r.model, r.pruning), set()).add(r.seed)
    rows.append(("Seeds (training)", "; ".join(
        f"{m} · {p}: {', '.join(map(str, sorted(s)))} ({len(s)} seed{'s' if len(s) != 1 else ''})"
        for (m, p), s in seeds.items())))
    tasks = _distinct(t for r in runs for t in r.config.eval.tasks)
    rows.append(("Evaluation tasks", ", ".join(tasks)))
    rows.append(("Composite", "mean of " + ", ".join(data.composite_tasks())))
    used = _distinct(f"{t}: {p}" for r in runs for t, p in sorted(r.metrics.eval.protocol.items()))
    rows.append(("Prompt protocol", f"configured {_join((r.config.eval.protocol for r in runs), ', ')}"
                 + (f"; used {_join(used, ', ')}" if used else "")))
    items = []
    for t in tasks:
        limits = _distinct(r.config.eval.limit_for(t) for r in runs if t in r.config.eval.tasks)
        limit = ", ".join("none" if v is None else str(v) for v in limits)
        n = [int(r.metrics.eval.n[t]) for r in runs if t in r.metrics.eval.n]
        items.append(f"{t}: {f'{_range(n)} evaluated' if n else 'count not recorded'} (limit {limit})")
    rows.append(("Items per task", "; ".join(items)))
    rows.append(("Item sample seed", _join((r.config.eval.seed for r in runs), ", ")
                 + " (the items are sampled with it, so the runs score the same items)"))
    if treated:
        rows.append(("Recovery data", _join(
            f"{t.samples} training samples, {t.held_out} held out, sequence length {t.seq_len}"
            f"{' (padded to it)' if t.pad else ''}, batch {t.batch_size} × {t.grad_accum} accumulation steps"
            for t in (r.config.treatment.training for r in treated))))
        rows.append(("Treatments", _join(
            f"{m.name}: LoRA r {m.r}, α {_g(m.alpha)}, targets {', '.join(m.targets)}, dropout {_g(m.dropout)}, "
            f"lr {_g(m.lr)}" for m in (r.config.treatment.mechanism for r in treated))))
        rows.append(("Dose", _join(_dose_text(r) for r in treated)))
        stress = []
        for r in treated:
            s = r.config.treatment.stress
            if s.relapse is not None:
                stress.append(f"relapse: magnitude-prune {_g(100 * s.relapse.fraction)} % of the remaining weights")
            if s.chronic is not None:
                c = s.chronic
                stress.append(f"chronic: {c.cycles} cycles to cumulative magnitude sparsity cycle × {_g(c.step)}, "
                              f"{c.maintenance_epochs} maintenance epochs each, scored on {', '.join(c.tasks)}")
        rows.append(("Stress", _join(stress, empty="none")))
    return rows
