"""Runs that stop before their end on purpose, and come back: preemption by a signal, and stops by a callback.

**Preemption.** SLURM preempts a job with SIGTERM (then SIGKILL once the partition's GraceTime is over) and warns a
job before its time limit with the signal of ``--signal`` (submitit asks for USR2, Lightning's SLURM docs for USR1).
A signal lands in the middle of an optimizer step, so during training ``Preemption`` only records it. At the end of
that step (after any pruning report: it is the last callback but the checkpoint ones) every rank agrees to stop, the
checkpoint of *this* step is written to ``last.ckpt`` (carrying the metrics the store has not yet taken:
``lab.logger.PendingMetrics``), the MLflow run ends KILLED with
``status_reason = "preempted by SIGTERM after step S of …"``, and ``Preempted`` is raised. ``resume=true`` then
continues the same MLflow run from that step, every step recorded once.

``Preempted`` is a ``SystemExit``, as Lightning's own ``SIGTERMException``: the process was told to end, so it passes
the ``except Exception`` of sweep jobs, Hydra and Optuna, and ends ``lab-train`` / ``lab-study`` with exit status
``PREEMPTED_EXIT`` (75), which a batch script can answer with ``scontrol requeue``.
Whoever can requeue catches it: the submitit launchers (hydra_plugins.lab_sweeper.sized_submitit) requeue the job
with ``resume=true``; an Optuna worker hands its trial back for a retry that resumes the run (sweeps.study).

Lightning's handlers are replaced while training runs: its SIGTERM handler would stop at a step boundary without a
checkpoint (the run would end FAILED), and its SLURM auto-requeue handler (USR1) ends the MLflow run FINISHED and
writes an ``hpc_ckpt`` that lab never resumes from. A signal that arrives after the last step is moot (the run is
complete) and one that arrives before training starts meets the process's own handlers (submitit's, or the default).

**Stops.** A callback that ends a run early on purpose raises ``StopRun`` (sweeps.pruning's ``Pruned``): the run ends
KILLED with the message as its ``status_reason``, never FAILED, and the exception propagates to the caller.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tracking.record import Checkpoint, FailureKind, Tag
from tracking.runs import REASON_LIMIT

log = logging.getLogger(__name__)

SUBMITIT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"
"""submitit's variable naming its preemption / timeout signal (default USR2)."""
PREEMPTED_EXIT = 75
"""Exit status of a process ended by ``Preempted``: EX_TEMPFAIL of sysexits.h, "try again later"."""


class StopRun(Exception):
    """Raised by a callback to end a run early on purpose: the MLflow run ends KILLED with this message as its
    status_reason (not FAILED), and the exception propagates out of lab.run.train. ``kind`` is its status_kind
    (a FailureKind; pruners stop runs)."""

    def __init__(self, message: str, kind: str = FailureKind.PRUNED):
        super().__init__(message)
        self.kind = kind


class Preempted(SIGTERMException):
    """The run saved a checkpoint at the step a preemption signal arrived and ended KILLED; ``resume=true`` continues
    it. A SystemExit: it ends the process unless a launcher that can requeue the job catches it."""

    def __init__(self, message: str, signal_name: str, step: int, checkpoint: Path):
        super().__init__(message)
        self.code = PREEMPTED_EXIT  # the exit status; str(self) stays the message
        self.signal_name = signal_name
        self.step = step
        """Optimizer steps done and saved in the checkpoint."""
        self.checkpoint = checkpoint


STOPS = (StopRun, Preempted)
"""Exceptions after which a run is KILLED (stopped, resumable), not FAILED."""


def submitit_signal() -> signal.Signals:
    """The signal on which a submitit job checkpoints and requeues itself (USR2 unless SUBMITIT_PREEMPT_SIGNAL)."""
    return getattr(signal, "SIG" + os.environ.get(SUBMITIT_SIGNAL_ENV, "USR2"), signal.SIGUSR2)


def preemption_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM (preemption), USR1 (Lightning's SLURM convention), USR2 or submitit's configured signal."""
    return tuple(dict.fromkeys((signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, submitit_signal())))


class Preemption(L.Callback):
    """Checkpoint at the step a preemption signal arrives, end the run KILLED, raise ``Preempted``; end runs stopped by
    a ``StopRun`` KILLED (module docstring). ``ckpt_dir`` is the run's checkpoint directory (``last.ckpt`` goes there).
    """

    def __init__(self, ckpt_dir: Path):
        self.ckpt_dir = Path(ckpt_dir)
        self.received: Optional[str] = None
        """Name of the first preemption signal received during training."""
        self._replaced: dict[signal.Signals, Any] = {}

    def _record(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            log.warning("received %s: saving a checkpoint at the end of this step, then stopping", self.received)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only: nothing to handle here
        if trainer.received_sigterm:  # arrived between Lightning's registration and now
            self.received = "SIGTERM"
        self._replaced = {s: signal.signal(s, self._record) for s in preemption_signals()}

    def _restore(self) -> None:
        for s, handler in self._replaced.items():
            signal.signal(s, handler)
        self._replaced = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step, steps = int(batch["step"]) + 1, len(pl_module.plan)
        # Every rank stops at the same step (saving is collective); any rank's signal counts. With several ranks,
        # lab.module all-reduces the signal flags with the step's statistics and reads them one step late, which
        # saves a host sync per step; alone, the local flag decides at once.
        lagged = getattr(pl_module, "stop_requested", None)
        if trainer.world_size > 1 and lagged is not None:
            anywhere = bool(lagged)
        else:
            anywhere = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not anywhere or step == steps:
            return
        path = self.ckpt_dir / Checkpoint.LAST
        trainer.save_checkpoint(path)
        name = self.received or "a signal on another rank"
        stop = Preempted(f"preempted by {name} after step {step} of {steps}: checkpoint {path}; continue the same "
                         "MLflow run with resume=true", name, step, path)
        log.warning("%s", stop)  # an uncaught SystemExit with a status code ends the process silently
        raise stop

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.received is not None:
            log.warning("%s arrived after the last step: the run is complete, nothing to checkpoint", self.received)
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        logger = trainer.logger
        if isinstance(exception, STOPS) and logger is not None:
            record = getattr(pl_module, "record_pending", None)
            if record is not None:
                record()  # the stopped step's statistics, which lab.module reads one step late
            kind = FailureKind.PREEMPTED if isinstance(exception, Preempted) else exception.kind
            logger.set_tags({Tag.STATUS_REASON: str(exception)[:REASON_LIMIT], Tag.STATUS_KIND: kind})
            logger.finalize("KILLED")  # flushes the buffered metrics, then ends the MLflow run KILLED
            # Lightning finalizes every logger it still holds as FAILED right after this hook.
            trainer.loggers = []
