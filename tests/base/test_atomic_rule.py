"""prunelab.atomic: the one output rule (create missing, replace prunelab's own, refuse anything else)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import prunelab
from tests.user_files import tree, user_folder
from prunelab import atomic
from prunelab.atomic import MANIFEST, atomic_dir, atomic_file, check_output_target, claim_work_dir, write_json
from prunelab.errors import PrunelabError
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True)
def _no_leftover_approvals():
    yield
    atomic._approved.clear()
    atomic._approved_trees.clear()


def siblings(path: Path) -> list[str]:
    """Hidden temporary siblings of ``path`` (``.NAME.tmp-*`` / ``.NAME.old-*``)."""
    return [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]


def write_dir(target: Path, files: dict[str, str], **kw) -> None:
    with atomic_dir(target, **kw) as tmp:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)


def test_missing_target_is_created_with_a_manifest(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    write_dir(out, {"x.txt": "1", "s/y.txt": "2"})
    assert tree(out) == {"x.txt": "1", "s/y.txt": "2", MANIFEST: (out / MANIFEST).read_text()}
    m = json.loads((out / MANIFEST).read_text())
    assert set(m["files"]) == {"x.txt", "s/y.txt"} and m["dirs"] == ["s"]
    assert siblings(out) == []


def test_own_output_is_replaced_and_old_content_kept_until_the_new_is_complete(tmp_path):
    out = tmp_path / "out"
    write_dir(out, {"old.txt": "old"})
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (out / "old.txt").read_text() == "old"  # still the old one while the new is being written
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "new.txt"]
    assert siblings(out) == []


def test_user_folder_is_refused_before_the_body_runs(tmp_path):
    out = user_folder(tmp_path / "mine")
    before = tree(out)
    ran = []
    with pytest.raises(PrunelabError, match=r"refusing to replace .*mine: it holds files prunelab did not write "
                                            r"\(e\.g\. .*notes\.txt\); pass --overwrite"):
        with atomic_dir(out):
            ran.append(1)
    assert ran == [] and tree(out) == before and siblings(out) == []


@pytest.mark.parametrize("change", ["add", "edit", "replace", "subdir"])
def test_a_user_change_inside_an_own_output_makes_it_foreign(tmp_path, change):
    out = tmp_path / "out"
    write_dir(out, {"w.bin": "0123456789"})
    if change == "add":
        (out / "notes.txt").write_text("mine")
    elif change == "edit":  # same size, new content and mtime
        os.utime(out / "w.bin", ns=(0, 0))
    elif change == "replace":
        (out / "w.bin").unlink()
        (out / "w.bin").write_text("other bytes, other size")
    else:
        (out / "empty-user-dir").mkdir()
    before = tree(out)
    with pytest.raises(PrunelabError, match="prunelab did not write"):
        check_output_target(out)
    with pytest.raises(PrunelabError, match="prunelab did not write"):
        write_dir(out, {"x": "y"})
    assert tree(out) == before


def test_kind_mismatch_is_refused_both_ways(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PrunelabError, match="it is a file and a folder is wanted here; pass --overwrite"):
        check_output_target(f, "dir")
    d = tmp_path / "folder"
    write_dir(d, {"a": "b"})  # even prunelab's own folder is not replaced by a file
    with pytest.raises(PrunelabError, match="it is a folder and a file is wanted here; pass --overwrite"):
        write_json(d, {})
    assert f.read_text() == "x" and (d / "a").read_text() == "b"


def test_empty_targets_are_replaceable(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f.json").touch()
    write_dir(tmp_path / "d", {"a": "1"})
    write_json(tmp_path / "f.json", {"a": 1})
    assert (tmp_path / "d" / "a").read_text() == "1" and json.loads((tmp_path / "f.json").read_text()) == {"a": 1}


def test_overwrite_replaces_a_user_folder_atomically(tmp_path):
    out = user_folder(tmp_path / "mine")
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "m").write_text("model")
        assert (out / "notes.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "m"] and siblings(out) == []


def test_preflight_overwrite_approves_the_path_for_the_library(tmp_path):
    out = user_folder(tmp_path / "mine")
    other = user_folder(tmp_path / "other")
    check_output_target(out, "dir", overwrite=True)
    write_dir(out, {"m": "1"})  # no overwrite argument: the CLI's --overwrite reaches library code this way
    with pytest.raises(PrunelabError, match="prunelab did not write"):
        write_dir(other, {"m": "1"})  # only the approved path
    assert (out / "m").exists() and (other / "notes.txt").exists()


def test_single_files_replaceable_only_if_prunelab_wrote_them(tmp_path):
    ours, theirs = tmp_path / "r.json", tmp_path / "user.json"
    write_json(ours, {"v": 1})
    write_json(ours, {"v": 2})
    assert json.loads(ours.read_text()) == {"v": 2}
    theirs.write_text('{"mine": true}')
    with pytest.raises(PrunelabError, match=r"user\.json: it is a file prunelab did not write"):
        write_json(theirs, {"v": 1})
    assert theirs.read_text() == '{"mine": true}'
    ours.write_text('{"edited": "by the user"}')
    with pytest.raises(PrunelabError, match="did not write"):
        write_json(ours, {"v": 3})
    assert json.loads(ours.read_text()) == {"edited": "by the user"}
    write_json(theirs, {"v": 1}, overwrite=True)
    assert json.loads(theirs.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


def test_file_written_into_an_own_folder_keeps_it_replaceable(tmp_path):
    out = tmp_path / "model"
    write_dir(out, {"w": "1"})
    with atomic_file(out / "profile.png") as tmp:
        tmp.write_bytes(b"png")
    check_output_target(out)  # profile.png was recorded in the folder's manifest
    write_dir(out, {"w": "2"})


def test_symlinks_and_special_files(tmp_path):
    real = user_folder(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(PrunelabError, match="symbolic link"):
        check_output_target(link)
    with pytest.raises(PrunelabError, match="not a regular file or folder"):
        check_output_target("/dev/null", "file", overwrite=True)
    assert tree(real) == {"notes.txt": "mine", "sub/a.txt": "also mine"}


@pytest.mark.parametrize("kind", ["dir", "file", "work-dir"])
def test_protected_paths_refused_even_with_overwrite(tmp_path, monkeypatch, kind):
    work = tmp_path / "proj" / "cwd"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    data = tmp_path / "store" / "data"
    data.mkdir(parents=True)
    monkeypatch.setenv("PRUNELAB_DATA", str(data))
    checkout = Path(prunelab.__file__).resolve().parents[1]
    cases = {".": "the current folder", str(work): "the current folder", "..": "a folder containing the current folder",
             "~": "your home folder", str(tmp_path / "home"): "your home folder", "/": "the filesystem root",
             str(checkout): "the prunelab checkout", str(checkout.parent): "containing the prunelab checkout",
             str(data): "a data folder", str(data.parent): "a folder containing a data folder"}
    # A folder that contains several protected folders may be refused for any of them (a checkout directly in
    # /tmp has pytest's fake home beside it), so a "containing" case accepts exactly the protected folders that
    # really lie under it -- never a reason that does not apply.
    inner = {str(work): "the current folder", str(tmp_path / "home"): "your home folder",
             str(checkout): "the prunelab checkout", str(data): "a data folder"}
    for path, what in cases.items():
        reasons = [re.escape(what)]
        if what.startswith(("a folder containing", "containing")):
            target = Path(os.path.expanduser(path)).resolve()
            reasons += [f"a folder containing {re.escape(name)}" for p, name in inner.items()
                        if target in Path(p).resolve().parents]
        with pytest.raises(PrunelabError, match=f"refusing to write to .*({'|'.join(reasons)}).*not even with "
                                                 f"--overwrite"):
            check_output_target(path, kind, overwrite=True)
        with pytest.raises(PrunelabError, match="not even with --overwrite"):
            with atomic_dir(path, overwrite=True):
                pass
    assert sorted(p.name for p in work.iterdir()) == []


def test_parent_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PrunelabError, match=r"cannot create .*f/sub/out: .*f is a file, not a folder"):
        check_output_target(tmp_path / "f" / "sub" / "out")


def test_failure_in_the_body_leaves_target_and_no_siblings(tmp_path):
    out = tmp_path / "out"
    write_dir(out, {"a": "old"})
    with pytest.raises(ZeroDivisionError):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("new")
            1 / 0
    with pytest.raises(ZeroDivisionError):
        with atomic_file(tmp_path / "r.json") as tmp:
            tmp.write_text("{")
            1 / 0
    assert (out / "a").read_text() == "old" and not (tmp_path / "r.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_target_appearing_during_the_work_is_not_clobbered(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(PrunelabError, match="prunelab did not write"):
        with atomic_dir(out) as tmp:
            (tmp / "m").write_text("model")
            user_folder(out)  # someone else created it meanwhile: re-checked right before the rename
    assert tree(out) == {"notes.txt": "mine", "sub/a.txt": "also mine"} and siblings(out) == []


def test_library_save_refuses_a_user_folder(tmp_path):
    out = user_folder(tmp_path / "mine")
    with pytest.raises(PrunelabError, match="refusing to replace"):
        prunelab.save(tiny_model("llama"), tiny_tokenizer(), out)
    assert tree(out) == {"notes.txt": "mine", "sub/a.txt": "also mine"}
    prunelab.save(tiny_model("llama"), tiny_tokenizer(), tmp_path / "m")
    prunelab.save(tiny_model("llama", seed=1), tiny_tokenizer(), tmp_path / "m", metadata={"again": True})
    assert json.loads((tmp_path / "m" / "prunelab.json").read_text()) == {"again": True}
    prunelab.save(tiny_model("llama"), tiny_tokenizer(), out, overwrite=True)
    assert not (out / "notes.txt").exists()
    assert prunelab.load(str(out)).model.config.num_hidden_layers == 4


def test_work_dir_is_reused_never_replaced(tmp_path):
    w = claim_work_dir(tmp_path / "w")
    (w / "pruned" / "h").mkdir(parents=True)
    claim_work_dir(w)  # its own: reused
    old = tmp_path / "old"
    (old / "pruned" / "abc").mkdir(parents=True)
    claim_work_dir(old)  # the layout of a work folder from before manifests
    mine = user_folder(tmp_path / "mine")
    with pytest.raises(PrunelabError, match=r"refusing to use .*mine as the work folder.*--overwrite"):
        claim_work_dir(mine)
    claim_work_dir(mine, overwrite=True)  # adopted, nothing deleted
    assert tree(mine) == {"notes.txt": "mine", "sub/a.txt": "also mine", MANIFEST: (mine / MANIFEST).read_text()}


def test_work_dir_being_claimed_by_another_process_is_not_foreign(tmp_path):
    """Two drivers on one store: the second may look while the first's manifest is still a temporary file in the
    folder (written, then renamed). That folder is being claimed by prunelab, not a user's: it is reused."""
    racing = tmp_path / "w"
    racing.mkdir()
    (racing / f"{MANIFEST}.tmp-abc123").write_text("{")
    assert claim_work_dir(racing) == racing
    other = tmp_path / "u"  # anything else beside the temporary manifest still makes it a user's folder
    other.mkdir()
    (other / f"{MANIFEST}.tmp-x").write_text("{")
    (other / "notes.txt").write_text("mine")
    with pytest.raises(PrunelabError, match="refusing to use"):
        claim_work_dir(other)
