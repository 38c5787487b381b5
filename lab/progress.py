"""A progress bar in optimizer steps with loss, tokens/s and the last validation loss."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = total_steps

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        # The step stream has no length (it is an iterable); the plan knows how many steps remain.
        self.train_progress_bar.reset(total=self.total_steps - trainer.global_step)
        self.train_progress_bar.set_description(f"train (from step {trainer.global_step})"
                                                if trainer.global_step else "train")

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the MLflow run id fragment tells a reader nothing here
        return metrics
