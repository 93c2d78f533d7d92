"""Where the offline data lives: ``--data-dir`` > ``$PRUNELAB_DATA`` > ``../shared/data`` next to the checkout.

The data is never copied into the repository; users with internet and no local copy fall back to the HF
``datasets`` names in :mod:`prunelab.data.loaders`.
"""

from __future__ import annotations

import os
from pathlib import Path

from prunelab.errors import PrunelabError

_override: Path | None = None


def set_data_dir(path: str | Path | None) -> None:
    """Set the data root for this process (the CLI's ``--data-dir``)."""
    global _override
    _override = Path(path).expanduser() if path else None


def candidate_roots() -> list[Path]:
    """Data roots in the order they are tried."""
    roots: list[Path] = []
    if _override is not None:
        roots.append(_override)
    if env := os.environ.get("PRUNELAB_DATA"):
        roots.append(Path(env).expanduser())
    repo = Path(__file__).resolve().parents[2]
    roots += [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    seen, unique = set(), []
    for r in roots:
        if r not in seen:
            seen.add(r)
            unique.append(r)
    return unique


def data_root() -> Path | None:
    """The first existing data root, or None."""
    for root in candidate_roots():
        if root.is_dir():
            return root
    return None


def find_file(dataset: str, filename: str) -> Path | None:
    """``<root>/<dataset>/<filename>`` in the first root that has it, else None."""
    for root in candidate_roots():
        path = root / dataset / filename
        if path.is_file():
            return path
    return None


def require_file(dataset: str, filename: str) -> Path:
    """Like :func:`find_file` but raises a clear error naming every place looked."""
    path = find_file(dataset, filename)
    if path is None:
        looked = ", ".join(str(r / dataset / filename) for r in candidate_roots())
        raise PrunelabError(
            f"data file {dataset}/{filename} not found; looked in: {looked} "
            "(set PRUNELAB_DATA or --data-dir to the folder holding the datasets)"
        )
    return path
