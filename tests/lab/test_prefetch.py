"""Background-thread prefetching keeps the dataset's order, surfaces its errors and stops when abandoned; the
vectorised gather equals per-sequence slicing, across file boundaries too."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from lab.data import StepBatches, TokenSampler
from lab.data.prefetch import Prefetched
from lab.data.tokens import TokenStream


def test_prefetched_batches_are_the_datasets_in_order():
    tokens = np.arange(5000, dtype=np.uint16)
    ds = StepBatches(TokenSampler(tokens, 16, seed=3), sequences_at_step=8, micro_batch=4, max_steps=12)
    direct, ahead = list(ds), list(Prefetched(ds, depth=3))
    assert [b["step"] for b in ahead] == list(range(12))
    for a, b in zip(direct, ahead):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])


def test_an_error_in_the_source_is_raised_by_the_consumer():
    def broken():
        yield 1
        raise OSError("disk gone")

    it = iter(Prefetched(broken()))
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)


def test_abandoned_iteration_ends_the_thread():
    before = threading.active_count()
    it = iter(Prefetched(iter(range(10**6)), depth=2))
    assert next(it) == 0
    it.close()  # what happens when Lightning stops early
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


def test_vectorised_gather_matches_slices_across_files():
    parts = [np.arange(i * 100, i * 100 + n, dtype=np.uint16) for i, n in enumerate((37, 5, 90))]
    stream = TokenStream(parts, ["a.bin", "b.bin", "c.bin"])
    sampler = TokenSampler(stream, 20, seed=0)
    x, y = sampler.sequences(0, 50)
    for row, o in enumerate(sampler.offsets(0, 50).tolist()):
        want = np.asarray(stream[o:o + 21], dtype=np.int64)
        assert x[row].tolist() == want[:-1].tolist() and y[row].tolist() == want[1:].tolist()
