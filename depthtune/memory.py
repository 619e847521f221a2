"""Peak memory of a phase of work, the one measure that the reports and the benchmarks share.

    with PeakMemory(model) as mem:      # model optional
        ...
    mem.mb          # on a GPU: the CUDA allocator's peak (minus what was allocated at the start when
                    # over_start); on CPU: the model's weights plus the peak growth of resident memory
                    # over the phase's start, sampled every 20 ms (minus the weights when over_start)

A benchmark that measures "over the loaded model" passes over_start=True; the run report's figure is
the whole footprint of answering (weights included).
"""
from __future__ import annotations

import gc
import threading

import torch


def rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20
    except OSError:  # not Linux: the process high-water mark is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trim_heap() -> None:
    """Give freed heap back to the OS, so RSS growth measures this phase, not what came before."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: measure as is
        pass


def weights_mb(model) -> float:
    """Parameters and buffers at their stored size (4-bit ones packed)."""
    if model is None:
        return 0.0
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


class PeakMemory:
    """Peak memory of the `with` block (see the module docstring)."""

    def __init__(self, model=None, over_start: bool = False, device: torch.device | str | None = None):
        self.model, self.over_start = model, over_start
        if device is None:
            device = next(model.parameters()).device if model is not None else \
                ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        self.weights_mb = weights_mb(model)

    def __enter__(self):
        gc.collect()
        trim_heap()
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.cuda_start = torch.cuda.memory_allocated(self.device)
        self.start = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.mb = peak - self.cuda_start / 2**20 if self.over_start else peak
        else:
            growth = max(0.0, self.peak - self.start)
            self.mb = growth if self.over_start else self.weights_mb + growth
