"""Sharded checkpoints that a kill at any moment leaves whole, and the cadences of checkpoints and validation.

A distributed (FSDP) checkpoint is a directory of per-rank shards plus Lightning's ``meta.pt``. Written in place,
a kill mid-save would leave ``last.ckpt/`` with some shards of the new step and some of the old. Here every save
goes to a new directory beside it, ``last.ckpt.<step>-<n>/``, and only once every rank has finished writing is
``last.ckpt`` switched to it: ``last.ckpt`` is a symbolic link, replaced by ``os.replace`` of a fresh link (an
atomic rename on POSIX), after which the previous directory is deleted. A kill before the switch leaves the link
on the previous, complete directory (the half-written one is removed by the next save); a kill after it leaves
the new one. Readers (``resume=true``, Lightning's loader) follow the link like a directory.

Single-file checkpoints (one device, DDP) are already written to a temporary file and renamed by Lightning's
``TorchCheckpointIO`` (fsspec ``atomic_save``), so only the sharded path needs this.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy

STAGED_SEPARATOR = "."
"""``last.ckpt.<step>-<n>``: the staged directories of a link ``last.ckpt`` (also the ones a kill left behind)."""


def staged_dirs(link: Path) -> list[Path]:
    """Directories staged for ``link`` (complete or not), in name order."""
    prefix = link.name + STAGED_SEPARATOR
    return sorted(p for p in link.parent.glob(prefix + "*") if p.is_dir() and not p.is_symlink())


def publish(link: Path, target: Path) -> Optional[Path]:
    """Point ``link`` at ``target`` atomically; return the directory it pointed at before (None if none).

    A real directory at ``link`` (written before this module existed) is first moved aside to a staged name: the
    one non-atomic moment, once per run."""
    previous: Optional[Path] = None
    if link.is_symlink():
        previous = link.parent / os.readlink(link)
    elif link.is_dir():
        previous = link.with_name(f"{link.name}{STAGED_SEPARATOR}legacy")
        link.rename(previous)
    elif link.exists():
        link.unlink()  # a single-file checkpoint of another strategy: replaced, as Lightning would
    fresh = link.with_name(f".{link.name}.link-{os.getpid()}")
    if fresh.is_symlink() or fresh.exists():
        fresh.unlink()
    fresh.symlink_to(target.name)  # relative: the checkpoint directory may be moved as a whole
    os.replace(fresh, link)
    _fsync_dir(link.parent)
    return previous if previous != target else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomically(link: Path, tag: str, write: Callable[[Path], None], *, is_rank_zero: bool = True,
                    barrier: Callable[[], None] = lambda: None) -> Path:
    """Write a checkpoint with ``write(directory)`` (every rank), then switch ``link`` to it (rank 0).

    ``tag`` names the new directory ``<link>.<tag>`` and must be the same on every rank (rank 0's, broadcast).
    ``barrier`` waits for every rank: after the clean-up (before anyone writes) and after the writing (before the
    switch). Returns the new directory."""
    current = link.resolve() if link.is_symlink() else None
    target = link.with_name(f"{link.name}{STAGED_SEPARATOR}{tag}")
    if is_rank_zero:
        for stale in staged_dirs(link):  # half-written by a killed save; never the one the link points at
            if current is None or stale.resolve() != current:
                shutil.rmtree(stale)
        target.mkdir(parents=True, exist_ok=True)
    barrier()
    write(target)
    barrier()
    if is_rank_zero:
        previous = publish(link, target)
        if previous is not None and previous.exists():
            shutil.rmtree(previous)
    barrier()
    return target


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy (FSDP2) whose distributed checkpoints are published atomically."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Optional[Any] = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        link = Path(self.broadcast(str(filepath)))
        # The same new directory on every rank: the step and rank 0's random suffix.
        tag = self.broadcast(f"{int(checkpoint.get('global_step', 0)):09d}-{uuid.uuid4().hex[:8]}")
        save_atomically(link, tag,
                        lambda d: ModelParallelStrategy.save_checkpoint(self, checkpoint, d, storage_options),
                        is_rank_zero=self.global_rank == 0, barrier=lambda: self.barrier("lab-checkpoint"))

    def remove_checkpoint(self, filepath: Any) -> None:
        link = Path(filepath)
        if self.global_rank == 0 and link.is_symlink():
            target = link.resolve()
            link.unlink()
            shutil.rmtree(target, ignore_errors=True)
            return
        super().remove_checkpoint(filepath)


def periodic_checkpoint(ckpt_dir: Path, every_steps: int, every_minutes: Optional[float]) -> ModelCheckpoint:
    """``last.ckpt`` every ``every_steps`` optimizer steps, or every ``every_minutes`` of training time when set
    (Lightning's ``train_time_interval``; the two are exclusive there, so minutes win)."""
    if every_minutes is not None:
        return ModelCheckpoint(dirpath=ckpt_dir, train_time_interval=timedelta(minutes=every_minutes),
                               save_last=True, save_top_k=0, save_on_train_epoch_end=False)
    return ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=every_steps, save_last=True, save_top_k=0,
                           save_on_train_epoch_end=False)


def val_every_steps(every_steps: int, every_tokens: Optional[float], first_batch_tokens: int) -> int:
    """Validation cadence in optimizer steps: ``every_tokens`` (when set) in whole steps of the run's first batch,
    else ``every_steps``."""
    if every_tokens is None:
        return every_steps
    return max(1, round(every_tokens / first_batch_tokens))
