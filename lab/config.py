"""Typed schemas of a training run, registered in Hydra's ConfigStore.

Every field carries its unit. Cross-field rules live in ``__post_init__`` so that a bad config fails when it is
turned into objects (``OmegaConf.to_object``), before any MLflow run or checkpoint exists. Derived quantities
(accumulation steps, tokens per step, D from a FLOP budget) are computed from these fields, never stored twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from lab.schedules import BATCH_SCHEDULES, DECAY_SHAPES, LR_SCHEDULES  # noqa: F401  (re-exported: one definition)
from lab.schedules import RESCALE_RULES as LR_RESCALE_RULES

STRATEGIES = ("auto", "ddp", "fsdp")
PRECISIONS = ("32-true", "bf16-mixed")
"""trainer.precision: fp32 master weights always; bf16-mixed computes matmuls in bf16 (lab.parallel.PrecisionPolicy)."""
"""One device | DDP | FSDP2 through Lightning's ModelParallelStrategy (lab.parallel)."""
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class ConfigError(ValueError):
    """A config value that cannot run; the message names the field, the value and the fix."""

    def __init__(self, field_name: str, value: Any = None, fix: Optional[str] = None):
        self.field_name = field_name
        self.value = value
        # OmegaConf re-raises errors from __post_init__ as type(err)(message): keep that message as it is.
        super().__init__(field_name if fix is None else f"config error: {field_name}={value!r}: {fix}")


def _require(ok: bool, field_name: str, value: Any, fix: str) -> None:
    if not ok:
        raise ConfigError(field_name, value, fix)


def _one_of(field_name: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, field_name, value, f"use one of {', '.join(allowed)}")


@dataclass
class ModelConfig:
    size: Optional[int] = 2
    """Size-ladder dial: n_layers = size, d_model = 32·size (see lab.model.size_ladder). Explicit
    d_model / n_layers / n_heads override it."""
    d_model: Optional[int] = None
    n_layers: Optional[int] = None
    n_heads: Optional[int] = None
    seq_len: int = 256
    """Context length in tokens."""
    vocab_size: int = 256
    """Token ids. Left at 256 it follows the data (256 bytes, data.vocab_size of a BPE, a lab-data manifest's); set
    it for token files without a manifest, or above the data's to pad. Below the data's it is refused."""
    mlp: str = "swiglu"
    tie_embeddings: bool = False
    mup: bool = False
    """muP width scaling so that the optimal lr transfers across width (Yang et al. 2022)."""
    mup_base_width: int = 64
    init_std: float = 0.02
    multiple_of: int = 8
    """SwiGLU hidden width rounded to a multiple of this (GPU presets: 256)."""
    vocab_multiple_of: int = 1
    """Embedding/head rows padded to a multiple of this (GPU presets: 128); padding is masked, N unchanged."""

    def __post_init__(self) -> None:
        explicit = (self.d_model, self.n_layers, self.n_heads)
        _require(
            self.size is not None or all(v is not None for v in explicit),
            "model.size",
            self.size,
            "set model.size=<ladder dial, e.g. 2> or all of model.d_model, model.n_layers, model.n_heads "
            "(with model.size=null)",
        )
        if self.size is not None:
            _require(self.size >= 1, "model.size", self.size, "the ladder dial starts at 1")
        _require(self.seq_len >= 2, "model.seq_len", self.seq_len, "use a context of at least 2 tokens")
        _one_of("model.mlp", self.mlp, ("swiglu", "gelu"))


DATA_TOKENIZERS = ("bytes", "bpe")
"""Tokenizers of the built-in corpus: its bytes, or a BPE trained on it once and cached (lab.data.subword)."""
BYTE_VOCAB = 256
"""model.vocab_size's default: the byte-level built-in corpus. Left at it, the vocabulary follows the data."""


@dataclass
class DataConfig:
    source: str = "builtin"
    """'builtin' (the Python standard library's source) or 'tokens' (token files or a lab-data manifest)."""
    manifest: Optional[str] = None
    """source=tokens: the manifest.json of `lab-data prepare`; gives the shards, the vocabulary and bytes per token."""
    train: Optional[str] = None
    """Token file or glob (nanoGPT .bin or llm.c shards) when source=tokens without a manifest."""
    val: Optional[str] = None
    cache_dir: str = ".cache/lab"
    """Where the built-in corpus is cached as token files (relative to the working directory)."""
    val_sequences: int = 32
    """Held-out sequences evaluated at every validation point (fixed across the run)."""
    max_bytes: Optional[int] = None
    """Cap on the built-in corpus size in bytes (None: the whole standard library)."""
    tokenizer: Optional[str] = None
    """source=builtin: 'bytes' (vocab 256; None means it too) or 'bpe' (a byte-level BPE of data.vocab_size ids trained
    on the corpus). Token files leave it unset: a manifest names its own tokenizer."""
    vocab_size: Optional[int] = None
    """The data's vocabulary in ids: set for tokenizer=bpe; read from data.manifest (leave it unset there)."""

    def __post_init__(self) -> None:
        _one_of("data.source", self.source, ("builtin", "tokens"))
        if self.source == "builtin":
            _one_of("data.tokenizer", self.tokenizer or "bytes", DATA_TOKENIZERS)
        else:
            _require(self.tokenizer is None, "data.tokenizer", self.tokenizer,
                     "data.tokenizer chooses the built-in corpus's tokenization; token files were tokenized by "
                     "lab-data (its manifest names the tokenizer): drop it")
        if self.source == "tokens" and self.manifest:
            from lab.data.manifest import read_manifest  # torch-free: a small JSON file

            try:
                manifest = read_manifest(self.manifest)
            except ValueError as err:
                raise ConfigError("data.manifest", self.manifest, str(err)) from err
            _require(self.vocab_size in (None, manifest.vocab_size), "data.vocab_size", self.vocab_size,
                     f"the manifest says {manifest.vocab_size}; leave data.vocab_size unset with a manifest")
            _require(not self.train and not self.val, "data.train", self.train,
                     "give data.manifest or data.train/data.val, not both")
            self.vocab_size = manifest.vocab_size  # only when converted to objects: the schema's default has no manifest
        elif self.source == "tokens":
            _require(bool(self.train), "data.train", self.train, "give a lab-data manifest (data.manifest="
                     "shards/manifest.json) or a token file or glob: data.train=path/*.bin")
            _require(bool(self.val), "data.val", self.val, "give a validation token file or glob: data.val=...")
        if self.source == "builtin" and self.tokenizer == "bpe":
            _require(self.vocab_size is not None and 258 <= self.vocab_size <= 65536, "data.vocab_size", self.vocab_size,
                     "data.tokenizer=bpe trains a BPE of that many ids: give 258..65536, e.g. data.vocab_size=1024")
        elif self.source == "builtin":
            _require(self.vocab_size in (None, BYTE_VOCAB), "data.vocab_size", self.vocab_size,
                     "the built-in corpus as bytes has 256 ids; for a subword vocabulary add data.tokenizer=bpe")
        _require(self.val_sequences >= 1, "data.val_sequences", self.val_sequences, "use at least 1")


@dataclass
class OptimConfig:
    lr: float = 3e-3
    """Peak learning rate, for the batch the run starts with (see batch.lr_rescale)."""
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    schedule: str = "cosine"
    warmup_fraction: float = 0.05
    """Warmup length as a fraction of the run's tokens (used when warmup_tokens is None)."""
    warmup_tokens: Optional[float] = None
    min_lr_ratio: float = 0.1
    """Final lr as a fraction of the peak."""
    decay_fraction: float = 0.2
    """wsd / power: fraction of the run spent decaying; two_stage: fraction after the drop to min_lr_ratio."""
    decay_shape: str = "linear"
    table: Optional[str] = None
    """schedule=table: CSV with columns fraction (of the run's tokens, 0..1), lr_multiplier (of lr), warmup
    included; lab-train interpolates linearly and records the file as a run artifact
    (tracking.record.Artifact.LR_TABLE)."""

    def __post_init__(self) -> None:
        if self.schedule == "table" or self.table is not None:
            from lab.schedules import ScheduleError, read_lr_table  # torch-free

            _require(self.schedule == "table", "optim.table", self.table,
                     "a table is only read with optim.schedule=table; set it, or drop optim.table")
            _require(bool(self.table), "optim.table", self.table,
                     "optim.schedule=table needs the CSV: optim.table=path/to/schedule.csv (fraction,lr_multiplier)")
            try:
                read_lr_table(str(self.table))  # validated before any run starts
            except ScheduleError as err:
                raise ConfigError("optim.table", self.table, str(err)) from err
        _require(self.lr > 0, "optim.lr", self.lr, "the peak learning rate must be > 0, e.g. optim.lr=3e-3")
        _require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "use a value >= 0")
        _require(0 <= self.beta1 < 1, "optim.beta1", self.beta1, "use a value in [0, 1)")
        _require(0 <= self.beta2 < 1, "optim.beta2", self.beta2, "use a value in [0, 1)")
        _require(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "use a norm >= 0 (0 disables clipping)")
        _one_of("optim.schedule", self.schedule, LR_SCHEDULES)
        _one_of("optim.decay_shape", self.decay_shape, DECAY_SHAPES)
        _require(0 <= self.warmup_fraction < 1, "optim.warmup_fraction", self.warmup_fraction, "use [0, 1)")
        _require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", self.min_lr_ratio, "use [0, 1]")
        _require(0 < self.decay_fraction <= 1, "optim.decay_fraction", self.decay_fraction, "use (0, 1]")


@dataclass
class BatchConfig:
    schedule: str = "constant"
    """constant | linear (GPT-3 ramp) | stepwise (token milestones, Merrill et al. 2025)."""
    sequences: int = 16
    """Global batch in sequences (B in tokens = sequences · model.seq_len); the final batch of a ramp."""
    micro_batch: int = 8
    """Sequences per forward pass on one device; batch changes are realised by gradient accumulation."""
    start_sequences: Optional[int] = None
    """linear / stepwise: the batch the run starts with."""
    ramp_tokens: Optional[float] = None
    """linear: tokens over which the batch grows from start_sequences to sequences."""
    milestones: list[Any] = field(default_factory=list)
    """stepwise: [[tokens, sequences], ...], increasing in tokens."""
    lr_rescale: str = "sqrt"
    """How lr follows a batch change: none | linear | sqrt (OLMo: lr · sqrt(new/old))."""

    def __post_init__(self) -> None:
        _one_of("batch.schedule", self.schedule, BATCH_SCHEDULES)
        _one_of("batch.lr_rescale", self.lr_rescale, LR_RESCALE_RULES)
        _require(self.micro_batch >= 1, "batch.micro_batch", self.micro_batch, "use at least 1 sequence")
        _require(self.sequences >= 1, "batch.sequences", self.sequences, "use at least 1 sequence")
        if self.schedule == "linear":
            _require(self.start_sequences is not None, "batch.start_sequences", None, "set the ramp's first batch")
            _require(bool(self.ramp_tokens and self.ramp_tokens > 0), "batch.ramp_tokens", self.ramp_tokens,
                     "set the ramp length in tokens, e.g. batch.ramp_tokens=1e6")
        if self.schedule == "stepwise":
            _require(len(self.milestones) > 0, "batch.milestones", self.milestones,
                     "give [[tokens, sequences], ...], e.g. batch.milestones=[[1e6,32],[4e6,64]]")


@dataclass
class BudgetConfig:
    """How long the run trains: D in tokens, or C in FLOPs, or else tokens per parameter (D = ratio · N)."""

    tokens: Optional[float] = None
    flops: Optional[float] = None
    """C = 6·N·D with N non-embedding (design §4); D follows from it."""
    tokens_per_param: float = 20.0
    """Used only when neither tokens nor flops is set; 20 is Chinchilla's compute-optimal ratio."""

    def __post_init__(self) -> None:
        _require(self.tokens is None or self.flops is None, "budget", {"tokens": self.tokens, "flops": self.flops},
                 "set only one of budget.tokens=<D> and budget.flops=<C>")
        for name in ("tokens", "flops", "tokens_per_param"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"budget.{name}", value, "the training budget must be positive")


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = True
    threads: Optional[int] = None
    """torch intra-op threads; None: the cores shared among this node's workers and capped by the cores the load
    leaves idle (lab.threads.default_threads), so a run beside others does not oversubscribe."""
    val_every_steps: int = 50
    checkpoint_every_steps: int = 50
    val_every_tokens: Optional[float] = None
    """Validate every this many tokens (whole steps of the first batch) instead of val_every_steps (GPU presets)."""
    checkpoint_every_minutes: Optional[float] = None
    """Write last.ckpt every this many minutes of training instead of every checkpoint_every_steps (GPU presets)."""
    max_loss: float = 20.0
    """Divergence ceiling in nats/token: a loss above it (or NaN/inf) ends the run as FAILED."""
    peak_flops: Optional[float] = None
    """Peak FLOP/s of one device for MFU; None: Lightning's table for the device and the dtype computed in
    (lab.flops.peak_flops); a device it does not know (any CPU) records no MFU."""
    progress_bar: bool = True
    compile: Optional[bool] = None
    """torch.compile each transformer block (fuses RMSNorm, SwiGLU, rotary) and, on CUDA, the loss; None: on CUDA
    whatever the run length, never on a CPU (lab.parallel.compile_default)."""
    compile_mode: Optional[str] = None
    """torch.compile mode (None: torch's default; e.g. max-autotune)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: less memory for ~1/3 more compute."""
    loss_impl: str = "lab"
    """Loss kernel: lab (lab.losses, naive or chunked by fused_ce_chunk), liger or cce (CUDA; the gpu extra)."""
    hsdp: bool = False
    """strategy=fsdp across nodes: shard within each node, replicate across the trainer.num_nodes nodes (HSDP)."""
    fused_ce_chunk: Optional[int] = None
    """Rows (tokens) per chunk of the fused linear + cross-entropy loss, which never builds the full (tokens, V)
    logits (lab.losses); None: the naive loss."""
    checkpoint_at_tokens: list[float] = field(default_factory=list)
    """Token counts at which to keep a checkpoint ``tokens-<T>.ckpt`` (and its record ``tokens-<T>.json``) beside
    last.ckpt, never overwritten: the branch points of a critical-batch-size study (lab.branching). Each T must end
    an optimizer step and come before the end of the run."""

    def __post_init__(self) -> None:
        _require(self.compile_mode in COMPILE_MODES, "trainer.compile_mode", self.compile_mode,
                 f"use one of {', '.join(str(m) for m in COMPILE_MODES)}")
        _require(self.fused_ce_chunk is None or self.fused_ce_chunk >= 1, "trainer.fused_ce_chunk",
                 self.fused_ce_chunk, "use a positive number of rows, e.g. 4096, or null for the naive loss")
        _one_of("trainer.strategy", self.strategy, STRATEGIES)
        _one_of("trainer.precision", self.precision, PRECISIONS)
        _one_of("trainer.loss_impl", self.loss_impl, ("lab", "liger", "cce"))
        _require(self.devices >= 1, "trainer.devices", self.devices, "use at least 1 device")
        _require(self.num_nodes >= 1, "trainer.num_nodes", self.num_nodes, "use at least 1 node")
        _require(self.val_every_steps >= 1, "trainer.val_every_steps", self.val_every_steps, "use >= 1")
        _require(self.checkpoint_every_steps >= 1, "trainer.checkpoint_every_steps",
                 self.checkpoint_every_steps, "use >= 1")
        for name in ("val_every_tokens", "checkpoint_every_minutes"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"trainer.{name}", value, "use a positive number, or null")
        _require(self.max_loss > 0, "trainer.max_loss", self.max_loss, "use a positive loss ceiling")
        points = [float(t) for t in self.checkpoint_at_tokens]
        _require(all(t > 0 for t in points) and points == sorted(set(points)), "trainer.checkpoint_at_tokens",
                 self.checkpoint_at_tokens, "give increasing positive token counts, e.g. [4096, 16384]")


@dataclass
class InitConfig:
    """Start from a checkpoint of a reference run and train a token window at another batch size: a branch of a
    critical-batch-size study (Merrill et al. 2025; lab.branching). checkpoint=None: train from scratch."""

    checkpoint: Optional[str] = None
    """A ``tokens-<T>.ckpt`` that a reference run kept (trainer.checkpoint_at_tokens), its record beside it."""
    tokens: Optional[float] = None
    """T: tokens the reference had seen at the checkpoint (checked against the checkpoint's record)."""
    window_tokens: Optional[float] = None
    """W: tokens the branch trains, from T to T + W; a whole number of steps of the branch's batch."""
    lr_rescale: str = "sqrt"
    """The branch's lr is the reference's schedule at the same tokens times a factor of B/B_ref: none | linear |
    sqrt (lab.schedules.lr_batch_factor)."""

    def __post_init__(self) -> None:
        _one_of("init.lr_rescale", self.lr_rescale, LR_RESCALE_RULES)
        if self.checkpoint is None:
            _require(self.tokens is None and self.window_tokens is None, "init.checkpoint", None,
                     "init.tokens and init.window_tokens need init.checkpoint=PATH of a tokens-<T>.ckpt")
            return
        _require(self.tokens is not None and self.tokens > 0, "init.tokens", self.tokens,
                 "give the checkpoint's token count T, e.g. init.tokens=4096")
        _require(self.window_tokens is not None and self.window_tokens > 0, "init.window_tokens",
                 self.window_tokens, "give the tokens the branch trains, e.g. init.window_tokens=16384")


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI: a SQLite file in the working directory by default, or http://host:port."""
    experiment: str = "default"
    run_name: Optional[str] = None
    """None: a deterministic name from N, D, B, lr and seed, ending in the run's identity digest (lab.identity)."""
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: Optional[str] = None
    """The sweep's parent run: this run is recorded as its child (MLflow's mlflow.parentRunId tag)."""
    system_metrics_s: Optional[float] = 10.0
    """Seconds between samples of CPU, memory, disk, network and GPU use (MLflow's system metrics, ``system/*``);
    null turns them off."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    init: InitConfig = field(default_factory=InitConfig)
    seed: int = 0
    resume: bool = False
    """Continue the run named tracking.run_name from its last checkpoint, into the same MLflow run."""
    checkpoint_dir: str = "checkpoints"

    @property
    def world_size(self) -> int:
        return self.trainer.devices * self.trainer.num_nodes

    def __post_init__(self) -> None:
        granularity = self.batch.micro_batch * self.world_size
        batches = [self.batch.sequences]
        if self.batch.start_sequences is not None:
            batches.append(self.batch.start_sequences)
        batches += [int(m[1]) for m in self.batch.milestones]
        for b in batches:
            _require(b % granularity == 0, "batch.sequences", b,
                     f"every global batch must be a multiple of micro_batch x devices = {granularity}; "
                     f"change batch.sequences / batch.micro_batch / trainer.devices")
        if self.init.checkpoint is not None:
            _require(self.batch.schedule == "constant", "batch.schedule", self.batch.schedule,
                     "a branch (init.checkpoint) trains at one batch size: use batch=constant")
        data_vocab = self.data.vocab_size or (BYTE_VOCAB if self.data.source == "builtin" else None)
        if data_vocab is not None:
            if self.model.vocab_size == BYTE_VOCAB:  # the default: the model's vocabulary follows the data's
                self.model.vocab_size = data_vocab
            origin = self.data.manifest or f"data.tokenizer={self.data.tokenizer or 'bytes'}"
            _require(self.model.vocab_size >= data_vocab, "model.vocab_size", self.model.vocab_size,
                     f"the data has {data_vocab} token ids ({origin}); "
                     f"drop the override (the vocabulary comes from the data) or use at least {data_vocab}")
        vocab_is_bytes = self.data.source != "builtin" or self.data.tokenizer == "bpe" or self.model.vocab_size == 256
        _require(vocab_is_bytes, "model.vocab_size", self.model.vocab_size,
                 "the built-in corpus is byte-level: use model.vocab_size=256")


def unknown_keys(cfg: Any, schema: type = TrainConfig) -> list[str]:
    """Dotted keys of a composed config that the schema has no field for (e.g. ``+optim.lrr=1e-3``: Hydra's ``+``
    adds a key that ``OmegaConf.to_object`` would silently drop). Free-form dict fields (tracking.tags) take any key;
    a top-level ``hydra`` node is Hydra's own."""
    from omegaconf import DictConfig, OmegaConf

    def walk(node: Any, ref: Any, prefix: str) -> list[str]:
        if not isinstance(node, DictConfig) or not isinstance(ref, DictConfig):
            return []
        if not dataclasses.is_dataclass(OmegaConf.get_type(ref)):
            return []  # a dict-typed field: any key
        bad: list[str] = []
        for key in node.keys():
            path = f"{prefix}{key}"
            if key not in ref:
                if not (prefix == "" and key == "hydra"):
                    bad.append(path)
                continue
            bad += walk(node._get_node(key), ref._get_node(key), f"{path}.")
        return bad

    return walk(cfg, OmegaConf.structured(schema), "")


def check_known_keys(cfg: Any) -> None:
    """Refuse keys the schema does not have, naming each and the nearest known key, before anything is recorded."""
    import difflib

    from omegaconf import OmegaConf

    bad = unknown_keys(cfg)
    if not bad:
        return
    known = _dotted_fields(OmegaConf.structured(TrainConfig), "")
    hints = []
    for key in bad:
        near = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key} (did you mean {near[0]}?)" if near else key)
    raise ConfigError(bad[0], OmegaConf.select(cfg, bad[0]),
                      f"the config has no field {', '.join(hints)}; fix the name (drop the '+' of a '+key=value' "
                      "override unless the schema in lab/config.py has that field)")


def _dotted_fields(ref: Any, prefix: str) -> list[str]:
    from omegaconf import DictConfig, OmegaConf

    out: list[str] = []
    for key in ref.keys():
        child = ref._get_node(key)
        out.append(f"{prefix}{key}")
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            out += _dotted_fields(child, f"{prefix}{key}.")
    return out


def register() -> None:
    """Put the schema in Hydra's ConfigStore; conf/train.yaml lists it first in its defaults."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
