"""Resource errors and interruptions while writing: one line, non-zero exit, target intact, no temp siblings.

Covers a monkeypatched writer (ENOSPC, EACCES, EROFS, a writer that only keeps the OS error's text, as
safetensors does), a real size-limited tmpfs and a real read-only mount (skipped with the reason when mounting
is not permitted), out of memory at load, and real SIGTERM / SIGINT sent to a real ``prunelab`` subprocess
paused mid-save by the ``PRUNELAB_TEST_PAUSE`` hook (no timing guesses).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import prunelab
from prunelab.atomic import ResourceError, atomic_dir, check_output_target, write_json
from prunelab.cli import main
from prunelab.errors import PrunelabError
from tests.tiny import save_tiny, tiny_model, tiny_tokenizer


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def run_main(argv: list[str], capsys) -> tuple[int, list[str]]:
    """``prunelab ARGV`` in-process through :func:`prunelab.cli.main`: (exit code, non-empty stderr lines)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    return exc.value.code, [l for l in err.splitlines() if l.strip()]


@pytest.mark.parametrize("err, text", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
    # safetensors raises its own SafetensorError holding only the Rust io::Error text
    (RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                  'device" })'), "no space left on device"),
])
def test_writer_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, err, text):
    model = tiny_model("llama")
    old = tmp_path / "m"
    prunelab.save(model, tiny_tokenizer(), old)
    before = sorted(p.name for p in old.iterdir())

    def failing_save(self, path, *a, **k):
        (Path(path) / "model.safetensors").write_bytes(b"half")  # something half-written in the temp folder
        raise err

    monkeypatch.setattr(type(model), "save_pretrained", failing_save)
    for target, state in ((old, "left as it was"), (tmp_path / "new", "not created")):
        with pytest.raises(ResourceError) as info:
            prunelab.save(model, tiny_tokenizer(), target)
        msg = str(info.value)
        assert "\n" not in msg and str(target) in msg and text in msg and state in msg
    assert sorted(p.name for p in old.iterdir()) == before and not (tmp_path / "new").exists()
    assert leftovers(tmp_path) == []


def test_cli_disk_full_is_one_line_exit_2(saved_tiny, tmp_path, monkeypatch, capsys):
    import transformers.modeling_utils as mu

    def full(tensors, filename, *a, **k):
        Path(filename).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mu, "safe_save_file", full)  # the weights writer transformers' save_pretrained calls
    out = tmp_path / "out"
    code, lines = run_main(["stress", "relapse", str(saved_tiny), "-o", str(out)], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: cannot write") and "no space left on device" in lines[0] and str(out) in lines[0]
    assert not out.exists() and leftovers(tmp_path) == []


def test_out_of_memory_at_load_is_one_line(saved_tiny, tmp_path, monkeypatch, capsys):
    import prunelab.models

    for exc in (MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                            "allocate memory: you tried to allocate 2147483648 bytes")):
        def oom(*a, _exc=exc, **k):
            raise _exc

        monkeypatch.setattr(prunelab.models, "load", oom)
        code, lines = run_main(["info", str(saved_tiny)], capsys)
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: out of memory loading {saved_tiny} (weights: ")
        assert "bfloat16" in lines[0]


# ------------------------------------------------------------------------------------------------ real mounts
@pytest.fixture
def tmpfs(tmp_path):
    """A 96 KiB tmpfs (smaller than the tiny model's 144 KB of weights); skipped if mounting is not permitted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_tmpfs(tmpfs, capsys, tmp_path):
    model_dir = save_tiny(tmp_path)
    out = tmpfs / "out"
    code, lines = run_main(["stress", "relapse", str(model_dir), "-o", str(out)], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "no space left on device" in lines[0] and str(out) in lines[0]
    assert sorted(os.listdir(tmpfs)) == []  # no half-written target, no temporary sibling
    st = os.statvfs(tmpfs)
    assert st.f_bfree == st.f_blocks  # and the space is free again


def test_real_read_only_mount(tmpfs, capsys, tmp_path):
    model_dir = save_tiny(tmp_path)
    proc = subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot remount read-only: {proc.stderr.strip()}")
    for target in (tmpfs / "out", tmpfs / "a" / "b" / "out"):
        with pytest.raises(PrunelabError, match=f"cannot write {target}: {tmpfs} is on a read-only file system"):
            check_output_target(target)
        with pytest.raises(PrunelabError, match="read-only file system"):
            write_json(target, {})
    code, lines = run_main(["stress", "relapse", str(model_dir), "-o", str(tmpfs / "out"), "--json",
                            str(tmp_path / "r.json")], capsys)
    assert code == 2 and len(lines) == 1 and "read-only file system" in lines[0], lines
    assert not (tmp_path / "r.json").exists()  # refused before any work: not even the JSON was written


# ------------------------------------------------------------------------------------------------ signals
def _interrupt(tmp_path: Path, model_dir: Path, out: Path, stage: str, sig: int) -> subprocess.CompletedProcess:
    """Run ``prunelab stress relapse MODEL -o OUT`` in a subprocess, paused at ``stage`` of the save, and send
    ``sig`` once the pause hook reports that it has reached that point."""
    flag = tmp_path / f"paused-{stage}-{sig}"
    env = {**os.environ, "PRUNELAB_TEST_PAUSE": f"{stage}:{flag}"}
    proc = subprocess.Popen([sys.executable, "-m", "prunelab", "stress", "relapse", str(model_dir), "-o", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a background test runner may have SIGINT ignored; the CLI then (rightly) keeps it so
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out_, err = proc.communicate()
            pytest.fail(f"the save never reached {stage}: rc {proc.returncode}\n{err}")
        time.sleep(0.05)
    assert flag.read_text() == str(out)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


# each case is a real subprocess (~15 s of imports on 2 busy cores), so the two signals share the two target states
@pytest.mark.parametrize("sig, existing", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_signal_before_commit_leaves_target_as_it_was(saved_tiny, tmp_path, sig, existing):
    out = tmp_path / "out"
    if existing:
        prunelab.save(tiny_model("llama", seed=7), tiny_tokenizer(), out, metadata={"old": True})
    res = _interrupt(tmp_path, saved_tiny, out, "before-commit", sig)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    name = signal.Signals(sig).name
    assert res.returncode == 128 + sig, res.stderr
    assert lines == [f"error: interrupted by {name} while writing {out}; it was left as it was and temporary files "
                     "were removed"]
    if existing:
        assert json.loads((out / "prunelab.json").read_text()) == {"old": True}
    else:
        assert not out.exists()
    assert leftovers(tmp_path) == []


def test_sigterm_during_the_rename_is_deferred_until_it_is_complete(saved_tiny, tmp_path):
    out = tmp_path / "out"
    res = _interrupt(tmp_path, saved_tiny, out, "in-commit", signal.SIGTERM)
    assert res.returncode == 128 + signal.SIGTERM, res.stderr
    assert [l for l in res.stderr.splitlines() if l.strip()] == [
        f"error: interrupted by SIGTERM while writing {out}; it had just been completed"]
    assert json.loads((out / "prunelab.json").read_text())["stress"] == "relapse"
    assert prunelab.load(str(out)).model.config.num_hidden_layers == 4
    assert leftovers(tmp_path) == []


def test_signal_handlers_are_restored_after_main(saved_tiny, capsys):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    code, _ = run_main(["info", "/no/such/model"], capsys)
    assert code == 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_failed_mmap_at_load_is_out_of_memory_not_corrupt(saved_tiny, monkeypatch, capsys):
    """Under a memory limit safetensors' mmap fails with ENOMEM text; that is not a corrupt checkpoint."""
    import safetensors

    def no_mmap(path, *a, **k):
        raise safetensors.SafetensorError(f"unable to mmap 538090408 bytes from file <{path}>: Cannot allocate "
                                          "memory (12)")

    monkeypatch.setattr(safetensors, "safe_open", no_mmap)
    code, lines = run_main(["info", str(saved_tiny)], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: out of memory loading {saved_tiny}") and "corrupt" not in lines[0]


def test_permission_refused_folder(tmp_path, capsys):
    """As root chmod does not stop writes; the immutable attribute does (skipped where chattr is unsupported)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    proc = subprocess.run(["chattr", "+i", str(locked)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot set the immutable attribute here: {proc.stderr.strip()}")
    try:
        with pytest.raises(PrunelabError, match=f"cannot write {locked}/out: {locked} is not writable "
                                                r"\(permission denied\)"):
            with atomic_dir(locked / "out"):
                pass
        code, lines = run_main(["eval", "/no/such/model", "--json", str(locked / "r.json")], capsys)
        assert code == 2 and len(lines) == 1 and "permission denied" in lines[0], lines
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=False)
    assert list(locked.iterdir()) == []
