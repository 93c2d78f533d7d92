"""The typed result of one run: what each stage measured, as frozen pydantic records.

A finished run is a :class:`RunResult`: its :class:`RunMetrics` (the pruned model, the evaluation, and for a
treated run the training, the acute relapse and the chronic cycles), its study-formula training FLOPs, its
timings, the package versions it ran with and its per-item outcomes. :class:`RunRecord` is a stored run: its
hash and :class:`~prunelab.runs.config.RunConfig`, its result, and the experiments it belongs to.

``RunMetrics.model_dump_json()`` is what the store writes (:data:`RESULT_VERSION`);
:meth:`RunMetrics.from_legacy` reads the untyped dicts written before (``result_version`` 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from prunelab.evaluate.registry import ItemOutcome
from prunelab.runs.config import RunConfig

#: Version of the metrics JSON a store row holds: 1 = the untyped dicts of before; 2 = :class:`RunMetrics`.
RESULT_VERSION = 2
LEGACY_RESULT_VERSION = 1

#: Phases of a run whose evaluation outcomes are stored: the evaluation of the run's model (treated or
#: baseline), the evaluation after acute relapse, and each chronic cycle's (``chronic_phase(k)``).
EVAL_PHASE = "eval"
RELAPSE_PHASE = "relapse"

#: ``{phase: {task: [ItemOutcome, ...]}}`` — one run's per-item outcomes as handed to the store.
RunOutcomes = dict[str, dict[str, list[ItemOutcome]]]
#: ``{phase: {task: {item_id: ItemOutcome}}}`` — one run's outcomes as read back.
RunOutcomesById = dict[str, dict[str, dict[str, ItemOutcome]]]


def chronic_phase(cycle: int) -> str:
    """The outcomes phase of chronic cycle ``cycle`` (0 = the treated model before any stress)."""
    return f"chronic:{int(cycle)}"


class _Record(BaseModel):
    # extra="ignore": rows written by older versions carry keys these records no longer hold (e.g. a custom
    # stage's own figures); they are dropped on read rather than making the store unreadable.
    model_config = ConfigDict(frozen=True, extra="ignore")


# ------------------------------------------------------------------------------------------ stages
class ModelStructure(_Record):
    """Size and shape of a model (:func:`prunelab.models.count_parameters`, :func:`~prunelab.models.layer_shapes`)."""

    params: int | None = None
    params_non_embedding: int | None = None
    flops_per_token: float | None = None
    num_layers: int | None = None
    #: MLP intermediate width and attention heads of each layer
    layer_widths: tuple[int, ...] = ()
    layer_heads: tuple[int, ...] = ()


class PruningInfo(ModelStructure):
    """The prepared (pruned) model: its structure, the original's, and what the pruning did."""

    original: ModelStructure | None = None
    #: the pruning kind (``none``, ``width``, ``depth``)
    pruning: str | None = None
    #: width pruning's own report (:func:`prunelab.prune.width.prune_width` / ``adapt_prune``) as JSON, with
    #: bulky per-neuron lists left out
    report: dict[str, Any] | None = None
    #: depth pruning: the removed block indices, the search objective's value and the search's wall time
    removed_layers: tuple[int, ...] = ()
    objective_value: float | None = None
    search_seconds: float | None = None


class EvalScores(_Record):
    """One evaluation: ``scores`` (percent, plus ``composite``), items per task ``n``, and the prompt
    ``protocol`` each generation task used (``raw`` / ``chat``)."""

    scores: dict[str, float] = {}
    n: dict[str, int] = {}
    protocol: dict[str, str] = {}


class RecoveryInfo(_Record):
    """The recovery stage's own figures (:class:`prunelab.recover.train.RecoveryResult`)."""

    steps: int | None = None
    tokens: int | None = None
    #: the real cost ``T·(2F + 6P)``, frozen base included (:func:`prunelab.recover.isodose.honest_flops`)
    honest_flops: float | None = None
    base_flops_per_token: float | None = None
    initial_loss: float | None = None
    final_loss: float | None = None
    seconds: float | None = None
    tokens_per_second: float | None = None


class TrainingInfo(_Record):
    """How a treated run was trained: the solved dose, the parameter count it was solved for, and the recovery.

    ``budget_flops`` and ``exact_epochs`` are None for fixed epochs; the budget is in the units of
    ``isodose_formula`` (study ``6·P·L·N·E``, honest ``T·(2F + 6P)``). ``flops`` is the study's cost
    ``6·P·L·N·E`` at the rounded epochs, whatever the formula.
    """

    epochs: int
    budget_flops: float | None = None
    exact_epochs: float | None = None
    isodose_formula: str | None = None
    trainable_params: int | None = None  # None only in rows of stores that never recorded it
    padded: bool = True
    flops: float | None = None
    recovery: RecoveryInfo = RecoveryInfo()


class RelapseResult(_Record):
    """Acute relapse (:func:`prunelab.stress.relapse`): the stress stage's report and the evaluation after it."""

    eval: EvalScores
    report: dict[str, Any] | None = None


class ChronicCycle(_Record):
    """One chronic-stress cycle (0 = the treated model before any stress)."""

    cycle: int
    scores: dict[str, float]
    sparsity: float | None = None
    loss: float | None = None


class ChronicResult(_Record):
    """Chronic stress (:func:`prunelab.stress.chronic`): cycles of pruning by ``step`` + maintenance tunes."""

    cycles: tuple[ChronicCycle, ...]
    step: float | None = None
    maintenance_epochs: int | None = None


class RunMetrics(_Record):
    """Everything one run measured (per-item outcomes are kept apart: :attr:`RunResult.outcomes`)."""

    model: PruningInfo = PruningInfo()
    eval: EvalScores = EvalScores()
    training: TrainingInfo | None = None
    relapse: RelapseResult | None = None
    chronic: ChronicResult | None = None

    def phases(self) -> dict[str, list[str]]:
        """The evaluation phases this run holds and the tasks scored in each (``composite`` is derived, never
        stored per item)."""

        def tasks(scores: dict[str, float]) -> list[str]:
            return [t for t in scores if t != "composite"]

        out = {EVAL_PHASE: tasks(self.eval.scores)}
        if self.relapse is not None:
            out[RELAPSE_PHASE] = tasks(self.relapse.eval.scores)
        for cycle in self.chronic.cycles if self.chronic is not None else ():
            out[chronic_phase(cycle.cycle)] = tasks(cycle.scores)
        return out

    @classmethod
    def from_legacy(cls, metrics: dict[str, Any]) -> "RunMetrics":
        """The untyped metrics dict of ``result_version`` 1: the recovery's figures flat in ``training``, the
        relapse report's keys flat beside its ``eval``, chronic cycles possibly without a ``cycle`` number."""
        training = None
        if metrics.get("training"):
            flat = metrics["training"]
            training = TrainingInfo.model_validate({**flat, "recovery": RecoveryInfo.model_validate(flat)})
        relapse = None
        if metrics.get("relapse"):
            rest = {k: v for k, v in metrics["relapse"].items() if k != "eval"}
            relapse = RelapseResult(eval=EvalScores.model_validate(metrics["relapse"].get("eval") or {}),
                                    report=rest.get("report", rest or None))
        chronic = None
        if metrics.get("chronic"):
            cycles = [{"cycle": i, **c} for i, c in enumerate(metrics["chronic"].get("cycles") or [])]
            chronic = ChronicResult.model_validate({**metrics["chronic"], "cycles": cycles})
        return cls(model=PruningInfo.model_validate(metrics.get("model") or {}),
                   eval=EvalScores.model_validate(metrics.get("eval") or {}),
                   training=training, relapse=relapse, chronic=chronic)


# ------------------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class RunResult:
    """One executed run: what it measured, what it cost and how long each stage took."""

    metrics: RunMetrics
    #: the study's training cost ``6·P·L·N·E`` (None for an untreated baseline)
    flops: float | None
    timings: dict[str, float]
    versions: dict[str, str]
    started_at: float
    finished_at: float
    #: per-item outcomes ``{phase: {task: [ItemOutcome]}}`` written with the run; :meth:`Store.runs` leaves
    #: this empty (read them with :meth:`Store.outcomes` / :meth:`Store.all_outcomes`)
    outcomes: RunOutcomes = field(default_factory=dict)


@dataclass(frozen=True)
class RunMeta:
    """What an experiment says about a run it holds: the model's description, the experiment's note and the
    order its models were listed in."""

    description: str = ""
    note: str = ""
    models_order: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "note": self.note, "models_order": list(self.models_order)}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "RunMeta":
        values = values or {}
        return cls(description=str(values.get("description") or ""), note=str(values.get("note") or ""),
                   models_order=tuple(values.get("models_order") or ()))


@dataclass(frozen=True)
class RunRecord:
    """A finished run as stored: identity (hash, config), result, host and experiment memberships."""

    hash: str
    config: RunConfig
    result: RunResult
    host: str | None = None
    experiments: tuple[str, ...] = ()
    position: int = 0
    meta: RunMeta = RunMeta()

    # the names a report groups by, read from the config (the store keeps them as columns for SQL too)
    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def model(self) -> str:
        return str(self.config.model.name)

    @property
    def pruning(self) -> str:
        return str(self.config.pruning.name)

    @property
    def mechanism(self) -> str | None:
        return None if self.config.treatment is None else self.config.treatment.mechanism.name

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def metrics(self) -> RunMetrics:
        return self.result.metrics

    @property
    def flops(self) -> float | None:
        return self.result.flops

    @property
    def outcomes(self) -> RunOutcomes:
        return self.result.outcomes

    @property
    def started_at(self) -> float:
        return self.result.started_at

    @property
    def finished_at(self) -> float:
        return self.result.finished_at
