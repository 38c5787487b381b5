"""Per-step throughput: tokens/s, achieved FLOP/s, MFU and peak memory (design §5, issue 7).

MFU = achieved model FLOP/s / peak FLOP/s of all devices (Chowdhery et al. 2022, PaLM, appendix B), with the
model FLOPs per token of lab.flops.model_flops_per_token (head and full attention included, as nanoGPT and every
paper report it) and the peak of lab.flops.peak_flops for the dtype the matmuls run in (None: no MFU).

Peak memory: on CUDA the caching allocator's high-water mark of allocated tensor bytes on this rank's device
(``torch.cuda.max_memory_allocated``); on the CPU the process's peak resident set size (Linux: VmHWM in
/proc/self/status, which ``reset_peak_memory`` can reset; elsewhere ``getrusage`` ru_maxrss), which includes the
interpreter and libraries (~0.3-0.6 GB for torch + Lightning), so compare it between runs rather than read it as
the model's footprint. Freed tensors leave the RSS only if the allocator returns them to the OS: glibc does for
blocks above its mmap threshold (set MALLOC_MMAP_THRESHOLD_ for a fixed one, as benchmarks/ do).
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from lab.flops import mfu
from tracking.record import Metric


def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])  # "VmHWM:   123456 kB"
    except OSError:
        pass
    return None


def peak_memory_bytes(device: torch.device) -> int:
    """High-water mark of memory on ``device`` for this process, in bytes (see the module docstring)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def reset_peak_memory(device: torch.device) -> bool:
    """Restart the high-water mark from the current usage; False where the platform cannot (non-Linux CPU).

    On Linux writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS (proc(5), Linux >= 4.0).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    """Resident set size of this process now, in bytes (Linux; the peak elsewhere)."""
    rss = _proc_status_kib("VmRSS")
    return rss * 1024 if rss is not None else peak_memory_bytes(torch.device("cpu"))


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float
    """Global tokens (all ranks) per second of wall time."""
    flops_per_s: float
    """Achieved model FLOP/s of all ranks: tokens_per_s · model_flops_per_token."""
    mfu: Optional[float]
    """flops_per_s / peak FLOP/s of all devices; None where the peak is unknown."""

    def metrics(self) -> dict[str, float]:
        """MLflow metric names (tracking.record.Metric); MFU only where the peak is known."""
        out = {Metric.TOKENS_PER_S: self.tokens_per_s, Metric.FLOPS_PER_S: self.flops_per_s}
        if self.mfu is not None:
            out[Metric.MFU] = self.mfu
        return out


def throughput(tokens: float, seconds: float, flops_per_token: float, peak_flops: Optional[float]) -> Throughput:
    """Throughput of ``tokens`` (global) trained in ``seconds`` of wall time; ``peak_flops`` of all devices, or
    None when unknown (then no MFU)."""
    if not seconds > 0:
        raise ValueError(f"throughput: seconds={seconds!r} must be > 0 (time of the step)")
    tps = tokens / seconds
    ratio = mfu(tps, flops_per_token, peak_flops) if peak_flops is not None else None
    return Throughput(tokens_per_s=tps, flops_per_s=tps * flops_per_token, mfu=ratio)
