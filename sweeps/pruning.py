"""Optuna pruning inside a lab run: report val/loss at fixed token checkpoints, stop a trial the pruner gives up on.

The pruner's ``step`` is a token count, not an optimizer step: trials of one study differ in batch size, so the
same optimizer step is a different amount of training in each of them. Optuna's median and Hyperband pruners
compare trials at *equal* steps (``intermediate_values[step]``), hence every trial reports at the same token
checkpoints k·every_tokens, k = 1, 2, ..., evaluating val/loss there itself when lab's own validation schedule
(every ``trainer.val_every_steps`` optimizer steps) does not fall on that step. Evaluation is deterministic and
touches no RNG, so a reported trial trains exactly as an unreported one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Optional

import lightning as L
import optuna

from lab.preemption import StopRun
from tracking.record import Metric

PRUNERS = ("median", "hyperband", "none")


class Pruned(optuna.TrialPruned, StopRun):
    """The pruner stopped the trial: Optuna records it PRUNED, lab ends its MLflow run KILLED with this message as
    status_reason (lab.preemption.StopRun)."""


def make_pruner(name: str, *, every_tokens: int, max_tokens: int, startup_trials: int = 4,
                warmup_tokens: float = 0.0) -> optuna.pruners.BasePruner:
    """A pruner whose resource unit is tokens (see the module docstring).

    - median: prune when a trial's best val/loss so far is worse than the median of completed trials at the same
      token checkpoint (Golovin et al. 2017, the median stopping rule), once ``startup_trials`` trials completed
      and after ``warmup_tokens`` tokens.
    - hyperband: successive-halving brackets (Li et al. 2018) from one checkpoint (``every_tokens``) up to the
      base budget ``max_tokens``, reduction factor 3.
    - none: never prunes; val/loss is still reported, so the curves are in the study.
    """
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=int(warmup_tokens))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=every_tokens, max_resource=max(max_tokens, every_tokens),
                                              reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}: use one of {', '.join(PRUNERS)}")


class TokenPruning(L.Callback):
    """Links the trial to its MLflow run, reports val/loss (nats/token) at token checkpoints, prunes.

    Raises ``Pruned("pruned at N tokens: ...")`` from ``on_train_batch_end``: lab ends the run KILLED with that
    reason and re-raises it, and Optuna records the trial PRUNED.

    ``reported``: token checkpoints the trial already holds a value for, inherited from the dead trial it retries
    (sweeps.study); its resumed run passes them again between its checkpoint and the point the worker died, with the
    same values (training is deterministic), so they are neither reported again nor judged again.
    """

    def __init__(self, trial: optuna.Trial, every_tokens: int, reported: Iterable[int] = ()):
        if every_tokens < 1:
            raise ValueError(f"every_tokens={every_tokens}: the pruning checkpoint interval must be >= 1 token")
        self.trial = trial
        self.every_tokens = int(every_tokens)
        self.next_checkpoint = self.every_tokens
        self.reported = frozenset(int(t) for t in reported)
        self.run_id: Optional[str] = None
        """The MLflow run of this trial, known from the start of fit (before any step can fail)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.logger is not None:
            self.run_id = trainer.logger.run_id
            # Recorded now, not when the run returns: a trial whose worker dies still points at its run.
            self.trial.set_user_attr("mlflow_run_id", self.run_id)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        p = pl_module.plan[int(batch["step"])]
        tokens = p.tokens_before + p.sequences * pl_module.acct.seq_len
        if tokens < self.next_checkpoint:
            return
        checkpoint = tokens // self.every_tokens * self.every_tokens
        self.next_checkpoint = checkpoint + self.every_tokens
        if checkpoint in self.reported:
            return
        if pl_module.last_val_tokens == tokens:  # lab validated at this very step
            loss = pl_module.last_val_loss
        else:
            loss = pl_module.validate_now()[Metric.VAL_LOSS]
        self.trial.report(loss, step=checkpoint)
        last_step = int(batch["step"]) == len(pl_module.plan) - 1  # nothing left to save: the trial completes
        if not last_step and self.trial.should_prune():
            shown = f"{loss:.4f}" if math.isfinite(loss) else str(loss)
            raise Pruned(f"pruned at {tokens} tokens by {type(self.trial.study.pruner).__name__}: "
                         f"val/loss={shown} at checkpoint {checkpoint} (trial {self.trial.number})")
