"""The record's vocabulary: every name lab writes into MLflow and onto disk, which sweeps, analysis and app read.

Defined once, here, and imported everywhere; ``tests/test_vocabulary.py`` fails when one of these values is written
as a literal anywhere else. Torch-free and MLflow-free: the dashboard and the fitting code import it for nothing.

Symbols (design §4): N non-embedding parameters (Kaplan), N_total all parameters (Chinchilla), D tokens seen,
B global batch in tokens, lr peak learning rate, L loss in nats/token. Two FLOP counts, never mixed:

- **C**, the compute of the laws: C = 6·N·D (Kaplan et al. 2020, §2.1; Chinchilla's convention), in every param,
  summary, frame column, design budget and axis label. ``compute(N, D)`` is the one definition.
- **model FLOPs**, the throughput figure: per token 6·(N + the output head's d·V) + 12·n_layers·d·T (PaLM appendix
  B, nanoGPT's ``estimate_mfu``), attention and head included. Recorded as the param ``model_flops_per_token`` and
  the metric ``model_flops`` (cumulative); MFU divides its rate by the device's peak. Not a C.

Stores written before this vocabulary kept a ``flops`` metric of 6·N + 6·n_layers·T·d per token (attention
halved, no head): ``Metric.LEGACY_FLOPS``, read by nothing as C.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

SYMBOLS: Final = ("N", "N_total", "D", "C", "B", "lr", "loss", "tokens", "step", "run_id", "E", "L", "S")
"""Columns of the tidy frames (design §4): the analysis API, written as these words everywhere. Where a metric key
is also a symbol (``lr``, ``tokens``) the word may stand as it is; every other name below is imported."""


def compute(N: float, D: float) -> float:
    """C = 6·N·D FLOPs, N non-embedding: forward 2N per token, backward twice that (Kaplan et al. 2020, §2.1)."""
    return 6.0 * N * D


def tokens_for_compute(C: float, N: float) -> float:
    """D = C / (6·N): the tokens that spend compute C on a model of N non-embedding parameters."""
    return C / (6.0 * N)


class Metric:
    """MLflow metric keys; ``step`` is always the optimizer step (design §5)."""

    TRAIN_LOSS: Final = "train/loss"
    VAL_LOSS: Final = "val/loss"
    VAL_BPB: Final = "val/bpb"
    LR: Final = "lr"
    """The learning rate the step used (the schedule times any batch-size rescaling)."""
    BATCH_TOKENS: Final = "batch_tokens"
    TOKENS: Final = "tokens"
    """Tokens seen after the step: D so far."""
    MODEL_FLOPS: Final = "model_flops"
    """Cumulative model FLOPs (module docstring): not C."""
    TOKENS_PER_S: Final = "throughput/tokens_per_s"
    FLOPS_PER_S: Final = "throughput/flops_per_s"
    MFU: Final = "mfu"
    PEAK_MEMORY_MB: Final = "throughput/peak_memory_mb"
    B_SIMPLE: Final = "noise/b_simple"
    GRAD_NORM: Final = "grad_norm"
    LEGACY_FLOPS: Final = "flops"
    """Written by stores before this vocabulary (module docstring); kept so old stores are recognised."""
    FORECAST_PREFIX: Final = "forecast/"
    """A forecast run's predicted quantities: ``forecast/<quantity>``, ``..._lo``, ``..._hi`` (95% interval)."""
    REALISED_PREFIX: Final = "realised/"
    FORECAST_ERROR_PREFIX: Final = "forecast_error/"
    """A checked forecast: the landed run's value and realised / forecast − 1 per quantity."""


class Param:
    """MLflow params beyond the flattened config (whose keys are the config's dotted paths)."""

    N: Final = "N"
    N_TOTAL: Final = "N_total"
    D: Final = "D"
    C: Final = "C"
    SEQ_LEN: Final = "seq_len"
    B_TOKENS: Final = "B_tokens"
    B_SEQUENCES: Final = "B_sequences"
    STEPS: Final = "steps"
    MODEL_FLOPS_PER_TOKEN: Final = "model_flops_per_token"
    PEAK_FLOPS: Final = "peak_flops"
    """MFU's denominator: peak FLOP/s of all devices for the dtype computed in (absent: no MFU recorded)."""
    LR: Final = "optim.lr"
    """The configured peak lr, for the batch the run starts with."""
    LR_PEAK_USED: Final = "lr_peak_used"
    """The highest lr any step used, after batch-size rescaling (batch.lr_rescale)."""
    BRANCH_B_REF: Final = "branch.B_ref_tokens"
    """A CBS branch: its reference run's batch in tokens."""
    DATA_DIGEST: Final = "data.digest"
    """The training data's identity (lab.lineage): a lab-data manifest's digest or the built-in corpus fingerprint."""
    DATA_NAME: Final = "data.name"
    TOKENIZER_DIGEST: Final = "data.tokenizer_digest"
    """sha256 of what defines the data's tokenizer: runs of one law should share it (analysis.lineage)."""


class Tag:
    """MLflow tags lab, sweeps and analysis write and read."""

    # --- identity and lineage
    RUN_NAME: Final = "mlflow.runName"
    PARENT_RUN: Final = "mlflow.parentRunId"
    IDENTITY: Final = "run_identity"
    """Digest of every setting that changes the run's trajectory (lab.identity)."""
    GIT_COMMIT: Final = "git_commit"
    GIT_DIRTY: Final = "git_dirty"
    SOURCE_COMMIT: Final = "mlflow.source.git.commit"
    SOURCE_REPO: Final = "mlflow.source.git.repoURL"
    # --- how a run ended
    STATUS_REASON: Final = "status_reason"
    STATUS_KIND: Final = "status_kind"
    """A FailureKind: machine-readable, unlike the reason's text."""
    RESUMES: Final = "resumes"
    RESUMED_AFTER: Final = "resumed_after"
    # --- sweeps: the runs (children) and their parent
    SWEEP: Final = "sweep"
    DESIGN: Final = "design"
    SWEEP_PARENT: Final = "sweep_parent"
    SWEEP_DESIGN: Final = "sweep_design"
    SWEEP_RUNS: Final = "sweep_runs"
    SWEEP_STATUS: Final = "sweep_status"
    SWEEP_COUNT_PREFIX: Final = "sweep_"
    """Prefix of the parent's outcome counts (sweep_finished, sweep_failed, ...)."""
    BUDGET: Final = "budget"
    """IsoFLOP runs: the profile's C."""
    POINT: Final = "point"
    """lr x B and CBS runs: the (N, D) cell, ``N…-D…``."""
    TOKENS_PER_PARAM: Final = "tokens_per_param"
    ROLE: Final = "role"
    REFERENCE: Final = "reference"
    SEED: Final = "seed"
    RESOURCES: Final = "resources"
    SCHEDULE_NAME: Final = "schedule_name"
    """Schedule-study runs (design schedule_study): the name of the run's LR schedule variant, e.g. cosine, step."""
    # --- critical-batch-size branches
    BRANCH_OF: Final = "branch_of"
    CHECKPOINT_TOKENS: Final = "checkpoint_tokens"
    # --- Optuna studies
    OPTUNA_STUDY: Final = "optuna_study"
    OPTUNA_TRIAL: Final = "optuna_trial"
    OPTUNA_ROLE: Final = "optuna_role"
    OPTUNA_STORAGE: Final = "optuna_storage"
    OPTUNA_RETRY_OF: Final = "optuna_retry_of"
    # --- forecasts recorded before the run they forecast (tracking.forecasts, lab-fit forecast)
    FORECAST: Final = "forecast_law"
    """Marks a forecast run (not a training run); its value is the law: loss, isoflop or hparams."""
    FORECAST_TARGET: Final = "forecast_target"
    """The target, e.g. ``N=1e+08,D=1e+10`` or ``C=1e+20``."""
    FORECAST_RUNS_DIGEST: Final = "forecast_runs_digest"
    """sha256 of the sorted run ids (and their fitted values) the forecast was fitted on."""
    FORECAST_CHECKED_RUN: Final = "forecast_checked_run"
    """The landed run a forecast was checked against."""
    FORECAST_ERROR: Final = "forecast_error"
    """Realised / forecast − 1 per quantity, as JSON, once checked."""


class SweepStatus:
    """Values of Tag.SWEEP_STATUS on a sweep's parent run."""

    RUNNING: Final = "running"
    COMPLETE: Final = "complete"
    PARTIAL: Final = "partial"
    INTERRUPTED: Final = "interrupted"


class Role:
    """Values of Tag.ROLE and Tag.OPTUNA_ROLE."""

    REFERENCE: Final = "reference"
    BRANCH: Final = "branch"
    PARENT: Final = "parent"
    BATCH_WARMUP: Final = "batch_warmup"
    """A warmup check's run with the proposed stepwise batch warmup (sweeps.warmup_check)."""
    CONSTANT_FINAL: Final = "constant_final"
    """A warmup check's run at a constant batch, the warmup's final one (lr by the same rescale rule)."""
    CONSTANT_START: Final = "constant_start"
    """A warmup check's run at a constant batch, the warmup's first one: the baseline its steps are saved against."""
    FIT: Final = "fit"
    """A schedule study's run that a schedule law is fitted to (sweeps.schedule_study)."""
    HELD_OUT: Final = "held_out"
    """A schedule study's run kept out of the fit: the law predicts it, and its realised curve checks the law."""


class Design:
    """Values of Tag.DESIGN: the sweep designs of sweeps.designs."""

    GRID: Final = "grid"
    ISOFLOP: Final = "isoflop"
    LR_BATCH: Final = "lr_batch"
    CBS: Final = "cbs"
    WARMUP_CHECK: Final = "warmup_check"
    SCHEDULES: Final = "schedule_study"


class FailureKind:
    """Values of Tag.STATUS_KIND: why a run did not finish (its Tag.STATUS_REASON says it in words)."""

    DIVERGED: Final = "diverged"
    """NaN/inf loss or above trainer.max_loss: FAILED; never resumed into its divergence."""
    PREEMPTED: Final = "preempted"
    """A signal (SLURM): KILLED after a checkpoint at that step; resumable."""
    PRUNED: Final = "pruned"
    """Stopped by a pruner (Optuna): KILLED."""
    INTERRUPTED: Final = "interrupted"
    """Found RUNNING without a live process by a later sweep: KILLED."""
    ERROR: Final = "error"
    """The run raised: FAILED."""


class Artifact:
    """Artifact file names."""

    SUMMARY: Final = "summary.json"
    CONFIG: Final = "config.yaml"
    DESIGN: Final = "design.json"
    LAW: Final = "law.json"
    PLAN: Final = "plan.txt"
    """The step plan's batch changes and the LR factor each applies (schedules.describe_plan)."""
    FORECAST: Final = "forecast.json"
    """A forecast run's payload: law, target, predictions with intervals, sensitivity, fitted run ids."""
    LR_TABLE: Final = "lr_table.csv"
    """A run with optim.schedule=table: the tabulated LR schedule it trained with (fraction, lr_multiplier)."""


class Checkpoint:
    """The checkpoint layout: ``<checkpoint_dir>/<experiment>/<run name>/`` holds these."""

    RUN_RECORD: Final = "run.json"
    """Which MLflow run the directory belongs to (run_id, run_name, identity, trajectory params)."""
    LAST: Final = "last.ckpt"
    """The latest periodic checkpoint: a file, or under FSDP a directory of shards."""
    SHARDED_META: Final = "meta.pt"
    """Written last into a sharded checkpoint directory: its presence means every shard is complete."""
    BRANCH_POINT_PREFIX: Final = "tokens-"

    @staticmethod
    def run_dir(checkpoint_dir: str | Path, experiment: str, run_name: str) -> Path:
        return Path(checkpoint_dir) / experiment / run_name

    @staticmethod
    def branch_point(tokens: float) -> str:
        """``tokens-<T>.ckpt``, kept at T tokens for CBS branches; its record is ``tokens-<T>.json``."""
        return f"{Checkpoint.BRANCH_POINT_PREFIX}{int(tokens)}.ckpt"
