"""Which folders may hold the offline data: ``--data-dir`` > ``$PRUNELAB_DATA`` > ``../shared/data`` beside the checkout.

Ground floor on purpose: :mod:`prunelab.atomic` refuses to replace a data folder, so it must know the data roots
without importing the data layer above it. Finding a dataset's files in these roots (and the errors when they are
missing) is :mod:`prunelab.data.paths`'s job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_override: Path | None = None


def set_data_dir(path: str | Path | None) -> None:
    """Set the data root for this process (the CLI's ``--data-dir``); ``None`` clears it."""
    global _override
    _override = Path(path).expanduser() if path else None


@dataclass(frozen=True)
class ExplicitLocation:
    """A data folder the user named, and how (``"--data-dir"`` or ``"PRUNELAB_DATA"``)."""

    root: Path
    origin: str


def explicit_location() -> ExplicitLocation | None:
    """The folder the user named (``--data-dir`` wins over ``$PRUNELAB_DATA``), or None."""
    if _override is not None:
        return ExplicitLocation(_override, "--data-dir")
    if env := os.environ.get("PRUNELAB_DATA"):
        return ExplicitLocation(Path(env).expanduser(), "PRUNELAB_DATA")
    return None


def candidate_roots() -> list[Path]:
    """Data roots in the order they are tried: only the named folder if there is one, else the defaults."""
    explicit = explicit_location()
    if explicit is not None:
        return [explicit.root]
    checkout = Path(__file__).resolve().parents[1]
    roots = [checkout.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
             Path.cwd() / "shared" / "data"]
    return list(dict.fromkeys(roots))
