import pytest


@pytest.fixture
def fake_stages(monkeypatch):
    """Route the runner to the fast fake stages (no model, no data)."""
    monkeypatch.setenv("PRUNELAB_STAGES", "tests.experiments.fake_stages:stages")
    monkeypatch.delenv("PRUNELAB_FAKE_SLEEP", raising=False)
