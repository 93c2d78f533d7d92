"""Ray dispatch: the driver logic with an in-process stand-in for the ``ray`` module, and the missing-ray error."""

import sys
from pathlib import Path

import pytest
import yaml

from prunelab.errors import PrunelabError
from prunelab.experiments import Store, run_experiment
from prunelab.experiments.ray_dispatch import run_on_ray


class Ref:
    def __init__(self, value):
        self.value = value


class FakeRay:
    """Just the ray API the dispatcher uses; tasks run eagerly when submitted."""

    def __init__(self):
        self.initialized_with = None
        self.resources = None
        self.submitted = 0

    def is_initialized(self):
        return self.initialized_with is not None

    def init(self, address=None, **kw):
        self.initialized_with = address

    def remote(self, **resources):
        self.resources = resources

        def wrap(fn):
            ray = self

            class Task:
                @staticmethod
                def remote(*args):
                    ray.submitted += 1
                    return Ref(fn(*args))

            return Task

        return wrap

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def cluster_resources(self):
        return {"CPU": 4.0, "GPU": 2.0}

    def get(self, ref):
        return ref.value

    def cancel(self, ref):
        pass


def test_ray_dispatch_stores_every_run_once(tmp_path, fake_stages, monkeypatch):
    fake = FakeRay()
    spec_path = tmp_path / "e.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "r", "models": ["m"], "pruning": "none", "mechanisms": ["ketamine", "ssri"],
        "isodose": "ketamine:1", "seeds": [0, 1], "training": {"samples": 4, "seq_len": 16},
        "stress": {"relapse": {"fraction": 0.3}}, "resources": {"num_gpus": 1, "cpus": 2, "retries": 2}}))
    import prunelab.experiments.ray_dispatch as rd

    monkeypatch.setattr(rd, "_import_ray", lambda: fake)
    db = tmp_path / "r.sqlite"
    s = run_experiment(spec_path, db, ray_address="ray://head:10001")
    assert (s.completed, s.failed) == (6, 0)
    assert fake.initialized_with == "ray://head:10001"
    env = fake.resources.pop("runtime_env")["env_vars"]
    assert fake.resources == {"num_gpus": 1.0, "num_cpus": 2.0, "max_retries": 2}
    assert env["PRUNELAB_STAGES"] == "tests.experiments.fake_stages:stages"  # workers run the driver's stages
    assert fake.submitted == 6  # one task per run
    again = run_experiment(spec_path, db, ray_address="ray://head:10001")
    assert (again.completed, again.already_stored) == (0, 6) and fake.submitted == 6
    with Store(db) as st:
        assert st.count() == 6 and all(r.experiments == ("r",) for r in st.runs())
        assert st.claims() == []  # every lease ended with its stored run


def test_missing_ray_is_one_clear_error(tmp_path, fake_stages, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    spec_path = tmp_path / "e.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "r", "models": ["m"], "mechanisms": ["ssri"]}))
    with pytest.raises(PrunelabError, match=r"--ray needs the optional 'ray' package"):
        run_experiment(spec_path, tmp_path / "r.sqlite", ray_address="auto")
