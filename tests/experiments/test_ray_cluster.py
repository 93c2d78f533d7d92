"""`prunelab run --ray` against a real local Ray cluster (not the stand-in of test_ray_dispatch.py).

One head node per module, bound to 127.0.0.1 only, 2 CPUs, in its own session; the fixture kills that
session's processes (by session id — never `ray stop`, which would hit every Ray on the machine) and checks
none is left. Drivers are real `prunelab run` subprocesses; faults are real SIGKILLs.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from prunelab.experiments import Store, expand, load_spec, run_experiment
from tests.experiments.counting_stages import executions
from tests.experiments.store_probe import stored_run_count

import psutil  # noqa: E402 - comes with accelerate
import ray  # noqa: F401 - a test dependency (requirements.txt): missing, these tests must fail, not skip

pytestmark = pytest.mark.slow  # a real cluster: worker processes import torch; ~1 min on 2 idle cores

ROOT = Path(__file__).resolve().parents[2]
RAY_BIN = Path(sys.executable).with_name("ray")
COUNTING = "tests.experiments.counting_stages:stages"
# Ray resolves 127.0.0.1 to the machine's routable address (for multi-node clusters); this switch, meant for
# macOS/Windows, keeps the node, its servers and its drivers on the loopback interface.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class Cluster:
    address: str
    sid: int  # session id of every process of this cluster

    def pids(self) -> list[int]:
        out = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.sid:
                    out.append(p.pid)
            except (ProcessLookupError, PermissionError):
                pass
        return out

    def running_task_pids(self, name: str = "remote_run") -> list[int]:
        """Worker processes executing a task right now (Ray titles them ``ray::<function>``; idle ``ray::IDLE``)."""
        out = []
        for pid in self.pids():
            try:
                if psutil.Process(pid).cmdline()[:1] == [f"ray::{name}"]:
                    out.append(pid)
            except (psutil.NoSuchProcess, IndexError):
                pass
        return out


def _kill_session(sid: int, timeout: float = 15.0) -> list[int]:
    """SIGTERM then SIGKILL every process of session ``sid``; returns those still alive after ``timeout``."""
    def alive():
        out = []
        for p in psutil.process_iter(["status"]):
            try:
                if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
            except (ProcessLookupError, PermissionError):
                pass
        return out

    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, timeout)):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while alive() and time.time() < deadline:
            time.sleep(0.1)
    return alive()


@pytest.fixture(scope="module")
def cluster():
    tmp = Path(tempfile.mkdtemp(prefix="prl-ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, **LOOPBACK, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [str(RAY_BIN), "start", "--head", "--port=0", "--num-cpus=2", "--node-ip-address=127.0.0.1",
         f"--temp-dir={tmp}", "--include-dashboard=false", "--disable-usage-stats",
         "--object-store-memory=100000000"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sid = proc.pid  # start_new_session: `ray start` leads a new session that every daemon and worker inherits
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        address = (tmp / "ray_current_cluster").read_text().strip()
        c = Cluster(address, sid)
        listening = [conn.laddr.ip for conn in psutil.net_connections("inet")
                     if conn.status == psutil.CONN_LISTEN and conn.pid in set(c.pids())]
        assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in listening), listening
        yield c
    finally:
        left = _kill_session(sid)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, f"Ray processes left behind: {left}"


def _env(tmp_path, **extra):
    return {**os.environ, **LOOPBACK, "PRUNELAB_COUNT_LOG": str(tmp_path / "exec.log"),
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def _cmd(spec, db, address, json_path=None):
    cmd = [sys.executable, "-c", "from prunelab.cli import main; main()", "run", str(spec), "--db", str(db),
           "--ray", address]
    return cmd + (["--json", str(json_path)] if json_path else [])


def _results(value):
    """Metrics without the stage's own stopwatch readings (``seconds``, ``score_seconds``): those are timings."""
    if isinstance(value, dict):
        return {k: _results(v) for k, v in value.items() if not k.endswith("seconds")}
    if isinstance(value, list):
        return [_results(v) for v in value]
    return value


def _stored(db) -> list[tuple[str, dict]]:
    with Store(db, readonly=True) as s:
        return sorted((r.hash, _results(r.metrics.model_dump(mode="json"))) for r in s.runs())




def _failures(db) -> list[tuple[str, str]]:
    with Store(db, readonly=True) as s:
        return list(s.conn.execute("SELECT hash, error FROM failures"))


FAKE = {"models": ["m"], "pruning": {"kind": "width", "ratio": 0.4}, "mechanisms": ["ssri"],
        "training": {"samples": 8, "seq_len": 32}, "eval": {"limit": 5}}


def _fake_spec(tmp_path, name, seeds, **resources):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({**FAKE, "name": name, "seeds": seeds,
                                    "resources": {"num_cpus": 1, **resources}}))
    return spec


def _local_metrics(spec, tmp_path, monkeypatch, stages=COUNTING):
    """The same experiment run locally in this process (no sleep), for the metrics a local run gives."""
    if stages:
        monkeypatch.setenv("PRUNELAB_STAGES", stages)
    else:
        monkeypatch.delenv("PRUNELAB_STAGES", raising=False)
    for var in ("PRUNELAB_COUNT_SLEEP", "PRUNELAB_COUNT_LOG", "PRUNELAB_COUNT_GATE"):
        monkeypatch.delenv(var, raising=False)
    db = tmp_path / "local" / "r.sqlite"
    summary = run_experiment(spec, db, lease_ttl=30)
    assert summary.failed == 0
    return _stored(db)


# ------------------------------------------------------------------------------------------------ tests
def test_tiny_model_on_a_real_cluster_matches_a_local_run(cluster, tmp_path, monkeypatch):
    """4 runs with the real stages (prune → evaluate) on a tiny random Llama: stored once each, metrics as local."""
    from prunelab.models import save
    from tests.tiny import tiny_model, tiny_tokenizer

    model = tmp_path / "tiny"
    save(tiny_model("llama", max_position_embeddings=256), tiny_tokenizer(), model)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "tiny-ray", "models": [{"source": str(model), "name": "tiny"}],
        "pruning": [{"kind": "width", "criterion": "maw", "ratio": 0.25},
                    {"kind": "width", "criterion": "maw", "ratio": 0.5}],
        "seeds": [0, 1], "eval": {"tasks": ["arc_easy"], "limit": 2, "batch_size": 2},
        "resources": {"num_cpus": 1}}))
    db = tmp_path / "ray.sqlite"
    env = _env(tmp_path)
    env.pop("PRUNELAB_STAGES", None)  # the real stages
    done = subprocess.run(_cmd(spec, db, cluster.address, tmp_path / "s.json"), env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["completed"], summary["failed"], summary["total"]) == (4, 0, 4)
    on_ray = _stored(db)
    assert sorted(h for h, _ in on_ray) == sorted(r.hash for r in expand(load_spec(spec)))
    local = _local_metrics(spec, tmp_path, monkeypatch, stages=None)
    assert on_ray == local  # same hashes, same metrics (model structure and scores) as a local run
    assert {m["model"]["layer_widths"][0] for _, m in on_ray} == {36, 24}  # both prunings really ran


def _run_and_kill_one_worker(cluster, tmp_path, spec, db):
    """Start a Ray driver, SIGKILL the first worker seen executing a run; returns (completed process, killed pid)."""
    proc = subprocess.Popen(_cmd(spec, db, cluster.address), env=_env(tmp_path, PRUNELAB_STAGES=COUNTING,
                                                                      PRUNELAB_COUNT_SLEEP="2.0"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 120
    while killed is None and proc.poll() is None and time.time() < deadline:
        busy = cluster.running_task_pids()
        if busy:
            killed = busy[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=180)
    assert killed is not None, f"no worker was seen running a task\n{err[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), killed


def test_worker_sigkilled_mid_run_is_retried_once(cluster, tmp_path, monkeypatch):
    spec = _fake_spec(tmp_path, "retry", [0, 1], retries=1)  # 4 runs, each sleeping 2 s on a worker
    db = tmp_path / "r.sqlite"
    done, killed = _run_and_kill_one_worker(cluster, tmp_path, spec, db)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 run(s) completed, 0 already stored, 0 failed" in done.stdout
    assert _failures(db) == []
    ran = executions(tmp_path / "exec.log")
    assert len(ran) == len(set(ran)) == 4  # the killed attempt never finished; its retry did, once
    assert _stored(db) == _local_metrics(spec, tmp_path, monkeypatch)


def test_worker_sigkilled_without_retries_is_recorded_failed_and_a_rerun_completes(cluster, tmp_path):
    spec = _fake_spec(tmp_path, "noretry", [0, 1], retries=0)
    db = tmp_path / "r.sqlite"
    done, killed = _run_and_kill_one_worker(cluster, tmp_path, spec, db)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "3 run(s) completed, 0 already stored, 1 failed" in done.stdout
    assert "1 run(s) failed" in done.stderr
    fails = _failures(db)
    assert len(fails) == 1 and "WorkerCrashedError" in fails[0][1], fails
    assert stored_run_count(db) == 3
    again = subprocess.run(_cmd(spec, db, cluster.address), env=_env(tmp_path, PRUNELAB_STAGES=COUNTING),
                           cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 run(s) completed, 3 already stored, 0 failed" in again.stdout
    with Store(db, readonly=True) as s:
        assert sorted(r[0] for r in s.conn.execute("SELECT hash FROM runs")) == sorted(
            r.hash for r in expand(load_spec(spec)))
        assert fails[0][0] in s.stored_hashes()  # the failed run is the one the rerun completed


def test_driver_sigkilled_mid_experiment_then_rerun_resumes(cluster, tmp_path):
    spec = _fake_spec(tmp_path, "resume", [0, 1, 2])  # 6 runs
    db = tmp_path / "r.sqlite"
    env = _env(tmp_path, PRUNELAB_STAGES=COUNTING, PRUNELAB_COUNT_SLEEP="1.0")
    proc = subprocess.Popen(_cmd(spec, db, cluster.address), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while stored_run_count(db) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the driver finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored_at_kill = stored_run_count(db)
    assert 2 <= stored_at_kill < 6
    time.sleep(1.5)  # tasks still on the workers must not write anything: only the driver writes the store
    assert stored_run_count(db) == stored_at_kill
    again = subprocess.run(_cmd(spec, db, cluster.address), env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{6 - stored_at_kill} run(s) completed, {stored_at_kill} already stored, 0 failed" in again.stdout
    with Store(db, readonly=True) as s:
        hashes = [r[0] for r in s.conn.execute("SELECT hash FROM runs")]
        assert s.claims() == []
    assert sorted(hashes) == sorted(r.hash for r in expand(load_spec(spec)))  # 0 lost, 0 duplicated
