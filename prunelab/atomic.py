"""Outputs that cannot destroy: one rule for every file and folder prunelab writes, implemented once here.

Every output is written to a temporary sibling and renamed into place, so a crash, a Ctrl-C, a SIGTERM or a
full disk never leaves a half-written model directory, JSON file or figure where the user expects a finished
one. On top of that, an existing target is only ever replaced when prunelab can show that it wrote it:

* a **missing** target (or an empty folder / empty file) is created;
* an existing target that prunelab wrote is replaced atomically (the old content stays until the new is
  complete). "prunelab wrote it" is recorded in a manifest, :data:`MANIFEST` (``.prunelab-output.json``), kept
  in the folder that holds the output: a folder output lists every file and sub-folder it contains, and a
  folder that received single-file outputs (``--json result.json``) lists those files. Each entry records the
  size and modification time (ns) prunelab left behind, so a file the user added, replaced or edited no
  longer matches and is never removed;
* anything else (a user's folder, a regular file where a folder is wanted or the reverse, a file prunelab
  did not write) is refused, before any work when the CLI calls :func:`check_output_target` at the start of a
  command, and again by :func:`atomic_dir` / :func:`atomic_file` at entry and right before the rename
  (defence in depth). ``overwrite=True`` (CLI ``--overwrite``) replaces such a target, still atomically;
* the filesystem root, the home folder, and any target that is or contains the current folder, the prunelab
  checkout or a data folder are refused always, even with ``overwrite``.

Resource errors (no space left, read-only file system, permission denied, out of memory) and interruptions
while writing leave the target as it was, remove the temporary siblings and surface as one line
(:class:`~prunelab.errors.PrunelabError`, or :class:`Interrupted` for SIGINT/SIGTERM once
:func:`install_signal_handlers` is active). Renames and cleanup run as a critical section in which those
signals are deferred, so a second Ctrl-C cannot interrupt the cleanup itself.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from prunelab.errors import PrunelabError

#: Name of the manifest that records what prunelab wrote in a folder (see the module docstring).
MANIFEST = ".prunelab-output.json"

Kind = Literal["dir", "file", "work-dir"]

# Paths the caller explicitly allowed to be replaced (``check_output_target(..., overwrite=True)``, i.e. the
# CLI's --overwrite). Library code deep below the CLI (save, reports, studies) then honours the user's choice
# without an ``overwrite`` argument threaded through every function.
_approved: set[str] = set()
_approved_trees: set[str] = set()


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (see :func:`install_signal_handlers`).

    A :class:`BaseException` but deliberately not a :class:`KeyboardInterrupt`: click turns the latter into
    "Aborted!" and exit 1, which would hide which signal stopped the run and what was being written.
    """

    def __init__(self, signum: int):
        self.signum = signum
        self.target: Path | None = None  # the output being written when it arrived, if any
        self.completed = False  # True if that output was already renamed into place (the signal was deferred)
        super().__init__(signal.Signals(signum).name)


# ------------------------------------------------------------------------------------------------ the rule
def _abs(path: str | Path) -> Path:
    """Absolute, symlinks resolved (so ``-o link-to-home`` is caught), without requiring the path to exist."""
    return Path(os.path.expanduser(str(path))).resolve(strict=False)


def _protected() -> list[tuple[Path, str]]:
    """Folders that must never be replaced, whatever ``overwrite`` says, with how to name them."""
    out = [(Path("/").resolve(), "the filesystem root"), (_abs(Path.home()), "your home folder"),
           (_abs(Path.cwd()), "the current folder")]
    pkg = Path(__file__).resolve().parent
    checkout = pkg.parent
    if (checkout / "pyproject.toml").exists() or (checkout / ".git").exists():
        out.append((checkout, "the prunelab checkout"))
    else:
        out.append((pkg, "the prunelab package"))
    from prunelab.data_roots import candidate_roots

    out += [(_abs(r), "a data folder") for r in candidate_roots() if r.is_dir()]
    return out


def _refuse_protected(target: Path) -> None:
    t = _abs(target)
    for p, what in _protected():
        if t == p or t in p.parents:
            detail = what if t == p else f"a folder containing {what} ({p})"
            raise PrunelabError(f"refusing to write to {target}: it is {detail}, which prunelab never replaces "
                                f"(not even with --overwrite); name a new folder such as {Path(target) / 'out'}")


def _is_approved(target: Path) -> bool:
    t = str(_abs(target))
    return t in _approved or any(t == r or t.startswith(r.rstrip("/") + "/") for r in _approved_trees)


def approve(target: str | Path, tree: bool = False) -> None:
    """Allow :func:`atomic_dir` / :func:`atomic_file` to replace ``target`` (``tree``: or anything under it)
    even if prunelab did not write it (the CLI's ``--overwrite``). Protected paths stay refused."""
    _refuse_protected(Path(target))
    (_approved_trees if tree else _approved).add(str(_abs(target)))


def _record(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns]


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest of ``folder`` (see :data:`MANIFEST`), or None if absent or unreadable."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    return data


def _foreign_entry(folder: Path) -> Path | None:
    """The first entry of ``folder`` prunelab did not write (per its manifest), or None if all are its own."""
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    if not entries:
        return None  # an empty folder holds nothing to lose
    manifest = read_manifest(folder)
    if manifest is None:
        return Path(entries[0].path)
    files, dirs = manifest["files"], set(manifest.get("dirs", []))
    for root, dnames, fnames in os.walk(folder):  # os.walk does not follow symlinked folders
        rel_root = os.path.relpath(root, folder)
        for name in sorted(dnames):
            rel = os.path.normpath(os.path.join(rel_root, name))
            p = Path(root) / name
            if p.is_symlink():  # a symlink to a folder is listed by walk as a folder; treat it as an entry
                if files.get(rel) != _record(p.lstat()):
                    return p
            elif rel not in dirs:
                return p
        for name in sorted(fnames):
            rel = os.path.normpath(os.path.join(rel_root, name))
            if rel == MANIFEST:
                continue
            if files.get(rel) != _record((Path(root) / name).lstat()):
                return Path(root) / name
    return None


def _file_is_ours(target: Path) -> bool:
    manifest = read_manifest(target.parent)
    return manifest is not None and manifest["files"].get(target.name) == _record(target.lstat())


def _check_parent(target: Path) -> None:
    """The first existing ancestor must be a folder we may write into (read-only mounts report EROFS here)."""
    a = Path(os.path.abspath(target)).parent
    while not os.path.lexists(a) and a != a.parent:
        a = a.parent
    if not a.is_dir():
        raise PrunelabError(f"cannot create {target}: {a} is a file, not a folder; choose another output")
    if not os.access(a, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if _is_read_only(a) else "is not writable (permission denied)"
        raise PrunelabError(f"cannot write {target}: {a} {why}; choose another output")


def _is_read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:  # pragma: no cover
        return False


def check_output_target(path: str | Path | None, kind: Kind = "dir", overwrite: bool = False) -> Path | None:
    """Pre-flight check of an output, to call before any work (loading models, training, evaluating).

    Raises :class:`PrunelabError` with one line naming ``path`` and the way out unless writing ``path`` as a
    ``kind`` ("dir": replaced as a whole, "file": one file, "work-dir": a cache folder that is reused) is
    allowed by the rule in the module docstring. With ``overwrite`` the path is also approved for the atomic
    helpers for the rest of the process (protected paths stay refused). Returns ``path`` (None passes through).
    """
    if path is None:
        return None
    target = Path(path)
    if overwrite:
        approve(target, tree=kind == "work-dir")
    _preflight(target, kind, overwrite)
    return target


def _preflight(target: Path, kind: Kind, overwrite: bool) -> None:
    _refuse_protected(target)
    _check_parent(target)
    _check_existing(target, kind, overwrite or _is_approved(target))


def _check_existing(target: Path, kind: Kind, overwrite: bool) -> None:
    if not os.path.lexists(target):
        return
    way_out = "pass --overwrite to replace it anyway (atomically), or choose another output"
    st = target.lstat()
    if stat.S_ISLNK(st.st_mode):
        pointee = target.resolve()
        if pointee.exists() and not (pointee.is_dir() or pointee.is_file()):
            raise PrunelabError(f"refusing to write to {target}: it links to {pointee}, which is not a regular "
                                "file or folder; choose another output")
        if not overwrite:
            raise PrunelabError(f"refusing to replace {target}: it is a symbolic link prunelab did not make; {way_out}")
        return
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise PrunelabError(f"refusing to write to {target}: it is not a regular file or folder (a device, pipe "
                            "or socket); choose another output")
    is_dir = stat.S_ISDIR(st.st_mode)
    if kind == "work-dir":
        if not is_dir:
            raise PrunelabError(f"the work folder {target} is a file, not a folder; choose another --work-dir")
        m = read_manifest(target)
        # another prunelab process may be claiming this folder right now: its manifest's temporary file (written
        # in the folder, then renamed) is not a foreign entry
        entries = sorted(e for e in target.iterdir() if not e.name.startswith(f"{MANIFEST}.tmp-"))
        if overwrite or not entries or (m is not None and m.get("kind") == "work-dir") or \
                _looks_like_old_work_dir(target):
            return
        raise PrunelabError(f"refusing to use {target} as the work folder: it is a folder prunelab did not create "
                            f"(e.g. {entries[0]}); pass --overwrite to use it anyway "
                            "(nothing in it is deleted), or choose another --work-dir")
    if overwrite:
        return
    if kind == "dir":
        if not is_dir:
            raise PrunelabError(f"refusing to replace {target}: it is a file and a folder is wanted here; {way_out}")
        foreign = _foreign_entry(target)
        if foreign is not None:
            raise PrunelabError(f"refusing to replace {target}: it holds files prunelab did not write "
                                f"(e.g. {foreign}); {way_out}")
    else:
        if is_dir:
            raise PrunelabError(f"refusing to replace {target}: it is a folder and a file is wanted here; {way_out}")
        if st.st_size and not _file_is_ours(target):
            raise PrunelabError(f"refusing to replace {target}: it is a file prunelab did not write (or it was "
                                f"changed since); {way_out}")


def _looks_like_old_work_dir(target: Path) -> bool:
    """A work folder from before the manifest existed: nothing but ``pruned/<hash>/`` folders (never deleted)."""
    entries = list(target.iterdir())
    return bool(entries) and all(e.name in ("pruned", MANIFEST) for e in entries) and \
        (target / "pruned").is_dir() and not (target / "pruned").is_symlink() and \
        all(p.is_dir() for p in (target / "pruned").iterdir())


def claim_work_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Check ``path`` as a work folder (see :func:`check_output_target`), create it and mark it as prunelab's."""
    target = check_output_target(path, "work-dir", overwrite)
    with _translated(target, existed=target.exists()):
        target.mkdir(parents=True, exist_ok=True)
        if read_manifest(target) is None:
            _write_manifest_file(target, {"kind": "work-dir", "files": {}})
    return target


# ------------------------------------------------------------------------------------------------ the helpers
@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``target``; on success it replaces ``target`` atomically.

    ``target`` must be allowed by :func:`check_output_target` (checked here on entry and again right before
    the rename). On any exception or signal the temporary folder is removed and ``target`` is left as it was.
    The finished folder gets a :data:`MANIFEST` listing every file in it, which makes it replaceable later.
    """
    target = Path(target)
    _preflight(target, "dir", overwrite)
    existed = os.path.lexists(target)
    with _translated(target, existed):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    done = False
    try:
        with _translated(target, existed):
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a saved model should be readable like any folder
            yield tmp
            _test_pause("before-commit", target)
            with _critical():
                _test_pause("in-commit", target)
                _write_dir_manifest(tmp)
                _check_existing(target, "dir", overwrite or _is_approved(target))
                _replace(tmp, target)
                done = True
    except BaseException as exc:
        with _critical():
            shutil.rmtree(tmp, ignore_errors=True)
        _note_interruption(exc, target, done)
        raise


@contextlib.contextmanager
def atomic_file(target: str | Path, suffix: str = "", overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; on success it is renamed onto ``target``.

    Same rule and guarantees as :func:`atomic_dir`; the file is recorded in its folder's :data:`MANIFEST`.
    """
    target = Path(target)
    _preflight(target, "file", overwrite)
    existed = os.path.lexists(target)
    with _translated(target, existed):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=suffix or target.suffix,
                                    dir=target.parent)
        os.close(fd)
    tmp = Path(name)
    done = False
    try:
        with _translated(target, existed):
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are as readable as any file
            yield tmp
            _test_pause("before-commit", target)
            with _critical():
                _test_pause("in-commit", target)
                _check_existing(target, "file", overwrite or _is_approved(target))
                rec = _record(tmp.lstat())
                _replace(tmp, target)
                done = True
                _add_to_manifest(target.parent, target.name, rec)
    except BaseException as exc:
        with _critical():
            tmp.unlink(missing_ok=True)
        _note_interruption(exc, target, done)
        raise


def _note_interruption(exc: BaseException, target: Path, done: bool) -> None:
    """Tell :class:`Interrupted` which output it stopped and whether that output was already complete."""
    if isinstance(exc, Interrupted):  # set again by each enclosing helper: the outermost output is named
        exc.target, exc.completed = target, done


def write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """Atomically write ``text`` to ``path``."""
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any, overwrite: bool = False) -> Path:
    """Atomically write ``obj`` as indented JSON (dataclasses and Paths are converted)."""
    return write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n", overwrite=overwrite)


def _umask() -> int:
    """The process umask. Linux reports it in /proc; elsewhere os.umask can only read it by setting it (and
    restoring it at once), which could briefly affect another thread creating files."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace(new: Path, target: Path) -> None:
    """Move ``target`` (if any) aside, rename ``new`` onto it, then delete the old one; undo on failure."""
    old = None
    if os.path.lexists(target):
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _write_dir_manifest(folder: Path) -> None:
    files: dict[str, list[int]] = {}
    dirs: list[str] = []
    for root, dnames, fnames in os.walk(folder):
        rel_root = os.path.relpath(root, folder)
        for name in dnames:
            p = Path(root) / name
            rel = os.path.normpath(os.path.join(rel_root, name))
            if p.is_symlink():
                files[rel] = _record(p.lstat())
            else:
                dirs.append(rel)
        for name in fnames:
            rel = os.path.normpath(os.path.join(rel_root, name))
            if rel != MANIFEST:
                files[rel] = _record((Path(root) / name).lstat())
    _write_manifest_file(folder, {"kind": "dir", "dirs": sorted(dirs), "files": dict(sorted(files.items()))})


def _add_to_manifest(folder: Path, name: str, rec: list[int]) -> None:
    data = read_manifest(folder) or {"kind": "files", "files": {}}
    data["files"][name] = rec
    try:
        _write_manifest_file(folder, data)
    except OSError:
        # The output itself is complete; without the record a later run merely refuses to replace it (the
        # safe direction), so a failing manifest write must not turn a finished output into an error.
        pass


def _write_manifest_file(folder: Path, data: dict) -> None:
    from prunelab import __version__

    data = {"written_by": f"prunelab {__version__}", **{k: v for k, v in data.items() if k != "written_by"}}
    fd, name = tempfile.mkstemp(prefix=f"{MANIFEST}.tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
        os.chmod(name, 0o666 & ~_umask())
        os.replace(name, folder / MANIFEST)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------ resources
_RESOURCE_ERRNOS = {
    errno.ENOSPC: ("no space left on device", "free some space or choose another output"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another output"),
    errno.EROFS: ("read-only file system", "choose an output on a writable file system"),
    errno.EACCES: ("permission denied", "choose an output you may write to"),
    errno.EPERM: ("operation not permitted", "choose an output you may write to"),
}
# Writers that wrap the OS error in their own exception (safetensors' Rust IoError, torch's stream writer)
# keep only its text; these fragments identify the same conditions there.
_RESOURCE_TEXT = [("No space left on device", errno.ENOSPC), ("os error 28", errno.ENOSPC),
                  ("StorageFull", errno.ENOSPC), ("Disk quota exceeded", errno.EDQUOT),
                  ("Read-only file system", errno.EROFS), ("os error 30", errno.EROFS),
                  ("ReadOnlyFilesystem", errno.EROFS), ("Permission denied", errno.EACCES),
                  ("os error 13", errno.EACCES), ("database or disk is full", errno.ENOSPC)]


def resource_problem(exc: BaseException) -> tuple[str, str] | None:
    """``(what ran out or was refused, what to do)`` if ``exc`` (or its cause) is a resource error, else None."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno == errno.ENOMEM):
            return "out of memory", "use a smaller --dtype (bfloat16) or a machine with more free memory"
        if isinstance(e, OSError) and e.errno in _RESOURCE_ERRNOS:
            return _RESOURCE_ERRNOS[e.errno]
        text = str(e)
        for fragment, code in _RESOURCE_TEXT:
            if fragment in text:
                return _RESOURCE_ERRNOS[code]
        if any(t in text for t in ("can't allocate memory", "not enough memory", "Cannot allocate memory",
                                   "out of memory")):
            return "out of memory", "use a smaller --dtype (bfloat16) or a machine with more free memory"
        e = e.__cause__ or e.__context__
    return None


class ResourceError(PrunelabError):
    """Writing an output failed for lack of a resource (space, permission, a writable file system, memory)."""

    def __init__(self, target: Path, existed: bool, what: str, todo: str):
        self.what, self.todo = what, todo
        state = "left as it was" if existed else "not created"
        super().__init__(f"cannot write {target}: {what} ({target} {state}, temporary files removed); {todo}")


@contextlib.contextmanager
def _translated(target: Path, existed: bool) -> Iterator[None]:
    """Turn a resource error while writing ``target`` into one :class:`ResourceError` line."""
    try:
        yield
    except ResourceError as exc:  # from a nested helper writing into our temporary folder: name our target
        raise ResourceError(target, existed, exc.what, exc.todo) from exc.__cause__
    except PrunelabError:
        raise
    except Exception as exc:
        problem = resource_problem(exc)
        if problem is None:
            raise
        raise ResourceError(target, existed, *problem) from exc


# ------------------------------------------------------------------------------------------------ signals
_critical_depth = 0
_pending_signal: int | None = None


@contextlib.contextmanager
def _critical() -> Iterator[None]:
    """Renames and cleanup: SIGINT/SIGTERM (with :func:`install_signal_handlers`) wait until this ends."""
    global _critical_depth, _pending_signal
    _critical_depth += 1
    try:
        yield
    except BaseException as exc:
        _critical_depth -= 1
        if _critical_depth == 0 and _pending_signal is not None and not isinstance(exc, Interrupted):
            sig, _pending_signal = _pending_signal, None
            raise Interrupted(sig) from exc  # the user asked to stop: that wins over the error being handled
        raise
    _critical_depth -= 1
    if _critical_depth == 0 and _pending_signal is not None:
        sig, _pending_signal = _pending_signal, None
        raise Interrupted(sig)


def _on_signal(signum: int, frame: Any) -> None:
    global _pending_signal
    if _critical_depth > 0:
        _pending_signal = signum
        return
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """Make SIGTERM (and SIGINT, unless it is ignored, as for background jobs) raise :class:`Interrupted`,
    so the atomic helpers' cleanup runs instead of the process dying with temporary files behind."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_signal)


def _test_pause(stage: str, target: Path) -> None:
    """Test hook: with ``PRUNELAB_TEST_PAUSE=STAGE:FLAGFILE`` the writer stops at STAGE ("before-commit":
    everything is in the temporary sibling; "in-commit": inside the critical section), creates FLAGFILE
    (holding the target) and waits for a signal, so a test can interrupt a save at a known point instead of
    guessing with sleeps. In "in-commit" it continues once a deferred signal is pending."""
    spec = os.environ.get("PRUNELAB_TEST_PAUSE")
    if not spec or spec.partition(":")[0] != stage:
        return
    Path(spec.partition(":")[2]).write_text(str(target), encoding="utf-8")
    deadline = time.monotonic() + 60  # never hang a test run forever
    while time.monotonic() < deadline:
        if stage == "in-commit" and _pending_signal is not None:
            return
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------------ JSON
def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, Paths, tensors, numpy scalars and tuples into JSON-friendly values."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch / numpy
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:  # NaN is not valid JSON
        return None
    return obj
