"""Efficiency of a (pruned) model: size, compute, latency, throughput, memory, energy — measured, never invented.

- ``params`` / ``flops_per_token``: :mod:`prunelab.models.counts` (FLOPs/token = 2·MACs incl. attention at
  ``context_len``).
- single-request latency: batch 1, greedy, exactly ``new_tokens`` new tokens after a ``prompt_len``-token
  prompt; ``latency_s`` is the wall time of that ``generate`` call, ``latency_ms_per_token`` = latency/new_tokens.
- batch throughput: ``batch_size`` prompts, same settings; ``throughput_tok_s`` = batch·new_tokens / wall time.
- peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the measurements (``memory_kind =
  "cuda_max_allocated"``); on CPU the process's peak resident set size from ``getrusage`` (``"process_rss_peak"``
  — the whole process's high-water mark since start, not only this model).
- energy per generated token of the throughput run: NVML total-energy counter on a GPU (``pynvml``), else Intel
  RAPL package counters (``/sys/class/powercap/intel-rapl:*/energy_uj``, whole CPU package, all processes),
  else ``None`` with ``energy_source = "unavailable: <why>"``.

Prompts are deterministic token ids (seeded), so repeated runs time the same work.
"""

from __future__ import annotations

import glob
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from prunelab.errors import PrunelabError


@dataclass
class EfficiencyReport:
    params_total: int
    params_non_embedding: int
    flops_per_token: float
    flops_context_len: int
    new_tokens: int
    prompt_len: int
    batch_size: int
    latency_s: float
    latency_ms_per_token: float
    throughput_tok_s: float
    peak_memory_mb: float
    memory_kind: str
    energy_j_per_token: float | None
    energy_source: str
    device: str
    dtype: str
    threads: int


# ------------------------------------------------------------------------------------------------ energy meters
class _Meter:
    source = "unavailable"

    def read_j(self) -> float:  # pragma: no cover - interface
        raise NotImplementedError


class _NVML(_Meter):
    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.read_j()  # raises if the GPU does not support the counter
        self.source = f"nvml (GPU {index} total energy counter)"

    def read_j(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0  # mJ -> J


class _RAPL(_Meter):
    def __init__(self, root: str = "/sys/class/powercap") -> None:
        # top-level package domains only (intel-rapl:0, :1 ...); sub-domains (intel-rapl:0:0) are inside them
        self._domains = [Path(p) for p in sorted(glob.glob(f"{root}/intel-rapl:*")) if p.count(":") == 1]
        if not self._domains:
            raise OSError(f"no RAPL domains under {root}")
        self._max = [float((d / "max_energy_range_uj").read_text()) if (d / "max_energy_range_uj").exists()
                     else float("inf") for d in self._domains]
        self._last = self._raw()  # raises PermissionError when not readable
        self._total = 0.0
        self.source = f"rapl ({len(self._domains)} CPU package domain(s), whole package incl. other processes)"

    def _raw(self) -> list[float]:
        return [float((d / "energy_uj").read_text()) for d in self._domains]

    def read_j(self) -> float:
        now = self._raw()
        for i, (a, b) in enumerate(zip(self._last, now)):
            self._total += (b - a) if b >= a else (self._max[i] - a + b)  # counter wrapped around
        self._last = now
        return self._total / 1e6


def energy_meter(device: torch.device, rapl_root: str = "/sys/class/powercap") -> tuple[_Meter | None, str]:
    """``(meter, description)``; ``meter`` is None (description says why) when no counter is readable."""
    reasons = []
    if device.type == "cuda":
        try:
            m = _NVML(device.index or 0)
            return m, m.source
        except Exception as exc:  # pynvml missing or counter unsupported
            reasons.append(f"NVML: {type(exc).__name__}")
    try:
        m = _RAPL(rapl_root)
        return m, m.source
    except Exception as exc:
        reasons.append(f"RAPL: {exc.__class__.__name__}")
    return None, "unavailable (" + "; ".join(reasons) + ")"


# ------------------------------------------------------------------------------------------------ measuring
def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0  # bytes on macOS, KiB on Linux


def _generate(model, ids: torch.Tensor, new_tokens: int) -> float:
    mask = torch.ones_like(ids)
    if ids.device.type == "cuda":
        torch.cuda.synchronize(ids.device)
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                         pad_token_id=0)
    if ids.device.type == "cuda":
        torch.cuda.synchronize(ids.device)
    elapsed = time.perf_counter() - start
    if out.shape[1] - ids.shape[1] != new_tokens:  # pragma: no cover - min_new_tokens guarantees it
        raise PrunelabError("generation stopped early; timing would not be per requested token")
    return elapsed


@torch.inference_mode()
def measure_efficiency(model, tokenizer=None, new_tokens: int = 128, batch_size: int = 16, prompt_len: int = 32,
                       context_len: int = 512, warmup: bool = True, seed: int = 0,
                       rapl_root: str = "/sys/class/powercap") -> EfficiencyReport:
    """Measure ``model`` (see module docstring). ``tokenizer`` is unused (prompts are token ids) but accepted
    for a uniform ``(model, tokenizer)`` signature."""
    from prunelab.models import count_parameters, flops_per_token

    for name, v in (("new_tokens", new_tokens), ("batch_size", batch_size), ("prompt_len", prompt_len)):
        if v <= 0:
            raise PrunelabError(f"{name} must be positive, got {v}")
    param = next(model.parameters())
    device = param.device
    vocab = int(getattr(model.config, "vocab_size", 0) or model.get_output_embeddings().weight.shape[0])
    gen = torch.Generator().manual_seed(seed)
    # ids from the middle of the vocabulary: real tokens, never the special ones at the ends
    lo, hi = min(10, vocab - 1), max(min(10, vocab - 1) + 1, vocab - 10)
    prompts = torch.randint(lo, hi, (batch_size, prompt_len), generator=gen).to(device)
    was_training = model.training
    model.eval()
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if warmup:
            _generate(model, prompts[:1], min(4, new_tokens))
        latency = _generate(model, prompts[:1], new_tokens)
        meter, source = energy_meter(device, rapl_root)
        e0 = meter.read_j() if meter else 0.0
        batch_time = _generate(model, prompts, new_tokens)
        energy = (meter.read_j() - e0) / (batch_size * new_tokens) if meter else None
        if device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
        else:
            peak, kind = _peak_rss_mb(), "process_rss_peak"
    finally:
        if was_training:
            model.train()
    counts = count_parameters(model)
    return EfficiencyReport(
        params_total=counts.total, params_non_embedding=counts.non_embedding,
        flops_per_token=float(flops_per_token(model, context_len)), flops_context_len=context_len,
        new_tokens=new_tokens, prompt_len=prompt_len, batch_size=batch_size, latency_s=latency,
        latency_ms_per_token=1000.0 * latency / new_tokens, throughput_tok_s=batch_size * new_tokens / batch_time,
        peak_memory_mb=peak, memory_kind=kind, energy_j_per_token=energy, energy_source=source,
        device=str(device), dtype=str(param.dtype).replace("torch.", ""), threads=torch.get_num_threads())


@torch.inference_mode()
def interleaved_latency(models: list, input_ids: torch.Tensor, reps: int) -> list[float]:
    """Median wall time in seconds of one forward pass per model, measured *interleaved*: one warm-up pass each,
    then ``reps`` rounds that time every model once, the order rotated each round, so a slow stretch of the machine
    (another process, thermal state, the allocator after an evaluation) falls on every model alike. Timing each
    model right after its own evaluation measured weight-equivalent models 6–11 % apart on SmolLM2-135M; timed
    interleaved the same two gave 459 vs 457 ms."""
    import statistics

    if reps < 1:
        raise PrunelabError(f"reps must be ≥ 1, got {reps}")
    if not models:
        return []
    times: list[list[float]] = [[] for _ in models]
    order = list(range(len(models)))
    for model in models:
        model(input_ids=input_ids, use_cache=False)
    for r in range(reps):
        shift = r % len(order)
        for k in order[shift:] + order[:shift]:
            start = time.perf_counter()
            models[k](input_ids=input_ids, use_cache=False)
            times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


@torch.inference_mode()
def forward_latency(model, input_ids: torch.Tensor, reps: int) -> float:
    """Median wall time in seconds of one full forward pass over ``input_ids`` (no KV cache), after one warm-up
    pass (the first call pays for allocation and kernel selection): :func:`interleaved_latency` of one model."""
    return interleaved_latency([model], input_ids, reps)[0]
