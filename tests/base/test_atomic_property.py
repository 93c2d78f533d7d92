"""Property: no call of the atomic helpers (without ``overwrite``) removes or alters a file it did not create.

A seeded randomized loop (hypothesis is not a dependency): random trees of user files, folders and symlinks,
interleaved with random helper calls on random targets (new, the user's, prunelab's own, nested, kind
mismatches) whose bodies sometimes fail, and with user edits of prunelab's outputs. After every call each
file the user wrote must still hold its content (an empty one may have become a complete file output: the
rule replaces empty targets, which hold nothing to lose) and no temporary sibling may be left behind.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from prunelab import atomic
from prunelab.atomic import atomic_dir, atomic_file, check_output_target, claim_work_dir, write_json
from prunelab.errors import PrunelabError


class Boom(Exception):
    pass


def _random_rel(rng: random.Random, existing: list[Path], root: Path) -> Path:
    """A target: an existing entry, something inside one, or a fresh path at a random depth."""
    r = rng.random()
    if existing and r < 0.45:
        return rng.choice(existing)
    if existing and r < 0.7:
        base = rng.choice(existing)
        return base / f"n{rng.randrange(4)}"
    depth = rng.randrange(1, 4)
    return root.joinpath(*[f"d{rng.randrange(3)}" for _ in range(depth)])


def _entries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if atomic.MANIFEST not in p.name]


def _check(root: Path, user_files: dict[Path, bytes], user_links: set[Path]) -> None:
    for p, content in list(user_files.items()):
        assert p.is_file() and not p.is_symlink(), f"user file {p} was removed"
        if not content and p.read_bytes():
            # the one allowed case: an empty file (nothing to lose, e.g. from mktemp) replaced by a complete
            # file output; from now on it is prunelab's
            del user_files[p]
            continue
        assert p.read_bytes() == content, f"user file {p} was altered"
    for p in user_links:
        assert p.is_symlink(), f"user symlink {p} was removed"
    left = [p for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert left == [], f"temporary siblings left: {left}"


@pytest.mark.parametrize("seed", range(10))
def test_helpers_never_remove_what_they_did_not_create(tmp_path, seed):
    rng = random.Random(seed)
    root = tmp_path / "root"
    root.mkdir()
    user_files: dict[Path, bytes] = {}
    user_links: set[Path] = set()
    calls = refused = replaced = 0

    def user_write(p: Path) -> None:
        if p.is_symlink() or (p.exists() and not p.is_file()):
            return
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            return
        data = rng.randbytes(rng.randrange(0, 40))
        p.write_bytes(data)
        user_files[p] = data

    for step in range(120):
        existing = _entries(root)
        action = rng.random()
        if action < 0.3:  # the user does something
            kind = rng.random()
            target = _random_rel(rng, existing, root)
            if kind < 0.6:
                user_write(target if not target.is_dir() else target / f"u{rng.randrange(3)}.txt")
            elif kind < 0.8 and target.is_file():  # edit a file (maybe one prunelab wrote): it becomes the user's
                user_write(target)
            elif kind < 0.9 and not target.exists() and target.parent.is_dir():
                dest = rng.choice(existing) if existing else root
                target.symlink_to(dest)
                user_links.add(target)
            else:
                try:
                    target.mkdir(parents=True, exist_ok=True)
                except (FileExistsError, NotADirectoryError):
                    pass
            continue
        target = _random_rel(rng, existing, root)
        fail = rng.random() < 0.25
        op = rng.choice(["dir", "file", "json", "check", "work", "nested"])
        calls += 1
        existed = target.exists()
        try:
            if op in ("dir", "nested"):
                with atomic_dir(target) as tmp:
                    for i in range(rng.randrange(0, 3)):
                        (tmp / f"f{i}").write_bytes(rng.randbytes(8))
                    if op == "nested":
                        with atomic_dir(tmp / "inner") as t2:
                            (t2 / "w").write_bytes(b"w")
                        write_json(tmp / "inner" / "r.json", {"step": step})
                    if fail:
                        raise Boom()
            elif op == "file":
                with atomic_file(target) as tmp:
                    tmp.write_bytes(rng.randbytes(5))
                    if fail:
                        raise Boom()
            elif op == "json":
                write_json(target, {"step": step})
            elif op == "check":
                check_output_target(target, rng.choice(["dir", "file", "work-dir"]))
            else:
                claim_work_dir(target)
            replaced += existed and op != "check" and not fail
        except PrunelabError:
            refused += 1
        except Boom:
            pass
        _check(root, user_files, user_links)
    # the loop must exercise both outcomes, or it proves nothing
    assert 0 < refused < calls and replaced > 0, (calls, refused, replaced)
    assert user_files
