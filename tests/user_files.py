"""A user's own folder and a view of it: what prunelab must never remove or alter."""

from __future__ import annotations

from pathlib import Path


def user_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    (path / "sub" / "a.txt").write_text("also mine")
    return path


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its content (the user's view of a folder)."""
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}
