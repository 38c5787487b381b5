"""At most one device-to-host read per optimizer step in steady state (issue 14), on a real smoke run.

Two counters: lab.syncs.host_reads() (the reads the step makes on purpose, through lab.syncs.read), and a
TorchFunctionMode that catches every ``.item()``, ``.tolist()``, ``float()``, ``int()`` and ``bool()`` of a tensor
called from lab's own code during a training step, however it is spelled. On a CPU these are not syncs, but each
would be one on CUDA; torch.cuda.set_sync_debug_mode checks the same on a GPU (benchmarks/gpu_acceptance.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning as L
import pytest
from mlflow.tracking import MlflowClient
from torch.overrides import TorchFunctionMode

from lab import syncs
from lab.run import train
from lab.train import compose_config

LAB = str(Path(__file__).resolve().parents[2] / "lab")
HOST_READS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__"}


class HostReadsFromLab(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(LAB):
                self.count += 1
        return func(*args, **(kwargs or {}))


class CountPerStep(L.Callback):
    def __init__(self):
        self.helper: list[int] = []
        self.caught: list[int] = []
        self.mode = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = syncs.host_reads()
        self.mode = HostReadsFromLab()
        self.mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.mode.__exit__(None, None, None)
        self.helper.append(syncs.host_reads() - self.start)
        self.caught.append(self.mode.count)


class SlowCheckpoint(L.Callback):
    """Stands for a checkpoint write: half a second in the hooks that end step 10."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 9:
            time.sleep(0.5)


def test_smoke_run_reads_the_device_at_most_once_per_step(tmp_path):
    counter = CountPerStep()
    cfg = compose_config(["experiment=smoke", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                          f"checkpoint_dir={tmp_path}/ckpt", f"data.cache_dir={tmp_path}/cache",
                          "trainer.progress_bar=false", "trainer.val_every_steps=1000",
                          "trainer.checkpoint_every_steps=1000"])
    result = train(cfg, callbacks=[counter, SlowCheckpoint()])
    steps = len(counter.helper)
    assert steps == 50
    steady = range(1, steps - 1)  # the first step has nothing to read yet; the last also validates
    assert [counter.helper[i] for i in steady] == [1] * len(steady), counter.helper
    assert all(counter.caught[i] <= 1 for i in steady), counter.caught
    # Read late, still recorded for every step.
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for key in ("train/loss", "grad_norm", "tokens"):
        assert sorted(m.step for m in client.get_metric_history(result.run_id, key)) == list(range(1, 51))
    # Step time leaves out what the hooks after a step do (checkpoint writing, here a 0.5 s sleep after step 10).
    seconds = {m.step: 256 / m.value for m in client.get_metric_history(result.run_id, "throughput/tokens_per_s")}
    assert seconds[11] < 0.4, f"step 11 took {seconds[11]:.3f} s: the checkpoint's time was counted"


def test_lagged_stats_return_what_was_pushed_one_step_later():
    import torch

    lagged: syncs.LaggedStats[int] = syncs.LaggedStats()
    assert lagged.pop() is None
    lagged.push(torch.tensor([1.5, 2.0]), payload=7)
    with pytest.raises(RuntimeError, match="pop"):
        lagged.push(torch.tensor([0.0]), payload=8)
    assert lagged.pop() == (7, [1.5, 2.0]) and not lagged.pending
