"""Deterministic, resumable sampling of training sequences, and the fixed validation set.

Every training sequence has a global index i = 0, 1, 2, ... over the whole run. :class:`TokenSampler` maps i to a
start offset drawn uniformly from [0, len(tokens) - seq_len - 1] (with replacement, as in nanoGPT) by a
counter-based rule: index i's offset is draw i mod 1024 of ``np.random.default_rng([seed, i // 1024])``. Any i
is reached in O(1), so a run that has consumed S sequences resumes exactly by starting at index S.

:class:`StepBatches` builds optimizer step k from the consecutive indices that follow the sequences consumed by
steps < k, so a batch-size schedule may change the number of sequences per step and resuming still yields the
same batches as the uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lab.data.tokens import (
    TokenFileError,
    Tokens,
    TokenStream,
    describe_source,
    load_tokens,
)

BLOCK = 1024
"""Sequence indices per random stream: creating one stream costs ~30 µs, amortised over 1024 draws."""


def _as_tokens(tokens: Tokens | str | Path) -> Tokens:
    return load_tokens(tokens) if isinstance(tokens, (str, Path)) else tokens


def _n_offsets(tokens: Tokens, seq_len: int) -> int:
    """Valid start offsets for a sequence of seq_len inputs plus one shifted target; fail if there are none."""
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    n_offsets = len(tokens) - seq_len
    if n_offsets < 1:
        raise TokenFileError(
            describe_source(tokens),
            f"too short: holds {len(tokens)} tokens, one sequence of seq_len={seq_len} needs {seq_len + 1}",
            "use a larger token file or a shorter model.seq_len",
        )
    return n_offsets


def _gather(tokens: Tokens, offsets: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x = tokens[o : o+T] and targets y = tokens[o+1 : o+T+1] for each offset o, as int64 (count, T).

    One vectorised gather of the (count, T+1) index grid from the memmap (only the touched pages are read),
    instead of a Python slice per sequence."""
    index = np.asarray(offsets, dtype=np.int64)[:, None] + np.arange(seq_len + 1, dtype=np.int64)  # (count, T+1)
    rows = tokens.take(index) if isinstance(tokens, TokenStream) else np.asarray(tokens)[index]
    rows = torch.from_numpy(rows.astype(np.int64))
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


class TokenSampler:
    """Maps global sequence indices to training sequences; the same (tokens, seq_len, seed) give the same sequences.

    ``tokens`` is what :func:`load_tokens` returns, any 1-D integer array, or a path/glob to load.
    """

    def __init__(self, tokens: Tokens | str | Path, seq_len: int, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise ValueError(f"seed={seed!r} must be an integer in [0, 2**63)")
        self.tokens = _as_tokens(tokens)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.n_offsets = _n_offsets(self.tokens, self.seq_len)
        self._block: tuple[int, np.ndarray] | None = None  # last stream drawn: (block index, its BLOCK offsets)

    def _block_offsets(self, block: int) -> np.ndarray:
        if self._block is None or self._block[0] != block:
            rng = np.random.default_rng([self.seed, block])
            self._block = (block, rng.integers(0, self.n_offsets, size=BLOCK, dtype=np.int64))
        return self._block[1]

    def offsets(self, start: int, count: int) -> np.ndarray:
        """Start offsets (int64, shape (count,)) of the sequences with global indices start .. start+count-1."""
        if start < 0 or count < 0:
            raise ValueError(f"sequence indices must be >= 0, got start={start}, count={count}")
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            index = start + filled
            within = index % BLOCK
            take = min(count - filled, BLOCK - within)
            out[filled : filled + take] = self._block_offsets(index // BLOCK)[within : within + take]
            filled += take
        return out

    def sequences(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences start .. start+count-1 as LongTensors x, y of shape (count, seq_len), y shifted by one."""
        return _gather(self.tokens, self.offsets(start, count), self.seq_len)


def validation_set(val_tokens: Tokens | str | Path, seq_len: int,
                   n_sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed set of held-out sequences at evenly spaced offsets, first and last offset included; no randomness.

    Returns LongTensors x, y of shape (n_sequences, seq_len). Fails if the split has fewer than n_sequences
    distinct start offsets.
    """
    tokens = _as_tokens(val_tokens)
    n_offsets = _n_offsets(tokens, seq_len)
    if not 1 <= n_sequences <= n_offsets:
        raise TokenFileError(
            describe_source(tokens),
            f"n_sequences={n_sequences} must lie in [1, {n_offsets}] (distinct starts in {len(tokens)} tokens "
            f"at seq_len={seq_len})",
            "lower data.val_sequences or use a larger validation split",
        )
    offsets = np.arange(n_sequences, dtype=np.int64) * (n_offsets - 1) // max(n_sequences - 1, 1)
    return _gather(tokens, offsets, seq_len)


@dataclass(frozen=True)
class StepPlan:
    """Which sequences optimizer step ``step`` uses: global indices sequences_before .. +sequences-1."""

    step: int
    sequences_before: int
    sequences: int


class StepBatches(IterableDataset):
    """Yields one dict per optimizer step, from ``start_step`` on, ready for gradient accumulation.

    Each item: ``{"step", "x", "y", "tokens_before", "sequences_before", "sequences"}`` where x, y are LongTensors
    of shape (A, micro_batch, seq_len), A = sequences / micro_batch / world_size the accumulation count of this
    rank, ``tokens_before`` = sequences_before · seq_len the tokens all ranks consumed before this step, and
    ``sequences`` the global batch of this step. Rank r takes the r-th contiguous share of the step's micro-batches,
    so the ranks' shares are disjoint and together form the world_size=1 batch.

    ``sequences_at_step(step, tokens_seen)`` gives the global batch in sequences (from a batch-size schedule);
    an int means a constant batch. Resume after k completed steps with ``start_step=k`` and
    ``start_sequence`` = sequences consumed by them (``sequences_before + sequences`` of step k-1).
    Iteration stops before step ``max_steps`` or once ``max_tokens`` have been consumed (so the last step may
    overshoot the budget by less than one batch); with neither it runs forever.

    Meant for ``DataLoader(dataset, batch_size=None)`` with ``num_workers=0``. With worker processes each worker
    yields every num_workers-th step and the loader's round-robin order restores the sequence; a spawned
    (not forked) worker receives a copy of the tokens, so keep num_workers=0 for large memmapped corpora.
    """

    def __init__(
        self,
        sampler: TokenSampler,
        sequences_at_step: Callable[[int, int], int] | int,
        micro_batch: int,
        *,
        start_step: int = 0,
        start_sequence: int = 0,
        max_steps: int | None = None,
        max_tokens: int | float | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if micro_batch < 1:
            raise ValueError(f"micro_batch={micro_batch} must be >= 1 sequences")
        if start_step < 0 or start_sequence < 0:
            raise ValueError(f"start_step={start_step} and start_sequence={start_sequence} must be >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        self.sampler = sampler
        self.sequences_at_step = sequences_at_step
        self.micro_batch = micro_batch
        self.start_step = start_step
        self.start_sequence = start_sequence
        self.max_steps = max_steps
        self.max_tokens = max_tokens
        self.rank = rank
        self.world_size = world_size

    def _batch_sequences(self, step: int, tokens_seen: int) -> int:
        schedule = self.sequences_at_step
        n = schedule if isinstance(schedule, (int, np.integer)) else schedule(step, tokens_seen)
        per_step = self.micro_batch * self.world_size
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 or n % per_step:
            raise ValueError(
                f"batch schedule gave {n!r} sequences at step {step} (tokens_seen={tokens_seen}); it must be a "
                f"positive multiple of micro_batch × world_size = {self.micro_batch} × {self.world_size} = {per_step} "
                "so every rank runs the same whole number of micro-batches; change batch.sequences or batch.micro_batch"
            )
        return int(n)

    def plan(self) -> Iterator[StepPlan]:
        """The steps this dataset will yield, without reading tokens (cheap: integer arithmetic per step)."""
        step, seen, seq_len = self.start_step, self.start_sequence, self.sampler.seq_len
        while (self.max_steps is None or step < self.max_steps) and (
            self.max_tokens is None or seen * seq_len < self.max_tokens
        ):
            n = self._batch_sequences(step, seen * seq_len)
            yield StepPlan(step=step, sequences_before=seen, sequences=n)
            step, seen = step + 1, seen + n

    def __iter__(self) -> Iterator[dict[str, torch.Tensor | int]]:
        worker = get_worker_info()
        worker_id, n_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        seq_len = self.sampler.seq_len
        for k, plan in enumerate(self.plan()):
            if k % n_workers != worker_id:
                continue
            per_rank = plan.sequences // self.world_size  # sequences on this rank, a multiple of micro_batch
            x, y = self.sampler.sequences(plan.sequences_before + self.rank * per_rank, per_rank)
            shape = (per_rank // self.micro_batch, self.micro_batch, seq_len)  # (A, micro, T)
            yield {
                "step": plan.step,
                "x": x.view(shape),
                "y": y.view(shape),
                "tokens_before": plan.sequences_before * seq_len,
                "sequences_before": plan.sequences_before,
                "sequences": plan.sequences,
            }
