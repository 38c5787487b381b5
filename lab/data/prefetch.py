"""Batches prepared ahead of the training step by a background thread, pinned for a non-blocking copy on CUDA.

The training loop asks for step k's batch while the thread already gathers steps k+1 .. k+depth from the
memory-mapped tokens (NumPy's gathers release the GIL), so data loading overlaps the device's work. The order is
the wrapped dataset's: determinism and resumption are those of :class:`lab.data.StepBatches`. On CUDA each batch's
tensors are pinned in the thread, so Lightning's ``batch_to_device`` copies them with ``non_blocking=True``
(it does for every non-CPU device) and the copy overlaps compute.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset

_DONE = object()


def _pinned(item: Any) -> Any:
    if isinstance(item, dict):
        return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in item.items()}
    return item


class Prefetched(IterableDataset):
    """Iterates ``source`` in a daemon thread, ``depth`` items ahead; ``pin`` pins tensors (CUDA only)."""

    def __init__(self, source: Iterable[Any], depth: int = 2, pin: bool = False) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"Prefetched depth={depth} must be >= 1 items ahead")
        self.source = source
        self.depth = depth
        self.pin = pin and torch.cuda.is_available()

    def __iter__(self) -> Iterator[Any]:
        items: queue.Queue[Any] = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def fill() -> None:
            try:
                for item in self.source:
                    item = _pinned(item) if self.pin else item
                    while not stop.is_set():
                        try:
                            items.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                items.put(_DONE)
            except BaseException as err:  # handed to the consumer, which raises it
                items.put(err)

        thread = threading.Thread(target=fill, name="lab-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = items.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # the consumer stopped early (end of fit, preemption): let the thread end
