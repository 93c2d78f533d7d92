"""The YAML experiment spec (DESIGN §9), validated with pydantic v2, and its expansion into runs.

An experiment is ``models × pruning × mechanisms × seeds`` treated runs plus one untreated baseline per
``model × pruning × seed``. Every run is a plain JSON-able config; its identity is the SHA-256 of that
config in canonical JSON (sorted keys, no whitespace), so the same run requested by two experiments, or by
the same experiment after a crash, is recognised and not repeated.

Minimal example::

    name: quickstart
    note: "CPU-scaled: 24 samples x 64 tokens (study: 500 x 512)"
    models: [smollm2-135m]
    pruning: [{kind: width, criterion: maw, ratio: 0.4}]
    mechanisms: [ketamine, ssri, neurosteroid]
    isodose: {reference: "ketamine:1"}
    training: {samples: 24, seq_len: 64}
    seeds: [0]
    stress: {relapse: {fraction: 0.3}}
    eval: {tasks: [arc_easy_gen, lambada_gen], limits: {arc_easy_gen: 40, lambada_gen: 40}}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from pydantic import model_serializer
from prunelab.scores import STUDY_COMPOSITE
from prunelab.errors import PrunelabError

_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


class _Strict(BaseModel):
    # extra="forbid": a misspelt key ("ratoi") is an error naming it, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=False)


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
    """Structured width pruning (``prune_width`` / ``adapt_prune``, DESIGN §3)."""

    kind: Literal["width"] = "width"
    name: str | None = None
    criterion: str = "maw"
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

    @model_serializer(mode="wrap")
    def _omit_default_repair(self, handler):
        # left out when unset, so specs written before repair existed keep their config hashes (and stored results)
        data = handler(self)
        if isinstance(data, dict):
            if data.get("repair") == "none":
                data.pop("repair", None)
            if data.get("ridge") is None:
                data.pop("ridge", None)
        return data

    @model_validator(mode="after")
    def _one_size(self) -> "WidthPruning":
        if (self.ratio is None) == (self.expansion_ratio is None):
            raise ValueError("give exactly one of ratio or expansion_ratio")
        if self.adaptive and self.ratio is None:
            raise ValueError("adaptive width pruning needs ratio")
        if self.name is None:
            size = f"{round(self.ratio * 100)}" if self.ratio is not None else f"x{self.expansion_ratio:g}"
            self.name = f"{'adaptive' if self.adaptive else 'width'}-{self.criterion}-{size}"
            if self.repair != "none":
                self.name += f"+{self.repair}"
        return self


class DepthPruning(_Strict):
    """Depth pruning: remove ``k`` blocks chosen by ``search`` under ``objective`` (DESIGN §4)."""

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


# ----------------------------------------------------------------------------------------- mechanisms
class MechanismSpec(_Strict):
    """A LoRA mechanism: a built-in name, or inline values (optionally ``base:`` a built-in and override)."""

    name: str
    base: str | None = None
    r: int | None = Field(None, ge=1)
    alpha: float | None = Field(None, gt=0)
    targets: list[Literal["q", "k", "v", "o", "gate", "up", "down"]] | None = None
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    lr: float | None = Field(None, gt=0.0)
    sweep: bool = False  # marks rank-sweep arms (Table 5); set by ``rank_sweep``

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"mechanism name {v!r} may only hold letters, digits and _.+-")
        return v


class RankSweep(_Strict):
    """Table 5: the ``base`` mechanism at each rank ``r`` with ``alpha = alpha_per_r · r``, epochs isodose."""

    base: str = "ketamine"
    ranks: list[int] = Field(default_factory=lambda: [16, 32, 64, 96, 128], min_length=1)
    alpha_per_r: float = Field(2.0, gt=0)

    @field_validator("ranks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(r < 1 for r in v) or len(set(v)) != len(v):
            raise ValueError("ranks must be distinct positive integers")
        return v


class IsodoseSpec(_Strict):
    """Equal-FLOPs budget fixed by ``reference`` (``mechanism:epochs``), or the same fixed ``epochs`` for all.

    ``formula`` = the cost the budget equalises (:mod:`prunelab.recover.isodose`): ``study`` = the study's
    ``6·P·L·N·E`` (trainable params only; the reproduction), ``honest`` = ``T·(2F + 6P)`` (frozen base included).
    """

    reference: str | None = None
    epochs: int | None = Field(None, ge=1)
    formula: Literal["study", "honest"] = "study"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"reference": v}
        if isinstance(v, dict) and "mechanism" in v and "reference" not in v:
            v = dict(v)
            mech = v.pop("mechanism")
            ep = v.pop("reference_epochs", v.pop("epochs", None))
            v["reference"] = f"{mech}:{ep}"
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> "IsodoseSpec":
        if (self.reference is None) == (self.epochs is None):
            raise ValueError("give exactly one of reference ('mechanism:epochs') or epochs")
        if self.epochs is not None and self.formula != "study":
            raise ValueError("formula applies to a reference budget; fixed epochs are not solved by any formula")
        if self.reference is not None:
            m = re.fullmatch(r"\s*([A-Za-z0-9_.+-]+)\s*:\s*(\d+)\s*", self.reference)
            if not m or int(m.group(2)) < 1:
                raise ValueError(f"reference must look like 'ketamine:3' (epochs ≥ 1), got {self.reference!r}")
            self.reference = f"{m.group(1)}:{int(m.group(2))}"
        return self

    @property
    def reference_mechanism(self) -> str | None:
        return self.reference.split(":")[0] if self.reference else None

    @property
    def reference_epochs(self) -> int | None:
        return int(self.reference.split(":")[1]) if self.reference else None


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
    #: Instruct model may need the log-likelihood pair (``[arc_easy, lambada]``). Every part must be evaluated.
    composite: list[str] = Field(default_factory=lambda: list(STUDY_COMPOSITE), min_length=2)

    @field_validator("tasks")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("tasks must not repeat")
        return v

    @model_validator(mode="after")
    def _composite_parts_evaluated(self) -> "EvalSpec":
        # an explicit composite whose parts are not all evaluated would silently never be computed
        if "composite" in self.model_fields_set:
            missing = [t for t in self.composite if t not in self.tasks]
            if missing:
                raise ValueError(f"eval.composite part(s) {', '.join(missing)} must also be in eval.tasks")
        return self

    @model_validator(mode="after")
    def _limits_known(self) -> "EvalSpec":
        for task, n in self.limits.items():
            if n < 1:
                raise ValueError(f"limits.{task} must be ≥ 1")
        return self

    def limit_for(self, task: str) -> int | None:
        return self.limits.get(task, self.limit)


class ResourcesSpec(_Strict):
    """Resources one run requests when dispatched to Ray (``--ray``); ``num_cpus``/``num_gpus`` (Ray's own
    spellings) are accepted too. ``retries``: how often Ray re-executes a run whose worker process died
    (Ray's ``max_retries``; a run that raises is recorded as failed, never retried)."""

    gpus: float = Field(0.0, ge=0, validation_alias=AliasChoices("gpus", "num_gpus"))
    cpus: float = Field(1.0, gt=0, validation_alias=AliasChoices("cpus", "num_cpus"))
    retries: int = Field(1, ge=0)


class ExperimentSpec(_Strict):
    """One experiment file."""

    name: str = Field(min_length=1)
    note: str = ""
    models: list[ModelSpec] = Field(min_length=1)
    pruning: list[PruningSpec] = Field(default_factory=lambda: [NoPruning()], min_length=1)
    mechanisms: list[MechanismSpec] = Field(default_factory=list)
    rank_sweep: RankSweep | None = None
    isodose: IsodoseSpec = Field(default_factory=lambda: IsodoseSpec(epochs=1))
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    stress: StressSpec = Field(default_factory=StressSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @model_validator(mode="before")
    @classmethod
    def _single_pruning(cls, v: Any) -> Any:
        if isinstance(v, dict) and isinstance(v.get("pruning"), (dict, str)):
            v = dict(v)
            p = v["pruning"]
            v["pruning"] = [{"kind": p} if isinstance(p, str) else p]
        elif isinstance(v, dict) and isinstance(v.get("pruning"), list):
            v = dict(v)
            v["pruning"] = [{"kind": p} if isinstance(p, str) else p for p in v["pruning"]]
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must not repeat")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentSpec":
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        pnames = [p.name for p in self.pruning]
        if len(set(pnames)) != len(pnames):
            raise ValueError(f"pruning names must be unique, got {pnames}")
        if self.rank_sweep is not None:
            have = {m.name for m in self.mechanisms}
            for r in self.rank_sweep.ranks:
                name = f"{self.rank_sweep.base}-r{r}"
                if name not in have:
                    self.mechanisms.append(MechanismSpec(
                        name=name, base=self.rank_sweep.base, r=r, alpha=self.rank_sweep.alpha_per_r * r, sweep=True))
        mnames = [m.name for m in self.mechanisms]
        if len(set(mnames)) != len(mnames):
            raise ValueError(f"mechanism names must be unique, got {mnames}")
        return self


# ------------------------------------------------------------------------------------------ loading
def _format_error(exc: ValidationError, source: str) -> str:
    errs = exc.errors()
    first = errs[0]
    # drop pydantic's union-branch tags ("width", "function-after[...]") so the path reads like the YAML
    parts = [str(p) for p in first["loc"] if not (isinstance(p, str) and ("[" in p or p in {"none", "width", "depth"}))]
    path = ".".join(parts) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{source}: {path}: {msg}{more}"


def parse_spec(data: Any, source: str = "spec") -> ExperimentSpec:
    """Validate a parsed YAML/JSON mapping; a bad spec raises one :class:`PrunelabError` naming the field path."""
    if not isinstance(data, dict):
        raise PrunelabError(f"{source}: the experiment must be a mapping (name:, models:, ...), got {type(data).__name__}")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        raise PrunelabError(_format_error(exc, source)) from None


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate an experiment YAML file."""
    from prunelab.yaml_files import read_yaml

    return parse_spec(read_yaml(path, "experiment"), str(path))


# ---------------------------------------------------------------------------------------- mechanisms
def builtin_mechanisms() -> dict[str, dict[str, Any]]:
    """The registry's mechanisms (``prunelab.recover.MECHANISMS``) as plain dicts."""
    from prunelab.recover import MECHANISMS

    out = {}
    for name in MECHANISMS.names():
        d = MECHANISMS.get(name).to_dict()
        out[name] = {k: d[k] for k in ("r", "alpha", "targets", "dropout", "lr")}
    return out


_FIELDS = ("r", "alpha", "targets", "dropout", "lr")


def resolve_mechanism(m: MechanismSpec, builtins: dict[str, dict[str, Any]], where: str) -> dict[str, Any]:
    """Full mechanism values: built-in by name, inline, or ``base`` + overrides. Errors name ``where``."""
    base_name = m.base or (m.name if m.name in builtins else None)
    if m.base is not None and m.base not in builtins:
        raise PrunelabError(f"{where}.base: unknown mechanism '{m.base}'; known: {', '.join(builtins)}")
    values: dict[str, Any] = dict(builtins[base_name]) if base_name else {}
    for f in _FIELDS:
        v = getattr(m, f)
        if v is not None:
            values[f] = list(v) if f == "targets" else v
    missing = [f for f in _FIELDS if f not in values]
    if missing:
        raise PrunelabError(
            f"{where}: '{m.name}' is not a built-in mechanism ({', '.join(builtins)}); "
            f"an inline mechanism needs {', '.join(missing)}")
    values["alpha"] = float(values["alpha"])
    values["lr"] = float(values["lr"])
    values["dropout"] = float(values["dropout"])
    values["r"] = int(values["r"])
    values["targets"] = list(values["targets"])
    return {"name": m.name, **values, "sweep": m.sweep}


# ------------------------------------------------------------------------------------------ expansion
@dataclass
class Run:
    """One unit of work. ``config`` is everything that determines its result; ``hash`` identifies it."""

    config: dict[str, Any]
    hash: str
    label: str
    index: int
    group: tuple[str, ...] = field(default=())  # (model, pruning, seed): runs sharing a pruned model

    @property
    def kind(self) -> str:
        return self.config["kind"]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 (first 20 hex digits) of the canonical JSON of a run config: stable across processes."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:20]


def prune_key(model: dict[str, Any], pruning: dict[str, Any], seed: int) -> str:
    """Identity of a pruned model (model × pruning × seed): runs with the same key share one pruning."""
    return config_hash({"model": model, "pruning": pruning, "seed": seed if pruning["kind"] != "none" else 0})


def expand(spec: ExperimentSpec, builtins: dict[str, dict[str, Any]] | None = None) -> list[Run]:
    """``models × pruning × seeds`` baselines plus ``models × pruning × mechanisms × seeds`` treated runs.

    Order groups runs sharing a pruned model (model, pruning, seed) so one invocation prunes each once.
    """
    if builtins is None:
        builtins = builtin_mechanisms()
    mechs = [resolve_mechanism(m, builtins, f"mechanisms.{i}") for i, m in enumerate(spec.mechanisms)]
    iso = spec.isodose
    reference = None
    if iso.reference is not None:
        ref_name = iso.reference_mechanism
        by_name = {m["name"]: m for m in mechs}
        if ref_name in by_name:
            ref = dict(by_name[ref_name])
        elif ref_name in builtins:
            ref = {"name": ref_name, **builtins[ref_name], "sweep": False}
        else:
            raise PrunelabError(
                f"isodose.reference: unknown mechanism '{ref_name}'; known: {', '.join([*builtins, *by_name])}")
        ref.pop("sweep", None)
        reference = {"mechanism": ref, "epochs": iso.reference_epochs}
    common = {
        "training": spec.training.model_dump(),
        "eval": spec.eval.model_dump(),
    }
    stress = spec.stress.model_dump()
    runs: list[Run] = []
    for model in spec.models:
        mdict = model.model_dump(exclude={"description"})
        for pruning in spec.pruning:
            pdict = pruning.model_dump()
            for seed in spec.seeds:
                pk = prune_key(mdict, pdict, seed)
                base_cfg = {"kind": "baseline", "model": mdict, "pruning": pdict, "seed": seed,
                            "eval": common["eval"]}
                runs.append(Run(base_cfg, config_hash(base_cfg),
                                f"{model.name} · {pruning.name} · untreated · seed {seed}", len(runs),
                                (model.name, pruning.name, str(seed), pk)))
                for mech in mechs:
                    dose = ({"reference": reference, "formula": iso.formula} if reference is not None
                            else {"epochs": iso.epochs})
                    cfg = {"kind": "treated", "model": mdict, "pruning": pdict, "seed": seed,
                           "mechanism": mech, "dose": dose, **common, "stress": stress}
                    runs.append(Run(cfg, config_hash(cfg),
                                    f"{model.name} · {pruning.name} · {mech['name']} · seed {seed}", len(runs),
                                    (model.name, pruning.name, str(seed), pk)))
    return runs
