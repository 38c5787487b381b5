"""One training run from a validated config: size the model, plan the steps, train, record, summarise.

Everything that can reject a config (sizes, budgets, schedules, data files, a missing checkpoint to resume) runs
before the MLflow run is created, so a rejected config leaves nothing half-recorded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from lab import branching, flops, identity, lineage, parallel, preemption
from lab.config import ConfigError, TrainConfig
from lab.datamodule import TokenData
from lab.model import GPT, GPTConfig, gpt_config
from lab.module import Accounting, DivergedError, LitGPT
from lab.progress import StepProgressBar
from lab.schedules import BatchSchedule, LRSchedule, PlanStep, describe_plan, plan as schedule_plan, read_lr_table
from lab.logger import PendingMetrics, RunLogger
from tracking import runs as tracked
from tracking.record import Artifact, Checkpoint, FailureKind, Param, Tag, compute
from tracking.store import ensure_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_name: str
    status: str
    """FINISHED or FAILED (MLflow's run status)."""
    reason: Optional[str]
    N: int
    """Non-embedding parameters (Kaplan)."""
    N_total: int
    D: int
    """Tokens trained on."""
    C: float
    """6·N·D FLOPs."""
    B_tokens: int
    final_val_loss: float


def model_config(cfg: TrainConfig) -> GPTConfig:
    return gpt_config(cfg.model)


def budget_tokens(cfg: TrainConfig, N: int) -> int:
    """D in tokens from whichever budget is set (C = 6·N·D when given in FLOPs)."""
    b = cfg.budget
    if b.tokens is not None:
        D = b.tokens
    elif b.flops is not None:
        D = flops.tokens_for_budget(b.flops, N)
    else:
        D = b.tokens_per_param * N
    tokens_per_step = cfg.batch.sequences * cfg.model.seq_len
    if D < tokens_per_step:
        raise ConfigError("budget", D, f"the budget is {D:.3g} tokens, less than one step of "
                          f"{tokens_per_step} tokens (batch.sequences x model.seq_len); raise it")
    return int(D)


def lr_schedule(cfg: TrainConfig, D: int) -> LRSchedule:
    o, b = cfg.optim, cfg.batch
    warmup = o.warmup_tokens if o.warmup_tokens is not None else o.warmup_fraction * D
    start = b.start_sequences if b.start_sequences is not None else b.sequences
    return LRSchedule(name=o.schedule, warmup_tokens=warmup, total_tokens=D, min_lr_ratio=o.min_lr_ratio,
                      decay_fraction=o.decay_fraction, decay_shape=o.decay_shape,
                      power_batch=start, power_lr_max=o.lr,
                      table=read_lr_table(o.table) if o.schedule == "table" else ())


def step_plan(cfg: TrainConfig, D: int) -> list[PlanStep]:
    o, b = cfg.optim, cfg.batch
    start = b.start_sequences if b.start_sequences is not None else b.sequences
    lr_s = lr_schedule(cfg, D)
    batch_s = BatchSchedule(name=b.schedule, sequences=b.sequences, start_sequences=start,
                            ramp_tokens=b.ramp_tokens or 0,
                            milestones=tuple((int(t), int(s)) for t, s in b.milestones),
                            granularity=b.micro_batch * cfg.world_size)
    return schedule_plan(lr_s, batch_s, D, cfg.model.seq_len, o.lr, b.lr_rescale)


def peak_flops(cfg: TrainConfig) -> float:
    """The MFU denominator: one device's peak FLOP/s (looked up by name unless configured) times devices."""
    on_gpu = cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available()
    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    return flops.peak_flops_for(device, cfg.trainer.peak_flops) * cfg.world_size


def checkpoint_dir(cfg: TrainConfig, run_name: str) -> Path:
    return Checkpoint.run_dir(cfg.checkpoint_dir, cfg.tracking.experiment, run_name)


def _resume_target(ckpt_dir: Path, cfg: TrainConfig) -> tuple[str, Path]:
    """The run id and ``last.ckpt``: a file (one device, DDP) or, under strategy=fsdp, a directory of shards."""
    strategy = cfg.trainer.strategy
    meta, last = ckpt_dir / Checkpoint.RUN_RECORD, ckpt_dir / Checkpoint.LAST
    if not meta.exists() or not last.exists():
        raise ConfigError("resume", True, f"no checkpoint to resume in {ckpt_dir} (need {meta.name} and {last.name}); "
                          "give the same tracking.run_name / tracking.experiment / checkpoint_dir as the first "
                          "launch, or drop resume=true to start a new run")
    if last.is_dir() and not (last / Checkpoint.SHARDED_META).exists():
        raise ConfigError("resume", True, f"the sharded checkpoint {last} has no {Checkpoint.SHARDED_META}, so it "
                          "was not completely written; delete it to restart the run, or restore an older copy")
    if last.is_dir() and strategy not in parallel.SHARDED:
        raise ConfigError("trainer.strategy", strategy, f"{last} is a sharded (FSDP) checkpoint directory; resume "
                          "it with trainer=fsdp")
    run = json.loads(meta.read_text())
    identity.check_resume_matches(run, cfg, ckpt_dir)
    return run["run_id"], last


@dataclass
class PreparedRun:
    """A run that passed every check: what remains can only fail by training."""

    cfg: TrainConfig
    gpt_cfg: GPTConfig
    N: int
    N_total: int
    D: int
    plan: list[PlanStep]
    data: TokenData
    run_name: str
    ckpt_dir: Path
    resume_run_id: Optional[str]
    resume_ckpt: Optional[Path]
    peak_flops: float
    lr_schedule: Optional[LRSchedule] = None
    branch: Optional[branching.Branch] = None
    """Set when the run starts from a reference's checkpoint (init.checkpoint): a critical-batch-size branch."""


def prepare(cfg: TrainConfig) -> PreparedRun:
    """Size, budget, schedules, data and resume target; raises a ValueError naming the problem and the fix."""
    gpt_cfg = model_config(cfg)
    N, N_total = flops.non_embedding_params(gpt_cfg), flops.total_params(gpt_cfg)
    D_budget = budget_tokens(cfg, N)
    lr_s = lr_schedule(cfg, D_budget)
    branch = branching.branch_from(cfg, gpt_cfg, N, lr_s) if cfg.init.checkpoint else None
    plan = list(branch.plan) if branch else step_plan(cfg, D_budget)
    branching.check_branch_points(cfg.trainer.checkpoint_at_tokens, plan, cfg.model.seq_len)
    D = plan[-1].tokens_before + plan[-1].sequences * cfg.model.seq_len
    data = TokenData(cfg.data, seq_len=cfg.model.seq_len, seed=cfg.seed, plan=plan,
                     micro_batch=cfg.batch.micro_batch)
    data.prepare()  # builds or opens the corpus; bad token files fail here
    run_name = cfg.tracking.run_name or (branch.default_name(cfg.model.seq_len, identity.run_identity(cfg))
                                         if branch else identity.default_run_name(N, D, cfg))
    ckpt_dir = checkpoint_dir(cfg, run_name)
    if not cfg.resume:
        identity.check_fresh_launch(ckpt_dir, cfg)
    run_id, ckpt_path = _resume_target(ckpt_dir, cfg) if cfg.resume else (None, None)
    return PreparedRun(cfg, gpt_cfg, N, N_total, D, plan, data, run_name, ckpt_dir, run_id, ckpt_path,
                       peak_flops(cfg), lr_s, branch)


def train(cfg: TrainConfig, callbacks: Sequence[L.Callback] = ()) -> RunResult:
    return execute(prepare(cfg), callbacks)


def execute(p: PreparedRun, callbacks: Sequence[L.Callback] = ()) -> RunResult:
    """Train a prepared run; ``callbacks`` are extra Lightning callbacks (e.g. an Optuna pruner)."""
    cfg, gpt_cfg, N, N_total, D, plan, data = p.cfg, p.gpt_cfg, p.N, p.N_total, p.D, p.plan, p.data
    run_name, ckpt_dir, run_id, ckpt_path = p.run_name, p.ckpt_dir, p.resume_run_id, p.resume_ckpt
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    ensure_store(cfg.tracking.uri)
    logger = RunLogger(experiment_name=cfg.tracking.experiment, run_name=run_name, tracking_uri=cfg.tracking.uri,
                       tags={**tracked.source_tags(Path(__file__).parent), **cfg.tracking.tags,
                             **(p.branch.tags() if p.branch else {}), Tag.IDENTITY: identity.run_identity(cfg),
                             **({Tag.PARENT_RUN: cfg.tracking.parent_run_id} if cfg.tracking.parent_run_id else {})},
                       run_id=run_id)
    parallelism = parallel.from_config(cfg.trainer, steps=len(plan))
    if run_id is None:
        B_tokens = cfg.batch.sequences * cfg.model.seq_len
        logger.log_hyperparams({**identity.flat_params(cfg), Param.N: N, Param.N_TOTAL: N_total,
                                Param.SEQ_LEN: cfg.model.seq_len, Param.B_TOKENS: B_tokens,
                                Param.B_SEQUENCES: cfg.batch.sequences, Param.D: D, Param.C: compute(N, D),
                                Param.STEPS: len(plan),
                                "flops_per_token": flops.flops_per_token(gpt_cfg), Param.PEAK_FLOPS: p.peak_flops,
                                **(p.branch.params(cfg.model.seq_len) if p.branch else {}),
                                **parallel.describe(parallelism)})
        if parallel.rank() == 0:  # other ranks (relaunched by Lightning or srun) have no MLflow run of their own
            if cfg.optim.schedule == "table":  # the schedule itself, not only its path, goes on record
                logger.experiment.log_text(logger.run_id, Path(cfg.optim.table).read_text(), Artifact.LR_TABLE)
            identity.write_record(ckpt_dir, logger.run_id, run_name, cfg)
            log_plan(logger, plan, cfg)
            lineage.record_data(logger.experiment, logger.run_id, data.lineage)
    elif parallel.rank() == 0:
        logger._skip_through = tracked.recorded_steps(logger.experiment, run_id)
        tracked.reopen_run(logger.experiment, run_id, cfg.tracking.tags)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = LitGPT(
        GPT(gpt_cfg), cfg.optim, plan,
        Accounting(seq_len=cfg.model.seq_len, flops_per_token=flops.flops_per_token(gpt_cfg),
                   peak_flops=p.peak_flops, bytes_per_token=data.bytes_per_token),
        val_data=data.validation(), val_every_steps=cfg.trainer.val_every_steps, max_loss=cfg.trainer.max_loss,
        micro_batch=cfg.batch.micro_batch, parallelism=parallelism, loss_chunk=cfg.trainer.fused_ce_chunk)
    t = cfg.trainer
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=parallel.lightning_strategy(t),
        precision=t.precision, deterministic=t.deterministic, max_steps=len(plan), max_epochs=1,
        logger=logger, enable_progress_bar=t.progress_bar, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, log_every_n_steps=1,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=t.checkpoint_every_steps,
                                   save_last=True, save_top_k=0, save_on_train_epoch_end=False),
                   PendingMetrics(logger),  # checkpoints carry unsent metrics instead of waiting for the store
                   *([StepProgressBar(len(plan))] if t.progress_bar else []), *branching.callbacks(
                       cfg, gpt_cfg, N, p.lr_schedule, plan, run_name, ckpt_dir, p.branch, ckpt_path is not None,
                       logger.run_id),
                   *callbacks, preemption.Preemption(ckpt_dir)])  # last: a pruner reports before a preemption stop
    status, reason = "FINISHED", None
    monitored = logger.run_id if parallel.rank() == 0 else None
    try:
        with tracked.system_metrics(monitored, cfg.tracking.uri, cfg.tracking.system_metrics_s):
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except DivergedError as err:
        status, reason = "FAILED", str(err)
        logger.set_tags({Tag.STATUS_REASON: reason, Tag.STATUS_KIND: FailureKind.DIVERGED})
    except preemption.STOPS:
        raise  # stopped on purpose (pruned, preempted): preemption.Preemption ended the run KILLED with its reason
    except BaseException as err:
        # Lightning has already ended the MLflow run as FAILED; record why, then let the error surface.
        logger.set_tags({Tag.STATUS_REASON: f"{type(err).__name__}: {err}"[:tracked.REASON_LIMIT],
                         Tag.STATUS_KIND: FailureKind.ERROR})
        raise
    parallel.finish_distributed()
    final = module.last_val_loss
    result = RunResult(run_id=logger.run_id, run_name=run_name, status=status, reason=reason, N=N, N_total=N_total,
                       D=D, C=compute(N, D), B_tokens=cfg.batch.sequences * cfg.model.seq_len,
                       final_val_loss=final)
    logger.log_summary({**dataclasses.asdict(result), "final_val_loss": final},
                       OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return result


def log_plan(logger: RunLogger, plan: list[PlanStep], cfg: TrainConfig) -> None:
    """A batch-size schedule rescales the LR at each batch change by an explicit rule: say so in the log and keep it
    as an artifact (style guide, habit 3). Constant-batch runs have nothing to say."""
    lines = describe_plan(plan, cfg.model.seq_len, cfg.batch.lr_rescale)
    if len(lines) > 1:
        for line in lines:
            log.info("%s", line)
        logger.log_texts({Artifact.PLAN: "\n".join(lines) + "\n"})


def quiet_lightning() -> None:
    """Lightning's tips about workers and tensor cores are noise on a CPU laptop run."""
    import logging
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # Our checkpoints are taken after the step on purpose: a resume continues with the next step.
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
    # A sharded last.ckpt directory is overwritten on purpose at every checkpoint (as the single-file one is).
    warnings.filterwarnings("ignore", message=".*Detected an existing checkpoint in.*")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(".cache/torchinductor").resolve()))
