"""Reading user YAML files (experiment specs, mechanism definitions) with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse the YAML file at ``path``; ``what`` names it in errors ("experiment", "mechanisms")."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PrunelabError(f"{what} file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PrunelabError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
