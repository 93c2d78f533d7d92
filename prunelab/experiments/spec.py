"""The YAML experiment spec, validated with pydantic v2, and its expansion into typed runs.

An experiment is ``models × pruning × mechanisms × seeds`` treated runs plus one untreated baseline per
``model × pruning × seed``. Each run is a :class:`~prunelab.runs.config.RunConfig` built from the same pydantic
models the spec is validated with (defined in :mod:`prunelab.runs.config`, the run contract); its identity is the
SHA-256 of its config in canonical JSON (sorted keys, no whitespace), so the same run requested by two
experiments, or by the same experiment after a crash, is recognised and not repeated. A mechanism in the spec (a
built-in name, inline values, or ``base:`` plus overrides) resolves to one
:class:`prunelab.recover.mechanisms.Mechanism`.

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

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator

from prunelab.errors import PrunelabError
from prunelab.recover.mechanisms import Mechanism
# The run contract's models are the spec's building blocks; re-exported so a spec reader finds them here too.
from prunelab.runs.config import (CalibrationSpec, ChronicSpec, DepthPruning, Dose, EvalSpec, ModelSpec,
                                  NoPruning, PruningSpec, RelapseSpec, RunConfig, StressSpec, TrainingSpec,
                                  Treatment, WidthPruning, _Strict, canonical_json, config_hash, no_repeats,
                                  prune_key)

_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")

__all__ = ["CalibrationSpec", "ChronicSpec", "DepthPruning", "EvalSpec", "ExperimentSpec", "IsodoseSpec",
           "MechanismSpec", "ModelSpec", "NoPruning", "PartSpec", "PruningSpec", "RankSweep", "RelapseSpec", "ResourcesSpec",
           "Run", "StressSpec", "TrainingSpec", "WidthPruning", "builtin_mechanisms", "canonical_json",
           "config_hash", "expand", "load_spec", "parse_spec", "prune_key", "resolve_mechanism"]


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



class ResourcesSpec(_Strict):
    """Resources one run requests when dispatched to Ray (``--ray``); ``num_cpus``/``num_gpus`` (Ray's own
    spellings) are accepted too. ``retries``: how often Ray re-executes a run whose worker process died
    (Ray's ``max_retries``; a run that raises is recorded as failed, never retried)."""

    gpus: float = Field(0.0, ge=0, validation_alias=AliasChoices("gpus", "num_gpus"))
    cpus: float = Field(1.0, gt=0, validation_alias=AliasChoices("cpus", "num_cpus"))
    retries: int = Field(1, ge=0)


class PartSpec(_Strict):
    """One part of an experiment that is not a full cross product: the top level's settings with some of them
    replaced (``pruning``, ``mechanisms``, ``rank_sweep``, ``isodose``, ``seeds``, ``stress``, ``training``). An experiment
    with ``parts`` is the union of its parts' runs (a run two parts share is run once), e.g. the three mechanisms
    with chronic stress on one pruning, a rank sweep beside them, and one recipe transferred to other prunings.
    A key a part does not give is inherited; ``rank_sweep: null`` drops an inherited sweep."""

    name: str = Field(min_length=1)
    pruning: list[PruningSpec] | None = None
    mechanisms: list[MechanismSpec] | None = None
    rank_sweep: RankSweep | None = None
    isodose: IsodoseSpec | None = None
    seeds: list[int] | None = None
    stress: StressSpec | None = None
    training: TrainingSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _single_pruning(cls, v: Any) -> Any:
        return _pruning_list(v)


def _pruning_list(v: Any) -> Any:
    # ``pruning: {kind: width, ...}`` or ``pruning: none`` is a list of one; a bare string names the kind
    if isinstance(v, dict) and isinstance(v.get("pruning"), (dict, str)):
        v = dict(v)
        p = v["pruning"]
        v["pruning"] = [{"kind": p} if isinstance(p, str) else p]
    elif isinstance(v, dict) and isinstance(v.get("pruning"), list):
        v = dict(v)
        v["pruning"] = [{"kind": p} if isinstance(p, str) else p for p in v["pruning"]]
    return v


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
    parts: list[PartSpec] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _single_pruning(cls, v: Any) -> Any:
        return _pruning_list(v)

    @field_validator("parts")
    @classmethod
    def _part_names_unique(cls, v: list[PartSpec]) -> list[PartSpec]:
        return no_repeats([p.name for p in v], "part names") and v

    def variants(self) -> list["ExperimentSpec"]:
        """The experiment as plain cross products: itself when it has no ``parts``, else one spec per part
        (the top level with the part's keys replacing its own), each validated as a whole experiment."""
        if not self.parts:
            return [self]
        top = self.model_dump(exclude={"parts"})
        out = []
        for i, part in enumerate(self.parts):
            merged = {**top, **part.model_dump(include=part.model_fields_set - {"name"})}
            if "rank_sweep" in part.model_fields_set and "mechanisms" not in part.model_fields_set:
                # the top level's mechanisms already hold its own sweep arms: a part with its own sweep re-derives them
                merged["mechanisms"] = [m for m in top["mechanisms"] if not m["sweep"]]
            try:
                out.append(ExperimentSpec.model_validate(merged))
            except ValidationError as exc:
                # a whole-experiment error ("(top level)") is the part's own
                msg = _format_error(exc, f"parts.{i} ({part.name})").replace(": (top level):", ":", 1)
                raise PrunelabError(msg) from None
        return out

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, v: list[int]) -> list[int]:
        return no_repeats(v, "seeds")

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
    """Validate a parsed YAML/JSON mapping; a bad spec raises one :class:`PrunelabError` naming the field path
    (a part that is invalid once merged with the top level too, before any work)."""
    if not isinstance(data, dict):
        raise PrunelabError(f"{source}: the experiment must be a mapping (name:, models:, ...), got {type(data).__name__}")
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        raise PrunelabError(_format_error(exc, source)) from None
    try:
        spec.variants()
    except PrunelabError as exc:
        raise PrunelabError(f"{source}: {exc}") from None
    return spec


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate an experiment YAML file."""
    from prunelab.yaml_files import read_yaml

    return parse_spec(read_yaml(path, "experiment"), str(path))


# ---------------------------------------------------------------------------------------- mechanisms
def builtin_mechanisms() -> dict[str, Mechanism]:
    """The registry's mechanisms (:data:`prunelab.recover.MECHANISMS`) by name."""
    from prunelab.recover import MECHANISMS

    return {name: MECHANISMS.get(name) for name in MECHANISMS.names()}


_FIELDS = ("r", "alpha", "targets", "dropout", "lr")


def resolve_mechanism(m: MechanismSpec, builtins: Mapping[str, Mechanism], where: str) -> Mechanism:
    """The :class:`Mechanism` a spec entry names: built-in by name, inline, or ``base`` + overrides.
    Errors name ``where``."""
    base_name = m.base or (m.name if m.name in builtins else None)
    if m.base is not None and m.base not in builtins:
        raise PrunelabError(f"{where}.base: unknown mechanism '{m.base}'; known: {', '.join(builtins)}")
    values: dict[str, Any] = {}
    if base_name:
        base = builtins[base_name]
        values = {f: getattr(base, f) for f in _FIELDS}
    for f in _FIELDS:
        v = getattr(m, f)
        if v is not None:
            values[f] = v
    missing = [f for f in _FIELDS if f not in values]
    if missing:
        raise PrunelabError(
            f"{where}: '{m.name}' is not a built-in mechanism ({', '.join(builtins)}); "
            f"an inline mechanism needs {', '.join(missing)}")
    try:
        # the types a run config stores (alpha 128 → 128.0): the config hash is taken over them
        return Mechanism(name=m.name, r=int(values["r"]), alpha=float(values["alpha"]),
                         targets=tuple(values["targets"]), dropout=float(values["dropout"]), lr=float(values["lr"]))
    except PrunelabError as exc:
        raise PrunelabError(f"{where}: {exc}") from None


# ------------------------------------------------------------------------------------------ expansion
@dataclass(frozen=True)
class Run:
    """One unit of work: its typed ``config`` (everything that determines its result), the config's ``hash``
    (its identity in the store), a display ``label`` and its ``index`` in the experiment's expansion order."""

    config: RunConfig
    hash: str
    label: str
    index: int
    #: identity of the pruned model the run starts from (model × pruning × seed): runs sharing it share one
    #: pruning, and it names the run's pruned-checkpoint cache folder
    prune_key: str

    @property
    def kind(self) -> str:
        return self.config.kind


def _run(config: RunConfig, label: str, index: int) -> Run:
    return Run(config, config.hash, label, index, config.prune_key)


def expand(spec: ExperimentSpec, builtins: Mapping[str, Mechanism] | None = None) -> list[Run]:
    """``models × pruning × seeds`` baselines plus ``models × pruning × mechanisms × seeds`` treated runs; with
    ``parts``, the union of each part's runs, each run once (by hash, in its first part's position).

    Order groups runs sharing a pruned model (model, pruning, seed) so one invocation prunes each once.
    """
    if builtins is None:
        builtins = builtin_mechanisms()
    variants = spec.variants()
    if len(variants) == 1:
        return _expand_one(variants[0], builtins)
    seen: dict[str, Run] = {}
    for variant in variants:
        for run in _expand_one(variant, builtins):
            seen.setdefault(run.hash, run)
    # keep the runs of one pruned model together (parts may name the same pruning), in first-seen order
    first = {}
    for run in seen.values():
        first.setdefault(run.prune_key, len(first))
    ordered = sorted(seen.values(), key=lambda r: first[r.prune_key])  # stable: part order within a pruned model
    return [replace(r, index=i) for i, r in enumerate(ordered)]


def _expand_one(spec: ExperimentSpec, builtins: Mapping[str, Mechanism]) -> list[Run]:
    mechanisms = [(resolve_mechanism(m, builtins, f"mechanisms.{i}"), m.sweep) for i, m in enumerate(spec.mechanisms)]
    iso = spec.isodose
    if iso.reference is not None:
        ref_name = iso.reference_mechanism
        by_name = {m.name: m for m, _ in mechanisms}
        if ref_name in by_name:
            reference = by_name[ref_name]
        elif ref_name in builtins:
            reference = replace(builtins[ref_name], description="")
        else:
            raise PrunelabError(
                f"isodose.reference: unknown mechanism '{ref_name}'; known: {', '.join([*builtins, *by_name])}")
        dose = Dose(reference=reference, reference_epochs=iso.reference_epochs, formula=iso.formula)
    else:
        dose = Dose(epochs=iso.epochs)
    runs: list[Run] = []
    for model in spec.models:
        for pruning in spec.pruning:
            for seed in spec.seeds:
                baseline = RunConfig(model=model, pruning=pruning, seed=seed, eval=spec.eval)
                runs.append(_run(baseline, f"{model.name} · {pruning.name} · untreated · seed {seed}", len(runs)))
                for mechanism, sweep in mechanisms:
                    treatment = Treatment(mechanism=mechanism, dose=dose, training=spec.training,
                                          stress=spec.stress, sweep=sweep)
                    treated = replace(baseline, treatment=treatment)
                    runs.append(_run(treated, f"{model.name} · {pruning.name} · {mechanism.name} · seed {seed}",
                                     len(runs)))
    return runs
