"""The LightningModule: one optimizer step per batch of micro-batches, with schedules, noise scale and logging.

Optimization is manual because a step's batch size changes over a run (batch-size schedules are realised by
gradient accumulation over a fixed micro-batch) and because the gradient noise scale needs the norm of one
micro-batch's gradient next to the accumulated one (McCandlish et al. 2018, appendix A).

Under several ranks (lab.parallel): with DDP the first A − 1 micro-batches run without gradient sync, so the first
micro-batch's gradient is local to its rank (the noise scale's small batch is micro_batch·seq_len tokens) and a
step costs one all-reduce instead of A; with FSDP every backward reduce-scatters (that is what keeps gradients
sharded), so the first micro-batch's gradient already averages all ranks: its batch is micro_batch·seq_len·ranks.
The big batch is always the global step batch. Validation: every rank evaluates the whole fixed held-out set
(it is small) with the same parameters, and rank 0's number is broadcast so every rank reports and acts on the
same value (pruners, early stopping).

Host syncs (lab.syncs): a step keeps its loss, gradient norm and micro-batch norm on the device and reads the
previous step's, so the host queues step k+1 while the device runs step k. Each step's metrics, the divergence
test and the noise-scale update therefore happen one step late (at the next step, a validation, a checkpoint or
the end), with the values of the step they belong to. Step time runs from the end of the previous step's hooks
(after any checkpoint) to the end of the optimizer step, before validation: it counts data loading but never
validation or checkpoint writing.
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.strategies import ParallelStrategy
from torch import nn

from lab import parallel, preemption
from lab.config import OptimConfig
from lab.losses import cross_entropy
from lab.noise import LOG_EVERY_STEPS, NoiseScale
from lab.schedules import PlanStep
from lab.syncs import LaggedStats
from lab.throughput import peak_memory_bytes, throughput
from lab.logger import PENDING_KEY
from tracking.record import Metric


class DivergedError(RuntimeError):
    """The loss became NaN/inf or rose above the configured ceiling; the run ends FAILED with this reason."""


@dataclass(frozen=True)
class Accounting:
    """Per-token constants the module reports against."""

    seq_len: int
    model_flops_per_token: float
    """Model FLOPs per token, head and attention included (lab.flops.model_flops_per_token): MFU's numerator."""
    peak_flops: Optional[float]
    """Peak FLOP/s of all devices together, the MFU denominator; None: unknown device, no MFU recorded."""
    bytes_per_token: Optional[float]
    """1.0 for byte-level tokens; None when unknown (then val/bpb is not logged)."""


@dataclass(frozen=True)
class _StepRecord:
    """What the host knows of a step when it is queued; its device statistics are read one step later."""

    plan: PlanStep
    accum: int
    seconds: float
    """Step time (module docstring); NaN for the first step of a launch."""


class LitGPT(L.LightningModule):
    def __init__(self, model: nn.Module, optim: OptimConfig, plan: list[PlanStep], accounting: Accounting,
                 val_data: tuple[torch.Tensor, torch.Tensor], val_every_steps: int, max_loss: float,
                 micro_batch: int, parallelism: Optional[parallel.Parallelism] = None,
                 loss_chunk: Optional[int] = None):
        super().__init__()
        self.model = model
        self.optim_cfg = optim
        self.plan = plan
        self.acct = accounting
        self.val_x, self.val_y = val_data
        self.val_every_steps = val_every_steps
        self.max_loss = max_loss
        self.micro_batch = micro_batch
        self.parallelism = parallelism or parallel.Parallelism()
        self.loss_chunk = loss_chunk
        """Rows per chunk of the fused linear + cross-entropy (None: the naive loss over full logits)."""
        self.automatic_optimization = False
        self.noise = NoiseScale()
        self.last_val_loss = math.nan
        self.last_val_tokens = 0
        """Tokens seen at the last validation: callbacks (pruners) read it with last_val_loss."""
        self._last_step_end: Optional[float] = None
        self._lagged: LaggedStats[_StepRecord] = LaggedStats()
        self._loss_fn = cross_entropy
        self.stop_requested: Optional[bool] = None
        """Some rank received a preemption signal by the last step read (lab.preemption reads it under DDP/FSDP)."""

    def configure_model(self) -> None:
        # Called by Lightning once the processes (and, under FSDP, the device mesh) exist; idempotent because
        # Lightning may call it again for a later fit/validate on the same module.
        if getattr(self, "_parallelized", False):
            return
        if self.device.type == "cuda":
            parallel.enable_tf32()
        mesh = self.device_mesh["data_parallel"] if self.parallelism.strategy == "fsdp" else None
        parallel.apply(self.model, self.parallelism, device_mesh=mesh)
        self._loss_fn = parallel.loss_function(self.parallelism, self.device.type)
        self._parallelized = True

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = self.model.param_groups(self.optim_cfg.lr, self.optim_cfg.weight_decay)
        for g in groups:
            g["lr_peak"] = g["lr"]  # per-group peak (muP scales hidden matrices); the schedule multiplies it
        on_cuda = self.device.type == "cuda"
        return torch.optim.AdamW(groups, betas=(self.optim_cfg.beta1, self.optim_cfg.beta2), eps=self.optim_cfg.eps,
                                 fused=True if on_cuda else None, foreach=None if on_cuda else True)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._loss_fn(self.model.hidden(x), self.model.output_weight, y, scale=self.model.logit_scale,
                             chunk_size=self.loss_chunk, vocab_size=self.model.cfg.vocab_size)

    def _no_grad_sync(self) -> AbstractContextManager[None]:
        strategy = self.trainer.strategy
        return strategy.block_backward_sync() if isinstance(strategy, ParallelStrategy) else nullcontext()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opt = self.optimizers()
        p = self.plan[int(batch["step"])]
        scale = p.lr / self.optim_cfg.lr
        for g in opt.optimizer.param_groups:
            g["lr"] = g["lr_peak"] * scale

        x, y = batch["x"], batch["y"]  # (A, micro, T) on this rank
        accum = x.shape[0]
        loss_sum = torch.zeros((), device=self.device)
        micro_sq = torch.full((), math.nan, device=self.device)
        for i in range(accum):
            # DDP: no all-reduce before the last micro-batch (no-op on one device and under FSDP).
            with self._no_grad_sync() if i < accum - 1 else nullcontext():
                loss = self._loss(x[i], y[i])
                self.manual_backward(loss / accum)
            loss_sum += loss.detach().float()
            if i == 0 and accum > 1:
                # .grad holds g_micro/accum right after the first backward: one norm per step gives |g_micro|².
                micro_sq = parallel.grad_sq_norm(self.model.parameters()) * accum**2
        # The mean over ranks (one device all-reduce), so every rank logs and tests divergence on the same number;
        # the preemption flags ride along (> 0: some rank received a signal), read with the rest a step later.
        local = torch.stack([loss_sum / accum, torch.full((), float(self._signal_received()), device=self.device)])
        train_loss, stop_flag = self.trainer.strategy.reduce(local, reduce_op="mean").unbind()

        clip = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else math.inf
        grad_norm = parallel.clip_grad_norm(self.model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

        now = time.perf_counter()
        dt = now - self._last_step_end if self._last_step_end is not None else math.nan
        stats = torch.stack([train_loss.float(), grad_norm.to(train_loss.device).float(),
                             micro_sq.to(train_loss.device).float(), stop_flag.float()])
        self._record_previous(in_step=True)  # the one host read of a steady-state step
        self._lagged.push(stats, _StepRecord(p, accum, dt))
        step = p.step + 1
        if step % self.val_every_steps == 0 or step == len(self.plan):
            self._record_previous(in_step=True, validate=True)

    def _signal_received(self) -> bool:
        return any(isinstance(cb, preemption.Preemption) and cb.received is not None for cb in self.trainer.callbacks)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Lightning calls the callbacks' hooks (checkpointing, preemption) before this one: the next step's time
        # starts after them.
        self._last_step_end = time.perf_counter()

    def on_train_end(self) -> None:
        self._record_previous(in_step=False)

    def record_pending(self) -> None:
        """Record the step whose statistics are still on the device (a run stopped by a callback)."""
        self._record_previous(in_step=False)

    def _record_previous(self, in_step: bool, validate: bool = False) -> None:
        """Read the pending step's statistics, test divergence, update the noise scale and log its metrics."""
        popped = self._lagged.pop()
        if popped is None:
            return
        rec, (train_loss, grad_norm, micro_sq, stop_flag) = popped
        p, step = rec.plan, rec.plan.step + 1
        self.stop_requested = stop_flag > 0
        if not math.isfinite(train_loss) or train_loss > self.max_loss:
            raise DivergedError(f"train/loss={train_loss:.4g} at step {step} "
                                f"(ceiling trainer.max_loss={self.max_loss})")
        tokens_step = p.sequences * self.acct.seq_len
        tokens = p.tokens_before + tokens_step
        metrics = {
            Metric.TRAIN_LOSS: train_loss,
            Metric.LR: p.lr,
            Metric.BATCH_TOKENS: float(tokens_step),
            Metric.TOKENS: float(tokens),
            Metric.MODEL_FLOPS: self.acct.model_flops_per_token * tokens,
            Metric.GRAD_NORM: grad_norm,
        }
        if math.isfinite(rec.seconds) and rec.seconds > 0:
            metrics.update(throughput(tokens_step, rec.seconds, self.acct.model_flops_per_token,
                                      self.acct.peak_flops).metrics())
        if rec.accum > 1:
            # Tokens behind the first micro-batch's gradient (module docstring): all ranks' under FSDP.
            ranks = self.trainer.world_size if self.parallelism.sharded else 1
            b_micro = self.micro_batch * self.acct.seq_len * ranks
            b_simple = self.noise.update(micro_sq, b_micro, grad_norm**2, tokens_step)
            logged = step % LOG_EVERY_STEPS == 0 or step == len(self.plan)  # measured every step, logged sparser
            if logged and b_simple is not None and math.isfinite(b_simple):
                metrics[Metric.B_SIMPLE] = b_simple
        if validate:
            metrics.update(self.validate_now(log=in_step))
            metrics[Metric.PEAK_MEMORY_MB] = peak_memory_bytes(self.device) / 2**20
            self.last_val_tokens = tokens
        # Progress-bar values only when a bar shows them: self.log copies each value to the device (a sync on CUDA).
        if in_step and self.trainer.progress_bar_callback is not None:
            self.log("loss", train_loss, prog_bar=True, logger=False)
            if Metric.TOKENS_PER_S in metrics:
                self.log("tok/s", metrics[Metric.TOKENS_PER_S], prog_bar=True, logger=False)
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=step)

    @torch.no_grad()
    def validate_now(self, log: bool = True) -> dict[str, float]:
        """Mean loss on the fixed held-out sequences, in nats/token (and bits/byte for byte-level data)."""
        was_training = self.model.training
        self.model.eval()
        x, y = self.val_x.to(self.device), self.val_y.to(self.device)
        losses = [self._loss(x[i:i + self.micro_batch], y[i:i + self.micro_batch]) * len(x[i:i + self.micro_batch])
                  for i in range(0, len(x), self.micro_batch)]
        self.model.train(was_training)
        val = float(torch.stack(losses).sum() / len(x))
        if self.trainer.world_size > 1:
            val = self.trainer.strategy.broadcast(val, src=0)  # equal on every rank already; now bit-for-bit
        self.last_val_loss = val
        out = {Metric.VAL_LOSS: val}
        if self.acct.bytes_per_token:
            out[Metric.VAL_BPB] = val / math.log(2) / self.acct.bytes_per_token
        if log and self.trainer.progress_bar_callback is not None:
            self.log("val", val, prog_bar=True, logger=False)
        return out

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Every metric up to this step must be in the store or in the checkpoint: a resume starts here and skips
        # the steps already recorded, so each step lands exactly once. The pending step's statistics are read and
        # logged first (they belong to the checkpointed state); Lightning calls the callbacks' hooks before this
        # one, so the unsent rows PendingMetrics put into the checkpoint are taken again to include that step.
        # A logger without PendingMetrics waits for the store in flush().
        self._record_previous(in_step=False)
        if self.logger is not None and hasattr(self.logger, "flush"):
            self.logger.flush()
        if PENDING_KEY in checkpoint and hasattr(self.logger, "pending_rows"):
            checkpoint[PENDING_KEY] = self.logger.pending_rows()
        checkpoint["lab"] = {"noise": self.noise.state_dict(), "last_val_loss": self.last_val_loss}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lab", {})
        if "noise" in state:
            self.noise.load_state_dict(state["noise"])
        self.last_val_loss = state.get("last_val_loss", math.nan)
