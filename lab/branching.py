"""Branch points and branches: the training side of the critical-batch-size protocol (Merrill et al. 2025).

A *reference* run keeps a checkpoint at chosen token counts (``trainer.checkpoint_at_tokens=[T, ...]``):
``tokens-<T>.ckpt`` in its checkpoint directory, never overwritten by later steps, and beside it
``tokens-<T>.json``, the record of what it is (reference run id and name, the step, its batch, the model shape, the
LR schedule). The record is written after the checkpoint, so its presence means the checkpoint is complete.

A *branch* (``init.checkpoint=.../tokens-<T>.ckpt init.tokens=T init.window_tokens=W batch.sequences=b``) starts
from such a checkpoint and trains W tokens at batch b:

- weights, optimizer state (Adam moments and step counts) and noise-scale averages are loaded with
  ``weights_only=True``, once the optimizer exists (``on_fit_start``); a branch that is itself resumed restores
  its own last.ckpt instead;
- data: the branch reads the reference's sequence stream from sequence T/seq_len on (same seed), so every branch
  of a checkpoint sees the same tokens in the same order whatever its batch, and the branch at the reference's
  own batch repeats the reference's steps exactly;
- lr: the reference's schedule at the same tokens (schedules are functions of tokens), times
  ``lr_batch_factor(b, b_ref, init.lr_rescale)``;
- its MLflow run is tagged ``branch_of=<reference run id>`` and ``checkpoint_tokens=<T>`` (what ``lab-fit cbs``
  reads), its metric ``tokens`` counts from T, and its steps from 1.

Everything that can reject a branch (a missing checkpoint or record, a different model, seed, sequence length or LR
schedule, a window beyond the reference's D or not a whole number of steps) fails in :func:`branch_from`, before
anything is recorded.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import lightning as L
import torch

from lab.config import ConfigError, TrainConfig
from lab.schedules import LRSchedule, PlanStep, lr_batch_factor, lr_multiplier
from tracking.record import Checkpoint, Param, Tag

if TYPE_CHECKING:
    from lab.model import GPTConfig


def checkpoint_path(ckpt_dir: Path, tokens: int) -> Path:
    """``<run checkpoint dir>/tokens-<T>.ckpt``; its record is the same path with suffix ``.json``."""
    return ckpt_dir / Checkpoint.branch_point(tokens)


def _step_ends(plan: Sequence[PlanStep], seq_len: int) -> list[int]:
    return [p.tokens_before + p.sequences * seq_len for p in plan]


def _nearest(ends: Sequence[int], t: float) -> str:
    below = [e for e in ends if e <= t][-1:]
    above = [e for e in ends if e > t][:1]
    return " or ".join(str(e) for e in below + above)


def check_branch_points(points: Sequence[float], plan: Sequence[PlanStep], seq_len: int) -> list[int]:
    """The token counts of ``trainer.checkpoint_at_tokens`` as ints, each the end of a step before the last."""
    if not points:
        return []
    ends = _step_ends(plan, seq_len)
    at = set(ends[:-1])
    for t in points:
        if t >= ends[-1]:
            raise ConfigError("trainer.checkpoint_at_tokens", t, f"the run ends at D={ends[-1]} tokens; keep "
                              "checkpoints before it (a branch needs tokens left to train)")
        if t not in at:
            raise ConfigError("trainer.checkpoint_at_tokens", t, f"no step ends at {t:g} tokens (steps end every "
                              f"{plan[0].sequences * seq_len} tokens at the start); use {_nearest(ends, t)}")
    return [int(t) for t in points]


class BranchPoints(L.Callback):
    """Keeps ``tokens-<T>.ckpt`` and its record when a step ends at T tokens (rank 0 writes the record)."""

    def __init__(self, ckpt_dir: Path, points: Sequence[int], record: dict[str, Any]):
        self.ckpt_dir = ckpt_dir
        self.points = set(points)
        self.record = record

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        p = pl_module.plan[int(batch["step"])]
        tokens = p.tokens_before + p.sequences * self.record["seq_len"]
        if tokens not in self.points:
            return
        path = checkpoint_path(self.ckpt_dir, tokens)
        trainer.save_checkpoint(path, weights_only=False)  # every rank: a sharded checkpoint is collective
        if trainer.global_rank == 0:
            record = {**self.record, "tokens": tokens, "step": p.step + 1, "sequences": p.sequences,
                      "checkpoint": path.name}
            partial = path.with_name(f".{path.stem}.json.partial")
            partial.write_text(json.dumps(record, indent=1))
            os.replace(partial, path.with_suffix(".json"))  # last: a record means a complete checkpoint


def reference_record(cfg: TrainConfig, gpt_cfg: GPTConfig, N: int, lr_schedule: LRSchedule) -> dict[str, Any]:
    """What a branch must share with its reference, written beside each branch-point checkpoint."""
    return {"seed": cfg.seed, "seq_len": cfg.model.seq_len, "N": N, "model": dataclasses.asdict(gpt_cfg),
            "peak_lr": cfg.optim.lr, "lr_schedule": dataclasses.asdict(lr_schedule),
            "experiment": cfg.tracking.experiment}


@dataclass(frozen=True)
class Branch:
    """A validated branch: where it starts, what it trains and how its lr relates to the reference's."""

    checkpoint: Path
    reference_run_id: str
    reference_run_name: str
    tokens: int
    """T: tokens seen at the checkpoint."""
    window: int
    """W: tokens this branch trains."""
    reference_sequences: int
    """b_ref: the reference's batch at the checkpoint [sequences]."""
    sequences: int
    rule: str
    lr_factor: float
    plan: tuple[PlanStep, ...]

    def tags(self) -> dict[str, str]:
        return {Tag.BRANCH_OF: self.reference_run_id, Tag.CHECKPOINT_TOKENS: str(self.tokens)}

    def params(self, seq_len: int) -> dict[str, Any]:
        return {"branch.window_tokens": self.window, "branch.lr_rescale": self.rule,
                "branch.lr_factor": self.lr_factor, Param.BRANCH_B_REF: self.reference_sequences * seq_len,
                "branch.reference_run": self.reference_run_name}

    def default_name(self, seq_len: int, identity: str) -> str:
        """``<reference run name>-T<T>-B<b·seq_len>-W<W>-<identity>``: deterministic, so a sweep finds it again."""
        return f"{self.reference_run_name}-T{self.tokens}-B{self.sequences * seq_len}-W{self.window}-{identity}"


def _fail(field: str, value: Any, fix: str) -> None:
    raise ConfigError(field, value, fix)


def _read_record(path: Path) -> dict[str, Any]:
    record_path = path.with_suffix(".json")
    if path.is_dir():
        _fail("init.checkpoint", str(path), "it is a sharded (FSDP) checkpoint; branches start from single-file "
              "checkpoints: train the reference with trainer=cpu/gpu/ddp")
    if not path.is_file():
        _fail("init.checkpoint", str(path), "no such checkpoint; train the reference run with "
              "trainer.checkpoint_at_tokens=[T, ...] first (lab-sweep sweep=cbs runs it before its branches), "
              "and give the path of its tokens-<T>.ckpt")
    if not record_path.is_file():
        _fail("init.checkpoint", str(path), f"{record_path.name} is missing beside it, so it is not a complete "
              "branch point of trainer.checkpoint_at_tokens; re-run the reference to write it")
    return json.loads(record_path.read_text())


def branch_from(cfg: TrainConfig, gpt_cfg: GPTConfig, N: int, lr_schedule: LRSchedule) -> Branch:
    """Check ``cfg.init`` against the checkpoint's record and plan the branch's steps; raises ConfigError."""
    init, seq_len, b = cfg.init, cfg.model.seq_len, cfg.batch.sequences
    assert init.checkpoint is not None and init.tokens is not None and init.window_tokens is not None
    if cfg.trainer.strategy == "fsdp":
        _fail("trainer.strategy", "fsdp", "branches load whole (unsharded) weights: use trainer=cpu/gpu/ddp")
    path = Path(init.checkpoint)
    rec = _read_record(path)
    T, W = int(rec["tokens"]), int(init.window_tokens)
    if init.tokens != T:
        _fail("init.tokens", init.tokens, f"the checkpoint {path.name} was taken at {T} tokens; use init.tokens={T}")
    if W != init.window_tokens or W % (b * seq_len):
        step = b * seq_len
        _fail("init.window_tokens", init.window_tokens, f"the window must be a whole number of steps of "
              f"{step} tokens (batch.sequences={b} x model.seq_len={seq_len}); use {max(W // step, 1) * step}")
    same = {"seed": (cfg.seed, rec["seed"]), "optim.lr": (cfg.optim.lr, rec["peak_lr"])}
    model = json.loads(json.dumps(dataclasses.asdict(gpt_cfg)))  # as the record holds it (tuples become lists)
    same.update({f"model.{k}": (model.get(k), v) for k, v in rec["model"].items()})
    mine = json.loads(json.dumps(dataclasses.asdict(lr_schedule)))  # as the record stores it: tuples as lists
    for k, v in rec["lr_schedule"].items():
        if k != "power_batch":  # the power scheduler's β is the run's first batch: the branch keeps the reference's
            same[f"LR schedule {k}"] = (mine[k], v)
    for name, (got, want) in same.items():
        if got != want:
            _fail(name, got, f"the reference of {path.name} has {want}; a branch must train the reference's model "
                  "on its data stream and LR schedule: give it the reference's overrides (budget.*, optim.*, "
                  "model.*, seed) and change only batch.sequences and init.*")
    D_ref = rec["lr_schedule"]["total_tokens"]
    if T + W > D_ref:
        _fail("init.window_tokens", W, f"T + W = {T + W} tokens goes beyond the reference's D = {D_ref:g} (its LR "
              f"schedule ends there); use at most {int(D_ref) - T}")
    ref_schedule = LRSchedule(**rec["lr_schedule"])
    factor = lr_batch_factor(b, rec["sequences"], init.lr_rescale)
    plan, tokens = [], T
    while tokens < T + W:
        after = tokens + b * seq_len
        plan.append(PlanStep(len(plan), tokens, b, cfg.optim.lr * lr_multiplier(after, ref_schedule) * factor))
        tokens = after
    return Branch(path, rec["run_id"], rec["run_name"], T, W, int(rec["sequences"]), b, init.lr_rescale, factor,
                  tuple(plan))


class BranchInit(L.Callback):
    """Loads the branch point into a fresh run once the optimizer exists (Lightning's on_fit_start)."""

    def __init__(self, checkpoint: Path):
        self.checkpoint = checkpoint

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        ckpt = torch.load(self.checkpoint, map_location=pl_module.device, weights_only=True)
        pl_module.load_state_dict(ckpt["state_dict"])
        trainer.optimizers[0].load_state_dict(ckpt["optimizer_states"][0])
        pl_module.on_load_checkpoint(ckpt)  # noise-scale averages, last validation loss


def callbacks(cfg: TrainConfig, gpt_cfg: GPTConfig, N: int, lr_schedule: Optional[LRSchedule],
              plan: list[PlanStep], run_name: str, ckpt_dir: Path, branch: Optional[Branch], resumed: bool,
              run_id: str) -> list[L.Callback]:
    """The callbacks of a run's branch points (a reference) and of its start from one (a branch, unless resumed)."""
    out: list[L.Callback] = []
    points = cfg.trainer.checkpoint_at_tokens
    if points:
        assert lr_schedule is not None
        record = {**reference_record(cfg, gpt_cfg, N, lr_schedule), "run_id": run_id, "run_name": run_name}
        out.append(BranchPoints(ckpt_dir, check_branch_points(points, plan, cfg.model.seq_len), record))
    if branch is not None and not resumed:
        out.append(BranchInit(branch.checkpoint))
    return out
