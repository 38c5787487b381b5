"""Sharded checkpoints are published atomically: an interrupted save leaves the previous checkpoint whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from lab.checkpoints import save_atomically, staged_dirs, val_every_steps


def write_shards(state: dict[str, torch.Tensor], fail_after_shards: bool = False):
    """A real distributed-checkpoint write of ``state``, then Lightning's meta.pt; optionally killed in between."""

    def write(directory: Path) -> None:
        dcp.save(state, checkpoint_id=directory)
        if fail_after_shards:
            raise KeyboardInterrupt("killed mid-save")  # what SIGKILL leaves: shards without meta.pt
        torch.save({"global_step": int(state["step"])}, directory / "meta.pt")

    return write


def load(link: Path) -> dict[str, torch.Tensor]:
    state = {"w": torch.zeros(4), "step": torch.zeros((), dtype=torch.long)}
    dcp.load(state, checkpoint_id=link)
    assert (link / "meta.pt").exists(), "a published checkpoint is complete"
    return state


def test_interrupted_sharded_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    link = tmp_path / "last.ckpt"
    save_atomically(link, "000000010-a", write_shards({"w": torch.full((4,), 1.0), "step": torch.tensor(10)}))
    assert link.is_symlink() and load(link)["step"] == 10

    with pytest.raises(KeyboardInterrupt):
        save_atomically(link, "000000020-b", write_shards({"w": torch.full((4,), 2.0), "step": torch.tensor(20)},
                                                          fail_after_shards=True))
    state = load(link)
    assert state["step"] == 10 and torch.equal(state["w"], torch.full((4,), 1.0)), "the previous one, whole"
    assert len(staged_dirs(link)) == 2, "the half-written directory is left until the next save"

    save_atomically(link, "000000030-c", write_shards({"w": torch.full((4,), 3.0), "step": torch.tensor(30)}))
    assert load(link)["step"] == 30
    assert [p.name for p in staged_dirs(link)] == ["last.ckpt.000000030-c"], "stale and replaced ones removed"
    assert os.readlink(link) == "last.ckpt.000000030-c", "a relative link: the directory can move as a whole"


def test_a_checkpoint_directory_written_in_place_before_is_migrated(tmp_path):
    link = tmp_path / "last.ckpt"
    write_shards({"w": torch.full((4,), 5.0), "step": torch.tensor(5)})(link)  # the old in-place layout
    save_atomically(link, "000000006-a", write_shards({"w": torch.full((4,), 6.0), "step": torch.tensor(6)}))
    assert link.is_symlink() and load(link)["step"] == 6 and len(staged_dirs(link)) == 1


def test_validation_cadence_by_tokens():
    assert val_every_steps(50, None, 4096) == 50
    assert val_every_steps(50, 1e6, 4096) == 244  # ~1M tokens in whole steps of the first batch
    assert val_every_steps(50, 10, 4096) == 1
