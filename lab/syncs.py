"""Device-to-host reads, counted, and per-step statistics read one step late (issue 14: at most one sync per step).

On CUDA every ``.item()``, ``float()`` or ``.tolist()`` of a device tensor blocks the host until the GPU has run
everything queued before it, so the host can no longer queue the next step while the current one runs. The
training step therefore keeps its statistics (loss, gradient norm, the noise scale's micro-batch norm) in one
device vector, starts its copy to pinned host memory without waiting (``non_blocking=True`` and a CUDA event),
and reads it at the next step, when the GPU has long finished it: one wait per step, for work already done.
Every step's values are still recorded, one step later.

``host_reads()`` counts the reads that go through :func:`read`; tests use it (and, on CUDA,
``torch.cuda.set_sync_debug_mode``) to check the budget of one read per optimizer step.
"""

from __future__ import annotations

from typing import Any, Generic, Optional, TypeVar

import torch

_reads = 0

P = TypeVar("P")


def host_reads() -> int:
    """Device-to-host reads made through :func:`read` since the process started."""
    return _reads


def read(t: torch.Tensor) -> list[float]:
    """The values of a 1-D tensor on the host: the one place lab's training step waits for the device."""
    global _reads
    _reads += 1
    return [float(v) for v in t.tolist()]


class LaggedStats(Generic[P]):
    """One pending vector of statistics and its host-side payload, read back one step after it was pushed."""

    def __init__(self) -> None:
        self._pending: Optional[tuple[P, torch.Tensor, Any]] = None

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def push(self, values: torch.Tensor, payload: P) -> None:
        """Start copying ``values`` (1-D, on the training device) to the host; ``pop`` returns them."""
        if self._pending is not None:
            raise RuntimeError("LaggedStats.push: the previous step's statistics were not read; pop() first")
        values = values.detach().float()
        event = None
        if values.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = values
        self._pending = (payload, host, event)

    def pop(self) -> Optional[tuple[P, list[float]]]:
        """The oldest pushed statistics as host floats with their payload, or None when nothing is pending."""
        if self._pending is None:
            return None
        payload, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()  # the copy was queued a step ago: this waits for work that is already done
        return payload, read(host)
