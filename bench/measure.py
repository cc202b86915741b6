"""Clocks, memory and models for the benchmarks, the same on every device, so both sides of a ratio are measured alike.

CUDA runs asynchronously: a clock read when a call returns can stop while its kernels still run, so `timed`
synchronises the device before starting and before stopping the clock. Memory is the allocator's peak on CUDA
(what the model and its activations take, as other processes see it) and the process's peak resident set on the
CPU; every reading says which it is.
"""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager

import torch

CUDA_PEAK = "torch.cuda.max_memory_allocated (reset before)"
RSS_PEAK = "VmHWM: the process's peak resident set (reset before)"
RSS_LIFETIME = "ru_maxrss: the process's peak resident set since it started (could not be reset)"


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(fn(), its wall seconds), the clock read only once `device` has finished the work fn queued."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def model_device(model) -> torch.device:
    """Where a model's inputs must go: its input embeddings' device (a model spread by device_map starts there)."""
    return model.get_input_embeddings().weight.device


@contextmanager
def peak_memory(device):
    """Yields a dict filled on exit: `peak_bytes` over the block, `start_bytes` when it began, `source` (which of the
    readings above). On CUDA the peak counts every live tensor of the process, those allocated before the block too."""
    device = torch.device(device)
    reading: dict = {}
    cuda = device.type == "cuda"
    if cuda:
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        reading["start_bytes"] = torch.cuda.memory_allocated(device)
    else:
        reset = _reset_rss_peak()
        reading["start_bytes"] = _status_kb("VmRSS") * 1024
    try:
        yield reading
    finally:  # filled also when the block fails (out of memory: the peak it reached)
        if cuda:
            reading.update(peak_bytes=torch.cuda.max_memory_allocated(device), source=CUDA_PEAK)
        elif reset:
            reading.update(peak_bytes=_status_kb("VmHWM") * 1024, source=RSS_PEAK)
        else:
            reading.update(peak_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, source=RSS_LIFETIME)


def _reset_rss_peak() -> bool:
    try:  # Linux: writing 5 to clear_refs resets VmHWM to the current resident set
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith(field + ":")))
    except (OSError, StopIteration):
        return 0


def plain_model(resolved, device, dtype: torch.dtype):
    """The base model alone (no PEFT), loaded as the HF backend loads it, on `device` in `dtype`: the ceilings and
    the authors' pipeline shape then run where and in the precision sparta's side runs."""
    from transformers import AutoModelForCausalLM

    from sparta.models import load_random_model

    if resolved.kind == "random":
        return load_random_model(resolved.source, dtype, device)
    return AutoModelForCausalLM.from_pretrained(resolved.source, dtype=dtype).to(device).eval()


def backend_device(backend, member: str) -> torch.device:
    """The device an HF backend runs `member` on."""
    return backend.bases[backend.base_of[member]].device
