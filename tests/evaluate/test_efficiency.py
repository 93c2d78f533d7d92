"""Efficiency on a tiny model with tiny sizes; energy counters read, wrap around, or are reported unavailable."""

from __future__ import annotations

import math

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.evaluate.efficiency import _RAPL, energy_meter, forward_latency, interleaved_latency, measure_efficiency
from prunelab.models import count_parameters, flops_per_token
from tests.tiny import tiny_model, tiny_tokenizer


def test_measure_efficiency_tiny(tmp_path):
    model = tiny_model("llama")
    rep = measure_efficiency(model, tiny_tokenizer(), new_tokens=4, batch_size=3, prompt_len=8,
                             rapl_root=str(tmp_path / "none"))
    assert rep.params_total == count_parameters(model).total
    assert rep.flops_per_token == flops_per_token(model, 512)
    assert rep.latency_s > 0 and rep.latency_ms_per_token == pytest.approx(1000 * rep.latency_s / 4)
    assert rep.throughput_tok_s > 0 and math.isfinite(rep.throughput_tok_s)
    assert rep.memory_kind == "process_rss_peak" and rep.peak_memory_mb > 10
    assert rep.energy_j_per_token is None and rep.energy_source.startswith("unavailable")
    assert not model.training


def _fake_rapl(root, value, max_range=1000):
    d = root / "intel-rapl:0"
    d.mkdir(parents=True, exist_ok=True)
    (d / "energy_uj").write_text(str(value))
    (d / "max_energy_range_uj").write_text(str(max_range))
    sub = root / "intel-rapl:0:0"  # a sub-domain: must not be double counted
    sub.mkdir(exist_ok=True)
    (sub / "energy_uj").write_text("5")
    return d


def test_rapl_counter_and_wraparound(tmp_path):
    d = _fake_rapl(tmp_path, 900)
    meter = _RAPL(str(tmp_path))
    assert meter.read_j() == 0.0
    (d / "energy_uj").write_text("950")
    assert meter.read_j() == pytest.approx(50e-6)
    (d / "energy_uj").write_text("30")  # wrapped: 950 -> 1000 -> 30 = 80 µJ more
    assert meter.read_j() == pytest.approx(130e-6)
    m, source = energy_meter(torch.device("cpu"), str(tmp_path))
    assert m is not None and source.startswith("rapl (1 ")


def test_energy_unavailable_is_none_not_invented(tmp_path):
    meter, source = energy_meter(torch.device("cpu"), str(tmp_path / "missing"))
    assert meter is None and "unavailable" in source


def test_bad_sizes():
    with pytest.raises(PrunelabError, match="new_tokens"):
        measure_efficiency(tiny_model("llama"), None, new_tokens=0)


def test_interleaved_latency_rotates_and_times_each_model():
    calls: list[int] = []

    class Fake(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.k = k

        def forward(self, input_ids, use_cache):
            assert torch.is_inference_mode_enabled()  # timed without building an autograd graph
            calls.append(self.k)

    out = interleaved_latency([Fake(0), Fake(1), Fake(2)], torch.zeros(1, 4, dtype=torch.long), reps=3)
    assert len(out) == 3 and all(t >= 0 for t in out)
    # one warm-up each, then rounds in rotated order: no model is always timed first
    assert calls == [0, 1, 2, 0, 1, 2, 1, 2, 0, 2, 0, 1]
    assert interleaved_latency([], torch.zeros(1, 4, dtype=torch.long), reps=3) == []
    with pytest.raises(PrunelabError, match="reps"):
        interleaved_latency([Fake(0)], torch.zeros(1, 4, dtype=torch.long), reps=0)
    calls.clear()
    assert forward_latency(Fake(7), torch.zeros(1, 4, dtype=torch.long), reps=2) >= 0
    assert calls == [7, 7, 7]  # one warm-up, then the timed passes
