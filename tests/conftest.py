"""Shared fixtures: tiny random models of every supported family (built in-process, no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from tests.tiny import TINY_FAMILIES, save_tiny, tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(params=TINY_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


def pytest_collection_modifyitems(config, items):
    """Real-model tests run last so quick failures show first."""
    items.sort(key=lambda it: 1 if it.get_closest_marker("real_model") else 0)


@pytest.fixture
def saved_tiny(tmp_path):
    """A tiny Llama saved to disk, for CLI tests (modules needing other sizes override this fixture)."""
    return save_tiny(tmp_path)
