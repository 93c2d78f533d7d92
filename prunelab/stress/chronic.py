"""Chronic stress: repeated magnitude pruning, each followed by a maintenance LoRA tune (the recovery-isodose
study's longitudinal protocol, its Table 4).

Cycle 0 evaluates the treated model. For ``c = 1..cycles``:

1. prune every decoder linear layer by L1 magnitude to cumulative sparsity ``s_c = c · step`` **of the
   original weight count** (:func:`prunelab.stress.magnitude.magnitude_prune` with ``sparsity=s_c``);
2. run a maintenance tune with the *same* LoRA mechanism (default 3 epochs, the study used 2–5) on the
   held-out Dolly items (``dolly_split(500, samples, seed).held_out``: disjoint from the 500 recovery items
   drawn with the same seed), merged into the weights;
3. re-apply the cycle's mask (``W ← W ⊙ mask``) so the merged LoRA update cannot revive pruned weights;
4. evaluate.

The study's longitudinal decline is ``acc(cycle 0) − acc(last cycle)``
(:func:`prunelab.scores.longitudinal_decline`). ``tune_fn`` / ``eval_fn`` can be injected (tests,
custom maintenance); by default they call :func:`prunelab.recover.recover` and :func:`prunelab.evaluate.evaluate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.scores import STUDY_COMPOSITE, longitudinal_decline
from prunelab.stress.common import EvalFn, TuneFn, default_eval_fn, default_tune_fn, merge_adapter
from prunelab.stress.magnitude import apply_masks, cumulative_schedule, magnitude_prune, measure_sparsity, summarize
from prunelab.table import Table

__all__ = ["ChronicReport", "CycleResult", "EvalFn", "TuneFn", "chronic", "DEFAULT_TASKS"]

#: the study's composite parts: chronic stress tracks the two accuracies the composite is made of
DEFAULT_TASKS = STUDY_COMPOSITE


@dataclass
class CycleResult:
    """One row of the chronic table. Sparsities are fractions (0–1) measured on the model after the
    maintenance tune and mask re-application; ``loss`` is the maintenance tune's final training loss."""

    cycle: int
    target_sparsity: float
    sparsity: float
    min_layer_sparsity: float
    max_layer_sparsity: float
    loss: float | None
    scores: dict[str, float]
    seconds: float


@dataclass
class ChronicReport:
    """Per-cycle accuracy/sparsity/loss table of :func:`chronic`; ``decline[m] = score(cycle 0) − score(last)``."""

    mechanism: str
    cycles: int
    step: float
    maintenance_epochs: float
    samples: int
    seq_len: int
    tasks: list[str]
    limit: int | None
    seed: int
    primary: str
    rows: list[CycleResult] = field(default_factory=list)
    decline: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    model = None  # plain attribute (no annotation): the final model, excluded from dataclass fields / JSON

    # ----- rendering ---------------------------------------------------------------------------------
    def metric_names(self) -> list[str]:
        names: list[str] = []
        for r in self.rows:
            for k in r.scores:
                if k not in names:
                    names.append(k)
        return names

    def title(self) -> str:
        return (f"Chronic stress: {self.mechanism}, {self.cycles} cycles × {self.step:.1%} "
                f"(maintenance {self.maintenance_epochs:g} epochs on {self.samples} held-out Dolly items, "
                f"seq_len {self.seq_len}, eval limit {self.limit if self.limit is not None else 'all'})")

    def formatted_table(self) -> Table:
        """One row per cycle as printed: sparsities in percent with 3 decimals, scores with 2, "–" if absent."""
        metrics = self.metric_names()
        columns = ["cycle", "target sparsity %", "sparsity %", "layer min %", "layer max %", "maint. loss", *metrics]
        rows = [[
            str(r.cycle), f"{100 * r.target_sparsity:.3f}", f"{100 * r.sparsity:.3f}",
            f"{100 * r.min_layer_sparsity:.3f}", f"{100 * r.max_layer_sparsity:.3f}",
            "–" if r.loss is None or math.isnan(r.loss) else f"{r.loss:.4f}",
            *[f"{r.scores[m]:.2f}" if m in r.scores else "–" for m in metrics],
        ] for r in self.rows]
        # every column is a number (the cycle too): all right-aligned
        return Table(None, "chronic", self.title(), columns, rows, label_columns=0)

    def raw_table(self) -> Table:
        """The same rows unrounded (sparsities as fractions, the cycle's wall seconds), for CSV."""
        metrics = self.metric_names()
        columns = ["cycle", "target_sparsity", "sparsity", "min_layer_sparsity", "max_layer_sparsity", "loss",
                   *metrics, "seconds"]
        rows = [[r.cycle, r.target_sparsity, r.sparsity, r.min_layer_sparsity, r.max_layer_sparsity,
                 "" if r.loss is None else r.loss, *[r.scores.get(m, "") for m in metrics], r.seconds]
                for r in self.rows]
        return Table(None, "chronic", self.title(), columns, rows, label_columns=0)

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Header and formatted rows of :meth:`formatted_table` (the CLI prints them as a rich table)."""
        table = self.formatted_table()
        return table.columns, table.rows

    def to_markdown(self) -> str:
        md = f"# {self.title()}\n\n" + self.formatted_table().pipe_table()
        if self.decline:
            md += ("\nLongitudinal decline (cycle 0 − last cycle): "
                   + ", ".join(f"{k} {v:+.2f}" for k, v in self.decline.items()) + "\n")
        return md

    def to_csv(self) -> str:
        """Raw (unrounded) values, one row per cycle."""
        return self.raw_table().csv()

    def plot(self, path: str | Path) -> Path:
        """Accuracy per cycle (one line per metric) with the achieved sparsity on a second axis, as PNG."""
        from prunelab.atomic import atomic_file
        from prunelab.plotting import agg_figure

        fig = agg_figure(figsize=(7, 4.2), dpi=120)  # no pyplot: no global backend switch, safe in threads
        ax = fig.add_subplot(1, 1, 1)
        xs = [r.cycle for r in self.rows]
        for m in self.metric_names():
            ys = [r.scores.get(m, float("nan")) for r in self.rows]
            ax.plot(xs, ys, marker="o", label=m, linewidth=2 if m == self.primary else 1.2)
        ax.set_xlabel("cycle")
        ax.set_ylabel("score (%)")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax2 = ax.twinx()
        ax2.plot(xs, [100 * r.sparsity for r in self.rows], color="grey", linestyle="--", label="sparsity")
        ax2.set_ylabel("sparsity of decoder linears (%)", color="grey")
        lines, labels = ax.get_legend_handles_labels()
        l2, lab2 = ax2.get_legend_handles_labels()
        ax.legend(lines + l2, labels + lab2, loc="best", fontsize=8)
        ax.set_title(f"Chronic stress: {self.mechanism} ({self.step:.0%} per cycle)")
        fig.tight_layout()
        path = Path(path)
        with atomic_file(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
        return path

    def write(self, out_dir: str | Path) -> Path:
        """``out_dir/chronic.{md,csv,json,png}``, all or nothing (one atomic directory rename)."""
        from prunelab.atomic import atomic_dir, write_json, write_text

        with atomic_dir(out_dir) as tmp:
            write_text(tmp / "chronic.md", self.to_markdown())
            write_text(tmp / "chronic.csv", self.to_csv())
            write_json(tmp / "chronic.json", self)
            self.plot(tmp / "chronic.png")
        return Path(out_dir)


# ----------------------------------------------------------------------------------------------------------
def maintenance_records(samples: int = 100, seed: int = 0, n_train: int = 500) -> list[Any]:
    """The first ``samples`` held-out Dolly items, disjoint from the ``n_train`` recovery items (same seed)."""
    from prunelab.data import dolly_split

    return dolly_split(n_train=n_train, n_held_out=samples, seed=seed).held_out


def chronic(
    model: nn.Module,
    tokenizer: Any,
    mechanism: Any,
    cycles: int = 8,
    step: float = 0.1,
    maintenance_epochs: float = 3,
    *,
    records: Sequence[Any] | None = None,
    samples: int = 100,
    recovery_samples: int = 500,
    seq_len: int = 512,
    tasks: Sequence[str] = DEFAULT_TASKS,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    eval_fn: EvalFn | None = None,
    tune_fn: TuneFn | None = None,
    progress: bool = True,
) -> ChronicReport:
    """Run ``cycles`` prune → maintain → re-mask → evaluate rounds (module docstring); returns the table.

    Every input is checked before any work: ``cycles ≥ 1``, ``step ∈ (0, 1)``, ``cycles · step < 1``,
    ``maintenance_epochs > 0``, a known ``mechanism`` whose targets exist in ``model``, known ``tasks``
    (when ``eval_fn`` is not given), ``samples ≥ 1``. Without ``records``, the maintenance set is the
    ``samples`` Dolly items that follow the ``recovery_samples`` training items in the seeded order
    (:func:`maintenance_records`), so it is disjoint from what the recovery saw. The model is modified in place (a PEFT model is merged
    first); the final model is ``report.model``. ``primary`` (for the curve) is the first task's score.
    """
    from prunelab.recover.mechanisms import get_mechanism, lora_target_linears

    schedule = cumulative_schedule(cycles, step)
    if not (isinstance(maintenance_epochs, (int, float)) and maintenance_epochs > 0):
        raise PrunelabError(f"maintenance epochs must be positive, got {maintenance_epochs!r}")
    if seq_len <= 0:
        raise PrunelabError(f"seq_len must be positive, got {seq_len}")
    if limit is not None and limit <= 0:
        raise PrunelabError(f"eval limit must be a positive number of items, got {limit}")
    mech = get_mechanism(mechanism)
    model, _ = merge_adapter(model)
    lora_target_linears(model, mech)  # clear error if a target projection does not exist in this model
    if eval_fn is None:
        from prunelab.evaluate import resolve_tasks

        tasks = resolve_tasks(list(tasks))
        eval_fn = default_eval_fn(tasks, limit, seed, batch_size)
    tasks = list(tasks)
    if records is None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0:
            raise PrunelabError(f"maintenance samples must be a positive integer, got {samples!r}")
        records = maintenance_records(samples, seed, n_train=recovery_samples)
    records = list(records)
    if not records:
        raise PrunelabError("no maintenance records given")
    if tune_fn is None:
        tune_fn = default_tune_fn(seq_len, seed, progress=progress)

    report = ChronicReport(
        mechanism=mech.name, cycles=cycles, step=step, maintenance_epochs=maintenance_epochs, samples=len(records),
        seq_len=seq_len, tasks=tasks, limit=limit, seed=seed, primary="",
    )
    start = time.perf_counter()
    with _Progress(progress, cycles) as bar:
        t0 = time.perf_counter()
        bar.phase(0, "evaluate")
        layers = measure_sparsity(model)
        s = summarize(layers)
        scores = dict(eval_fn(model, tokenizer))
        report.rows.append(CycleResult(0, 0.0, s.overall, s.min_layer, s.max_layer, None, scores,
                                       time.perf_counter() - t0))
        for c, target in enumerate(schedule, start=1):
            t0 = time.perf_counter()
            bar.phase(c, f"prune to {target:.0%}")
            masks = magnitude_prune(model, sparsity=target).masks
            bar.phase(c, "maintenance tune")
            model, loss = tune_fn(model, tokenizer, mech, records, maintenance_epochs)
            model, _ = merge_adapter(model)  # a custom tune_fn may hand back a PEFT model
            apply_masks(model, masks)
            s = summarize(measure_sparsity(model))
            bar.phase(c, "evaluate")
            scores = dict(eval_fn(model, tokenizer))
            report.rows.append(CycleResult(c, target, s.overall, s.min_layer, s.max_layer,
                                           None if loss is None else float(loss), scores, time.perf_counter() - t0))
            bar.done(c)
    metrics = report.metric_names()
    report.primary = next((t for t in tasks if t in metrics), metrics[0] if metrics else "")
    report.decline = {
        m: longitudinal_decline([r.scores[m] for r in report.rows])
        for m in metrics if all(m in r.scores for r in report.rows)
    }
    report.seconds = time.perf_counter() - start
    report.model = model
    return report


class _Progress:
    """A rich progress bar over cycles (stderr, transient), or nothing."""

    def __init__(self, enabled: bool, cycles: int) -> None:
        self.enabled, self.cycles = enabled, cycles
        self._p = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("chronic {task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._p.__enter__()
            self._task = self._p.add_task("cycle 0", total=self.cycles)
        return self

    def phase(self, cycle: int, what: str) -> None:
        if self._p is not None:
            self._p.update(self._task, description=f"cycle {cycle}/{self.cycles}: {what}")

    def done(self, cycle: int) -> None:
        if self._p is not None:
            self._p.update(self._task, completed=cycle)

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
