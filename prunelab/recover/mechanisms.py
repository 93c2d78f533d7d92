"""Recovery mechanisms: LoRA recipes named after antidepressant classes (study: recovery-isodose, §Methods).

| mechanism    | r  | α   | targets             | dropout | lr   |
|--------------|----|-----|---------------------|---------|------|
| ketamine     | 64 | 128 | q,k,v,o,gate,up,down| 0.05    | 5e-5 |
| ssri         | 8  | 16  | q,v                 | 0.10    | 1e-6 |
| neurosteroid | 32 | 64  | q,v,gate,up         | 0.50    | 5e-5 |

Targets are *logical* projection names; :meth:`Mechanism.target_modules` maps them to PEFT ``target_modules``
through the family adapter (Phi3: ``q``/``k``/``v`` → the fused ``qkv_proj``, ``gate``/``up`` → ``gate_up_proj``;
LoRA on the fused matrix is the only option that architecture offers, so ``q,v`` on Phi3 adapts all of qkv).

Users add their own mechanisms in YAML (see :func:`load_mechanisms_yaml`)::

    mechanisms:
      - {name: microdose, r: 4, alpha: 8, targets: [q, v], dropout: 0.1, lr: 1e-5}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.registry import Registry

#: Logical projection names understood by every family adapter.
LOGICAL_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class Mechanism:
    """One LoRA recipe: rank ``r``, scaling ``alpha`` (PEFT scales the update by α/r), logical ``targets``,
    LoRA ``dropout`` and AdamW learning rate ``lr``."""

    name: str
    r: int
    alpha: float
    targets: tuple[str, ...]
    dropout: float
    lr: float
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        validate_mechanism(self)

    def with_(self, **changes) -> Mechanism:
        """A copy with some fields changed (e.g. ``ketamine.with_(r=32, alpha=64)`` for a rank sweep)."""
        return replace(self, **changes)

    def target_modules(self, model_or_adapter) -> list[str]:
        """PEFT ``target_modules`` (leaf names) for this model's family, deduplicated for fused families."""
        from prunelab.models.adapters import FamilyAdapter, adapter_for

        adapter = model_or_adapter if isinstance(model_or_adapter, FamilyAdapter) else adapter_for(model_or_adapter)
        return adapter.lora_target_modules(list(self.targets))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d


def validate_mechanism(m: Mechanism) -> None:
    """One clear error for each impossible field (r ≤ 0, dropout outside [0, 1), unknown targets, ...)."""
    if not m.name or not isinstance(m.name, str):
        raise PrunelabError("a mechanism needs a non-empty name")
    if not isinstance(m.r, int) or isinstance(m.r, bool) or m.r <= 0:
        raise PrunelabError(f"mechanism '{m.name}': LoRA rank r must be a positive integer, got {m.r!r}")
    if not (isinstance(m.alpha, (int, float)) and m.alpha > 0):
        raise PrunelabError(f"mechanism '{m.name}': alpha must be positive, got {m.alpha!r}")
    if not (isinstance(m.dropout, (int, float)) and 0 <= m.dropout < 1):
        raise PrunelabError(f"mechanism '{m.name}': dropout must be in [0, 1), got {m.dropout!r}")
    if not (isinstance(m.lr, (int, float)) and m.lr > 0):
        raise PrunelabError(f"mechanism '{m.name}': learning rate must be positive, got {m.lr!r}")
    if not m.targets:
        raise PrunelabError(f"mechanism '{m.name}': no target projections given; use some of {', '.join(LOGICAL_TARGETS)}")
    bad = [t for t in m.targets if t not in LOGICAL_TARGETS]
    if bad:
        raise PrunelabError(
            f"mechanism '{m.name}': unknown target projection(s) {', '.join(map(str, bad))}; "
            f"known: {', '.join(LOGICAL_TARGETS)}"
        )
    if len(set(m.targets)) != len(m.targets):
        raise PrunelabError(f"mechanism '{m.name}': duplicate targets {list(m.targets)}")


MECHANISMS: Registry[Mechanism] = Registry("recovery mechanism")
MECHANISMS.register(
    "ketamine",
    Mechanism("ketamine", r=64, alpha=128, targets=LOGICAL_TARGETS, dropout=0.05, lr=5e-5,
              description="structural regrowth: high rank on every projection"),
)
MECHANISMS.register(
    "ssri",
    Mechanism("ssri", r=8, alpha=16, targets=("q", "v"), dropout=0.10, lr=1e-6,
              description="gradual refinement: low rank on query/value"),
)
MECHANISMS.register(
    "neurosteroid",
    Mechanism("neurosteroid", r=32, alpha=64, targets=("q", "v", "gate", "up"), dropout=0.50, lr=5e-5,
              description="stabilisation: mid rank, heavy dropout"),
)


def get_mechanism(mechanism: str | Mechanism) -> Mechanism:
    """A registered mechanism by name (clear error listing the known ones), or the mechanism itself."""
    if isinstance(mechanism, Mechanism):
        return mechanism
    return MECHANISMS.get(str(mechanism))


def parse_mechanism_dict(d: dict, where: str = "YAML") -> Mechanism:
    """A :class:`Mechanism` from a mapping; clear errors for missing/unknown keys and bad values."""
    if not isinstance(d, dict):
        raise PrunelabError(f"{where}: each mechanism must be a mapping, got {type(d).__name__}")
    required = ("name", "r", "alpha", "targets", "dropout", "lr")
    missing = [k for k in required if k not in d]
    if missing:
        raise PrunelabError(f"{where}: mechanism {d.get('name', '?')!r} is missing {', '.join(missing)}")
    unknown = set(d) - set(required) - {"description"}
    if unknown:
        raise PrunelabError(f"{where}: mechanism {d['name']!r} has unknown key(s) {', '.join(sorted(unknown))}")
    targets = d["targets"]
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    try:
        return Mechanism(
            name=str(d["name"]), r=d["r"], alpha=float(d["alpha"]), targets=tuple(targets),
            dropout=float(d["dropout"]), lr=float(d["lr"]), description=str(d.get("description", "")),
        )
    except (TypeError, ValueError) as exc:
        raise PrunelabError(f"{where}: mechanism {d['name']!r}: {exc}") from exc


def load_mechanisms_yaml(path: str | Path, register: bool = True) -> list[Mechanism]:
    """Read user-defined mechanisms from YAML (a list, or ``{mechanisms: [...]}``); register them unless told not to.

    Re-registering a name that already exists with *identical* fields is a no-op; a different definition under
    an existing name is an error (a mechanism's name must identify its recipe in results).
    """
    from prunelab.yaml_files import read_yaml

    p = Path(path)
    data = read_yaml(p, "mechanisms")
    if isinstance(data, dict) and "mechanisms" in data:
        data = data["mechanisms"]
    if not isinstance(data, list) or not data:
        raise PrunelabError(f"{p}: expected a non-empty list of mechanisms (or a 'mechanisms:' key holding one)")
    mechs = [parse_mechanism_dict(d, where=str(p)) for d in data]
    if register:
        for m in mechs:
            if m.name in MECHANISMS:
                if MECHANISMS.get(m.name) != m:
                    raise PrunelabError(f"{p}: mechanism '{m.name}' already exists with a different recipe; rename it")
                continue
            MECHANISMS.register(m.name, m)
    return mechs


def lora_target_linears(model: nn.Module, mechanism: Mechanism) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules a mechanism adapts, by full module path, read from the model itself.

    Raises if a target maps to a module that the model does not have (e.g. a family without a gate).
    """
    from prunelab.models.adapters import adapter_for

    adapter = adapter_for(model)
    found: dict[str, nn.Linear] = {}
    layers = adapter.layers(model)
    prefix = _layers_prefix(model, layers)
    for i, layer in enumerate(layers):
        for logical in mechanism.targets:
            path = adapter.proj_names[logical]
            try:
                mod = layer.get_submodule(path)
            except AttributeError:
                raise PrunelabError(
                    f"mechanism '{mechanism.name}': target '{logical}' ({path}) does not exist in layer {i} "
                    f"of this {adapter.family} model"
                ) from None
            if not isinstance(mod, nn.Linear):
                raise PrunelabError(f"mechanism '{mechanism.name}': {path} in layer {i} is not a linear layer")
            found.setdefault(f"{prefix}{i}.{path}", mod)
    return found


def _layers_prefix(model: nn.Module, layers: nn.Module) -> str:
    for name, mod in model.named_modules():
        if mod is layers:
            return f"{name}."
    return "model.layers."


def count_trainable_lora_params(model: nn.Module, mechanism: str | Mechanism) -> int:
    """Exact LoRA trainable parameters from the model's shapes: ``Σ r·(in_features + out_features)``.

    One ``A[r, in]`` and one ``B[out, r]`` per adapted linear (PEFT adds no bias); fused Phi3 modules are
    counted once. Reads every layer's own shapes, so per-layer (non-uniform) pruned models are exact.
    """
    m = get_mechanism(mechanism)
    return sum(m.r * (lin.in_features + lin.out_features) for lin in lora_target_linears(model, m).values())
