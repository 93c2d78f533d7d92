"""The typed configuration of one run: what determines its result, and the identity (hash) derived from it.

A run's config is a :class:`RunConfig`: the model, the pruning, the seed and the evaluation, plus, for a treated
run, a :class:`Treatment` (the LoRA :class:`~prunelab.recover.mechanisms.Mechanism`, its :class:`Dose`, the
training data sizes and the stress protocol). The YAML experiment spec (:mod:`prunelab.experiments.spec`) is
built from the same pydantic models defined here, so a value validated in the spec is the value a stage reads.

Identity: :meth:`RunConfig.to_dict` gives the JSON-able form, exactly the mapping hashed since results were
first stored (so old stores keep resuming), and :func:`config_hash` is the SHA-256 of its canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_serializer, model_validator)

from prunelab.errors import PrunelabError
from prunelab.recover.mechanisms import Mechanism
from prunelab.scores import STUDY_COMPOSITE, composite_parts

#: validation context key: the mapping being validated is a config read back from a results store
STORED_CONFIG = "stored_config"


class _Strict(BaseModel):
    # extra="forbid": a misspelt key ("ratoi") is an error naming it, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=False)

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_keys_of_stored_configs(cls, value: Any, info: ValidationInfo) -> Any:
        # A config read back from a results store was valid when it was written; a key a later prunelab no
        # longer knows must not make that store unreadable, so (only then) unknown keys are dropped.
        if info.context and info.context.get(STORED_CONFIG) and isinstance(value, dict):
            return {k: v for k, v in value.items() if k in cls.model_fields}
        return value


# --------------------------------------------------------------------------------------------- models
class ModelSpec(_Strict):
    """A model: alias (``smollm2-135m``), local HF dir, ``.gguf`` file or hub id (e.g. a pre-pruned checkpoint)."""

    source: str = Field(min_length=1)
    name: str | None = None
    description: str = ""
    dtype: str = "auto"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"source": v}
        if isinstance(v, dict):
            v = dict(v)
            # accept the natural synonyms for where the model comes from
            for key in ("path", "hub_id", "alias", "id"):
                if key in v and "source" not in v:
                    v["source"] = v.pop(key)
        return v

    @model_validator(mode="after")
    def _default_name(self) -> "ModelSpec":
        if self.name is None:
            self.name = Path(self.source.rstrip("/")).name
        return self


# -------------------------------------------------------------------------------------------- pruning
class CalibrationSpec(_Strict):
    source: str = "wikitext2"
    samples: int = Field(32, ge=1)
    seq_len: int = Field(128, ge=8)


class NoPruning(_Strict):
    """Use the model as loaded (the untouched model, or a pre-pruned checkpoint given as the model)."""

    kind: Literal["none"] = "none"
    name: str = "none"


class WidthPruning(_Strict):
    """Structured width pruning (:func:`prunelab.prune.width.prune_width` / :func:`prunelab.prune.adaptive.adapt_prune`)."""

    kind: Literal["width"] = "width"
    name: str | None = None
    #: within-layer group criterion; unset: ``maw`` for uniform pruning, ``taylor`` (the paper's) for Adapt-Pruner
    criterion: str | None = None
    ratio: float | None = Field(None, gt=0.0, lt=1.0)
    expansion_ratio: float | None = Field(None, gt=0.0)
    heads_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    round_to: int = Field(1, ge=1)
    adaptive: bool = False
    amplitude: float = Field(0.02, ge=0.0)
    steps: int = Field(10, ge=1)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    #: repair without retraining (:mod:`prunelab.prune.repair`); ``ridge`` is its relative λ (None: the default)
    repair: Literal["none", "bias", "ls", "ls+bias"] = "none"
    ridge: float | None = Field(None, ge=0.0)
    #: what a re-fitted projection reproduces: the dense ``layer`` on the repaired input, or the dense ``model``'s
    #: stream; ``layer+attn``: ``layer``, and every drifted layer's ``o_proj`` re-fitted toward the dense stream
    repair_target: Literal["layer", "model", "layer+attn"] = "layer"
    #: token weighting of the repair's fits (:data:`prunelab.prune.repair.TOKEN_WEIGHTS`; default ``normalized``)
    token_weights: Literal["uniform", "normalized"] = "normalized"

    @model_serializer(mode="wrap")
    def _omit_default_repair(self, handler):
        # left out when unset, so specs written before repair existed keep their config hashes (and stored results).
        # token_weights is kept whenever a repair runs: repairs stored before it existed were fitted uniformly, so
        # a spec of theirs must not hash like today's default (it reruns rather than reusing a different fit)
        data = handler(self)
        if isinstance(data, dict):
            if data.get("repair") == "none":
                data.pop("repair", None)
                data.pop("token_weights", None)
            if data.get("ridge") is None:
                data.pop("ridge", None)
            if data.get("repair_target") == "layer":
                data.pop("repair_target", None)
        return data

    @model_validator(mode="after")
    def _one_size(self) -> "WidthPruning":
        if (self.ratio is None) == (self.expansion_ratio is None):
            raise ValueError("give exactly one of ratio or expansion_ratio")
        if self.adaptive and self.ratio is None:
            raise ValueError("adaptive width pruning needs ratio")
        if self.criterion is None:
            self.criterion = "taylor" if self.adaptive else "maw"
        if self.name is None:
            size = f"{round(self.ratio * 100)}" if self.ratio is not None else f"x{self.expansion_ratio:g}"
            self.name = f"{'adaptive' if self.adaptive else 'width'}-{self.criterion}-{size}"
            if self.repair != "none":
                self.name += f"+{self.repair}" + ("" if self.repair_target == "layer" else f"@{self.repair_target}")
                if self.token_weights != "normalized":
                    self.name += f"~{self.token_weights}"
        return self


class DepthPruning(_Strict):
    """Depth pruning: remove ``k`` blocks chosen by ``search`` under ``objective`` (:func:`prunelab.prune.depth.search_blocks`)."""

    kind: Literal["depth"] = "depth"
    name: str | None = None
    k: int = Field(ge=1)
    search: str = "greedy"
    objective: str = "perplexity"
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)

    @model_validator(mode="after")
    def _default_name(self) -> "DepthPruning":
        if self.name is None:
            self.name = f"depth-{self.search}-{self.objective}-k{self.k}"
        return self


PruningSpec = Annotated[Union[NoPruning, WidthPruning, DepthPruning], Field(discriminator="kind")]



# ------------------------------------------------------------------------------ training, stress, eval
class TrainingSpec(_Strict):
    """Recovery data sizes (Dolly): ``samples`` train records, ``held_out`` disjoint ones for maintenance."""

    samples: int = Field(500, ge=1)
    held_out: int = Field(100, ge=0)
    seq_len: int = Field(512, ge=8)
    pad: bool = True
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(4, ge=1)


class RelapseSpec(_Strict):
    fraction: float = Field(0.3, gt=0.0, lt=1.0)


class ChronicSpec(_Strict):
    cycles: int = Field(8, ge=1)
    step: float = Field(0.1, gt=0.0, lt=1.0)
    maintenance_epochs: int = Field(3, ge=1)
    tasks: list[str] = Field(default_factory=lambda: ["arc_easy_gen"], min_length=1)

    @model_validator(mode="after")
    def _fits(self) -> "ChronicSpec":
        if self.cycles * self.step >= 1.0:
            raise ValueError(f"cycles × step = {self.cycles * self.step:g} would prune every weight (need < 1)")
        return self


class StressSpec(_Strict):
    relapse: RelapseSpec | None = None
    chronic: ChronicSpec | None = None


class EvalSpec(_Strict):
    """Tasks (names from ``prunelab.evaluate``), a per-task item limit, and the item-sampling seed."""

    tasks: list[str] = Field(default_factory=lambda: ["arc_easy_gen", "lambada_gen"], min_length=1)
    limit: int | None = Field(None, ge=1)
    limits: dict[str, int] = Field(default_factory=dict)
    batch_size: int = Field(8, ge=1)
    # Items are sampled with this seed, not the training seed, so every run scores the same items (paired).
    seed: int = 0
    #: prompt protocol of the generation tasks (prunelab.evaluate.generative_tasks): raw, chat, or auto (chat
    #: when the model's tokenizer has a chat template). Part of every run's config, so it changes the hash.
    protocol: Literal["raw", "chat", "auto"] = "auto"
    #: the tasks whose mean is ``composite`` (prunelab.scores): the study's generation pair by default; a small
    #: Instruct model may need the log-likelihood pair (``[arc_easy, lambada]``). Every part must be evaluated,
    #: and other parts rule out the ``composite`` *task* in ``tasks`` (it always averages the study's pair).
    composite: list[str] = Field(default_factory=lambda: list(STUDY_COMPOSITE), min_length=2)

    @field_validator("tasks")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return no_repeats(v, "tasks")

    @model_validator(mode="after")
    def _composite_parts_evaluated(self, info: ValidationInfo) -> "EvalSpec":
        # an explicit composite whose parts are not all evaluated would silently never be computed; a stored
        # config always spells the composite out (the default too), so the check is for what a user wrote
        if "composite" in self.model_fields_set and not (info.context and info.context.get(STORED_CONFIG)):
            missing = [t for t in self.composite if t not in self.tasks]
            if missing:
                raise ValueError(f"eval.composite part(s) {', '.join(missing)} must also be in eval.tasks")
            if "composite" in self.tasks and sorted(self.composite) != sorted(STUDY_COMPOSITE):
                # the composite task would store mean(arc_easy_gen, lambada_gen) under "composite", and that
                # value, not the mean of these parts, is what every reader would then take for the composite
                raise ValueError(
                    f"eval.tasks lists the composite task, which always averages {' and '.join(STUDY_COMPOSITE)}, "
                    f"but eval.composite names {', '.join(self.composite)}: drop 'composite' from eval.tasks "
                    "(the composite of eval.composite is added to every evaluation)")
        return self

    @model_validator(mode="after")
    def _limits_known(self) -> "EvalSpec":
        for task, n in self.limits.items():
            if n < 1:
                raise ValueError(f"limits.{task} must be ≥ 1")
        return self

    def limit_for(self, task: str) -> int | None:
        return self.limits.get(task, self.limit)



# ------------------------------------------------------------------------------------------ one run
def no_repeats(values: list, what: str) -> list:
    """``values`` unchanged, or a validation error naming ``what`` when an entry repeats (a pydantic validator)."""
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must not repeat")
    return values


def mechanism_dict(mechanism: Mechanism) -> dict[str, Any]:
    """A mechanism's recipe as stored in a run config: ``{name, r, alpha, targets, dropout, lr}``.

    The types are pinned (``alpha`` a float even when written ``128``) because the config hash is taken over
    this JSON: ``128`` and ``128.0`` would be two different runs.
    """
    return {"name": mechanism.name, "r": int(mechanism.r), "alpha": float(mechanism.alpha),
            "targets": list(mechanism.targets), "dropout": float(mechanism.dropout), "lr": float(mechanism.lr)}


def mechanism_from_dict(values: dict[str, Any]) -> Mechanism:
    """The inverse of :func:`mechanism_dict` and :func:`_reference_dict` (extra keys such as ``sweep`` are
    ignored; the numbers keep the JSON types they were stored with)."""
    return Mechanism(name=str(values["name"]), r=values["r"], alpha=values["alpha"],
                     targets=tuple(values["targets"]), dropout=values["dropout"], lr=values["lr"])


def _reference_dict(mechanism: Mechanism) -> dict[str, Any]:
    # The isodose reference is stored with its numbers as given: a built-in reference that the experiment does
    # not also train has always been hashed with the registry's ``alpha: 128`` (an int), one it does train with
    # the resolved ``128.0``. Casting here would change the hash of every stored treated run.
    return {"name": mechanism.name, "r": mechanism.r, "alpha": mechanism.alpha, "targets": list(mechanism.targets),
            "dropout": mechanism.dropout, "lr": mechanism.lr}


@dataclass(frozen=True)
class Dose:
    """How long a treated run trains: a fixed number of ``epochs``, or the epochs that spend the isodose budget
    of ``reference`` trained for ``reference_epochs`` (solved by :func:`prunelab.recover.isodose.solve_isodose`
    under ``formula``)."""

    epochs: int | None = None
    reference: Mechanism | None = None
    reference_epochs: int | None = None
    #: ``study`` or ``honest``; None only in configs stored before the formula existed (they used ``study``)
    formula: str | None = None

    @property
    def is_isodose(self) -> bool:
        return self.reference is not None

    def to_dict(self) -> dict[str, Any]:
        if self.reference is None:
            return {"epochs": self.epochs}
        out: dict[str, Any] = {"reference": {"mechanism": _reference_dict(self.reference),
                                             "epochs": self.reference_epochs}}
        if self.formula is not None:
            out["formula"] = self.formula
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Dose":
        if "reference" not in values:
            return cls(epochs=int(values["epochs"]))
        ref = values["reference"]
        return cls(reference=mechanism_from_dict(ref["mechanism"]), reference_epochs=int(ref["epochs"]),
                   formula=values.get("formula"))


@dataclass(frozen=True)
class Treatment:
    """What a treated run adds to its baseline: LoRA recovery with ``mechanism`` for ``dose``, on the recovery
    data ``training``, then the ``stress`` protocol. ``sweep`` marks a rank-sweep arm (Table 5), which may share
    its name with a treatment of another experiment."""

    mechanism: Mechanism
    dose: Dose
    training: TrainingSpec
    stress: StressSpec
    sweep: bool = False


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's result. ``treatment`` is None for an untreated baseline."""

    model: ModelSpec
    pruning: NoPruning | WidthPruning | DepthPruning
    seed: int
    eval: EvalSpec
    treatment: Treatment | None = None

    @property
    def kind(self) -> Literal["baseline", "treated"]:
        return "baseline" if self.treatment is None else "treated"

    @property
    def composite_parts(self) -> tuple[str, ...]:
        """The tasks whose mean is this run's ``composite`` (:func:`prunelab.scores.composite_parts`)."""
        return composite_parts(self.eval)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able config, key for key the mapping hashed and stored since the first results store."""
        out: dict[str, Any] = {"kind": self.kind, "model": self.model.model_dump(exclude={"description"}),
                               "pruning": self.pruning.model_dump(), "seed": self.seed,
                               "eval": self.eval.model_dump()}
        if self.treatment is not None:
            out["mechanism"] = {**mechanism_dict(self.treatment.mechanism), "sweep": self.treatment.sweep}
            out["dose"] = self.treatment.dose.to_dict()
            out["training"] = self.treatment.training.model_dump()
            out["stress"] = self.treatment.stress.model_dump()
        return out

    @property
    def hash(self) -> str:
        return config_hash(self.to_dict())

    @property
    def prune_key(self) -> str:
        """Identity of the pruned model this run starts from (:func:`prune_key`)."""
        return prune_key(self.model.model_dump(exclude={"description"}), self.pruning.model_dump(), self.seed)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """A config as stored (:meth:`to_dict`). Fields added since a store was written take their defaults
        and keys since retired are dropped, so every stored run stays readable."""
        context = {STORED_CONFIG: True}
        try:
            model = ModelSpec.model_validate(values["model"], context=context)
            stored_pruning = dict(values["pruning"])
            if stored_pruning.get("kind") == "width" and stored_pruning.get("repair", "none") != "none":
                # a repair stored before token weighting existed was fitted with every token alike
                stored_pruning.setdefault("token_weights", "uniform")
            pruning = _PRUNING.validate_python(stored_pruning, context=context)
            stored_eval = dict(values.get("eval") or {})
            # a config stored before prompt protocols existed was evaluated with raw prompts (not today's default)
            stored_eval.setdefault("protocol", "raw")
            evaluation = EvalSpec.model_validate(stored_eval, context=context)
            treatment = None
            if values.get("kind") == "treated":
                mech = values["mechanism"]
                treatment = Treatment(
                    mechanism=mechanism_from_dict(mech), dose=Dose.from_dict(values["dose"]),
                    training=TrainingSpec.model_validate(values.get("training") or {}, context=context),
                    stress=StressSpec.model_validate(values.get("stress") or {}, context=context),
                    sweep=bool(mech.get("sweep", False)))
        except (KeyError, TypeError, ValidationError, PrunelabError) as exc:
            raise PrunelabError(f"stored run config cannot be read ({type(exc).__name__}: {exc})") from None
        return cls(model=model, pruning=pruning, seed=int(values["seed"]), eval=evaluation, treatment=treatment)


def _pruning_adapter():
    from pydantic import TypeAdapter

    return TypeAdapter(PruningSpec)


_PRUNING = _pruning_adapter()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 (first 20 hex digits) of the canonical JSON of a run config: stable across processes."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:20]


def prune_key(model: dict[str, Any], pruning: dict[str, Any], seed: int) -> str:
    """Identity of a pruned model (model × pruning × seed): runs with the same key share one pruning."""
    return config_hash({"model": model, "pruning": pruning, "seed": seed if pruning["kind"] != "none" else 0})
