"""Distribution, compilation and activation checkpointing, applied to a plain GPT from outside (torchtitan style).

Order (as torchtitan's ``parallelize``): activation checkpointing wraps each block, then each block is compiled,
then FSDP2 shards each block and finally the root. The model's code never changes and its parameter names stay
the same (in-place ``nn.Module.compile``; the checkpoint wrapper's prefix is removed from state dicts by its own
hooks), so checkpoints and optimizer parameter groups do not depend on which of these are on.

Strategies (``trainer.strategy``):
- ``auto``: one device. ``ddp``: Lightning's DDPStrategy (gloo on CPU, NCCL on GPU).
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) per transformer block and at the root, through
  Lightning's ``ModelParallelStrategy`` (data-parallel mesh of all ranks, no tensor parallelism). Runs on the CPU
  with gloo and on GPUs with NCCL. Checkpoints are distributed (a directory of per-rank shards).

Precision, one recipe for every strategy (``PrecisionPolicy``): matmuls in bf16, master weights, optimizer state
and gradient reductions in fp32. ``trainer.precision=bf16-mixed`` is Lightning's autocast over fp32 parameters on
one device, under DDP and under FSDP alike; FSDP2's ``MixedPrecisionPolicy`` then all-gathers the blocks'
parameters in bf16 (the very values autocast would cast them to, at half the bytes) and reduce-scatters gradients
in fp32, while the root (embedding, final norm, head) stays fp32 so the residual stream is fp32 as under autocast
alone. The one difference left: inside a block, RMSNorm gains are read in bf16 (a 2^-8 relative rounding of
values near 1). On CUDA, TF32 is enabled for whatever matmul remains in fp32 (``enable_tf32``).
Not offered: Lightning's ``FSDPStrategy`` (FSDP1). It refuses the CPU, so no test could cover it here, and FSDP1
manages the root's parameters around one forward and backward per wrapped call, whereas a LitGPT training_step
runs several micro-batches with the loss outside ``forward``. FSDP2 through ``ModelParallelStrategy`` is
Lightning's documented path for GPUs as well.

Gradients under FSDP are sharded DTensors: their norms are summed over shards here (``grad_sq_norm``,
``clip_grad_norm``); under DDP and on one device every rank holds whole gradients and the plain path runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import nn

from lab.config import COMPILE_MODES
from lab.noise import grad_sq_norm_tensor as local_grad_sq_norm

if TYPE_CHECKING:
    from lightning.pytorch.strategies import Strategy
    from torch.distributed.device_mesh import DeviceMesh

    from lab.config import TrainerConfig

SHARDED = ("fsdp",)
"""Strategies whose gradients are sharded across ranks."""


class ParallelError(ValueError):
    """A parallelism setting that cannot run here; the message names the field, the value and the fix."""


@dataclass(frozen=True)
class Parallelism:
    """What is applied to the model before training (see the module docstring)."""

    strategy: str = "auto"
    compile: bool = False
    compile_mode: Optional[str] = None
    """torch.compile mode; None is torch's default."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: less memory, ~1/3 more compute."""
    precision: "PrecisionPolicy" = field(default_factory=lambda: PrecisionPolicy())
    """Compute and reduction dtypes (default: fp32 throughout)."""
    loss_impl: str = "lab"
    """Loss kernel (lab.fused_losses): lab (reference), liger or cce (CUDA, the gpu extra)."""
    hsdp_replicas: Optional[int] = None
    """HSDP (strategy fsdp): shard within groups of world/hsdp_replicas ranks (a node), replicate across the
    hsdp_replicas groups (nodes). None: plain FSDP over every rank."""

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ParallelError(f"trainer.compile_mode={self.compile_mode!r}: use one of "
                                f"{', '.join(str(m) for m in COMPILE_MODES)}")

    @property
    def sharded(self) -> bool:
        """Gradients are sharded (FSDP): every backward reduce-scatters, so no micro-batch gradient is rank-local."""
        return self.strategy in SHARDED


@dataclass(frozen=True)
class PrecisionPolicy:
    """What every strategy computes in (module docstring): one policy, so a law fitted on runs of several
    strategies does not mix numerics."""

    compute_dtype: torch.dtype = torch.float32
    """dtype of the matmuls: bfloat16 under trainer.precision=bf16-mixed (autocast), else float32."""
    param_dtype: torch.dtype = torch.float32
    """Master weights and optimizer state: always float32."""
    reduce_dtype: torch.dtype = torch.float32
    """Gradient all-reduce / reduce-scatter: always float32."""

    @property
    def autocast(self) -> bool:
        return self.compute_dtype != self.param_dtype

    def fsdp(self, root: bool = False) -> Any:
        """FSDP2's MixedPrecisionPolicy agreeing with autocast: blocks gathered in the compute dtype, the root in
        fp32 (module docstring); gradients reduced in fp32; inputs never cast (autocast casts per op)."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        param = None if root or not self.autocast else self.compute_dtype
        return MixedPrecisionPolicy(param_dtype=param, reduce_dtype=self.reduce_dtype, cast_forward_inputs=False)


POLICIES = {"32-true": PrecisionPolicy(), "bf16-mixed": PrecisionPolicy(compute_dtype=torch.bfloat16)}
"""The policy of each trainer.precision (lab.config.PRECISIONS): fp32 master weights only."""


def precision_policy(t: "TrainerConfig") -> PrecisionPolicy:
    """The policy of ``trainer.precision``, the same for strategy auto, ddp and fsdp."""
    if t.precision not in POLICIES:
        raise ParallelError(f"trainer.precision={t.precision!r}: use one of {', '.join(POLICIES)} (bf16 compute "
                            "with fp32 master weights is bf16-mixed; pure-bf16 weights are not offered)")
    return POLICIES[t.precision]


def enable_tf32() -> bool:
    """TF32 tensor cores for the fp32 matmuls and convolutions left on CUDA; False (nothing changed) without CUDA.

    PyTorch >= 2.9 documents ``torch.backends.cuda.matmul.fp32_precision = "tf32"`` (and the cuDNN one) and
    deprecates ``allow_tf32``; older versions get ``torch.set_float32_matmul_precision("high")``.
    """
    if not torch.cuda.is_available():
        return False
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        torch.set_float32_matmul_precision("high")
    return True


def tf32_enabled() -> bool:
    """Whether fp32 matmuls on CUDA run on TF32 tensor cores (read from the same switches)."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return torch.backends.cuda.matmul.fp32_precision == "tf32"
    return torch.get_float32_matmul_precision() != "highest"


def peak_dtype(policy: PrecisionPolicy) -> "torch.dtype | str":
    """The dtype whose peak FLOP/s bounds the run's matmuls: bf16, TF32 where fp32 matmuls use it, else fp32."""
    if policy.compute_dtype == torch.float32 and torch.cuda.is_available() and tf32_enabled():
        return "tfloat32"  # the key of Lightning's get_available_flops table
    return policy.compute_dtype


def loss_function(p: Parallelism, device_type: str) -> Any:
    """The training loss: ``trainer.loss_impl`` (lab.fused_losses), and for lab's own, compiled on CUDA when blocks
    are: inductor fuses the scale, the cast and the softmax of the naive path; the chunked path's Python loop is
    unrolled per chunk count. Compiled artefacts land in the shared inductor cache (TORCHINDUCTOR_CACHE_DIR, set
    by lab.run.quiet_lightning), so later runs reuse them. Liger and CCE are Triton kernels already."""
    from lab.fused_losses import loss_function as chosen

    fn = chosen(p.loss_impl)
    if p.loss_impl == "lab" and p.compile and device_type == "cuda":
        return torch.compile(fn, mode=p.compile_mode)
    return fn


def compile_default(accelerator: str, steps: int) -> bool:
    """Whether ``trainer.compile=null`` compiles: on CUDA always, whatever the run length (issue 14); on a CPU
    never by default (inductor needs a C compiler a laptop may lack; `trainer.compile=true` opts in).

    Per step, compiled blocks were never slower on this CPU (benchmarks/throughput.py, ladder sizes 1-6: x1.3-1.7
    the eager tokens/s with the byte vocabulary, x1.0-1.1 with 50,257 tokens); a cold CPU compile costs 20-90 s.
    On CUDA compiling the blocks and the loss is the documented speed path (nanoGPT's README: 250 -> 135 ms per
    iteration for GPT-2 124M on an A100). ``steps`` no longer matters; it is kept for callers.
    """
    # A compile on CUDA costs about a minute once per shape, then the shared inductor cache serves it; it repays
    # within a few hundred steps of a 124M model, and short runs are most of a ladder.
    return accelerator in ("gpu", "cuda") and torch.cuda.is_available()


def from_config(t: "TrainerConfig", steps: int) -> Parallelism:
    """The settings of a run of ``steps`` optimizer steps (``compile=null`` resolves by ``compile_default``)."""
    compile_on = compile_default(t.accelerator, steps) if t.compile is None else t.compile
    if t.hsdp and t.strategy != "fsdp":
        raise ParallelError(f"trainer.hsdp=true needs trainer.strategy=fsdp (got {t.strategy!r}): HSDP is FSDP "
                            "sharded within a node and replicated across nodes")
    return Parallelism(strategy=t.strategy, compile=compile_on, compile_mode=t.compile_mode,
                       activation_checkpointing=t.activation_checkpointing, precision=precision_policy(t),
                       loss_impl=t.loss_impl, hsdp_replicas=t.num_nodes if t.hsdp else None)


def hsdp_mesh(device_type: str, replicas: int, world_size: int) -> "DeviceMesh":
    """The 2-D mesh of HSDP: ("replicate", "shard") = (replicas, world_size / replicas). With one replica per node
    and ranks numbered node by node (torchrun, SLURM), each shard group is one node, so the all-gathers and
    reduce-scatters stay on NVLink and only the gradient all-reduce between replicas crosses nodes."""
    from torch.distributed.device_mesh import init_device_mesh

    if replicas < 1 or world_size % replicas:
        raise ParallelError(f"HSDP: {world_size} ranks cannot form {replicas} equal replicas (trainer.num_nodes); "
                            "use the same trainer.devices on every node")
    return init_device_mesh(device_type, (replicas, world_size // replicas), mesh_dim_names=("replicate", "shard"))


def lightning_strategy(t: "TrainerConfig") -> Union[str, "Strategy"]:
    """The ``strategy`` argument of ``lightning.Trainer`` for ``trainer.strategy``."""
    if t.strategy == "fsdp":
        from lab.checkpoints import AtomicModelParallelStrategy

        # Pure data parallelism over every rank: Lightning's "auto" would make the devices of a node a
        # tensor-parallel group instead. Sharded checkpoints are published atomically (lab.checkpoints).
        return AtomicModelParallelStrategy(data_parallel_size=t.devices * t.num_nodes, tensor_parallel_size=1,
                                           save_distributed_checkpoint=True)
    return t.strategy


def apply(model: nn.Module, p: Parallelism, device_mesh: Optional["DeviceMesh"] = None) -> nn.Module:
    """Activation checkpointing, compilation and FSDP2 (or HSDP) applied in place to ``model`` (a ``lab.model.GPT``).

    ``device_mesh``: the data-parallel mesh for ``strategy="fsdp"`` (Lightning's ``ModelParallelStrategy`` gives
    it to the LightningModule as ``self.device_mesh["data_parallel"]``).
    """
    blocks: nn.ModuleList = model.blocks  # type: ignore[assignment]
    if p.activation_checkpointing:
        checkpoint_blocks(blocks)
    if p.compile:
        for block in blocks:
            block.compile(mode=p.compile_mode)  # in place: parameter names do not change
    if p.strategy == "fsdp":
        if device_mesh is None:
            raise ParallelError("strategy fsdp needs a device mesh: run it through lightning_strategy() "
                                "(Lightning's ModelParallelStrategy)")
        if p.hsdp_replicas is not None:
            device_mesh = hsdp_mesh(device_mesh.device_type, p.hsdp_replicas, device_mesh.size())
        shard(model, device_mesh, p.precision)
    return model


def checkpoint_blocks(blocks: nn.ModuleList) -> None:
    """Wrap each block in a non-reentrant activation-checkpoint wrapper (state-dict keys are unchanged)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(blocks):
        blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)  # no dropout: no RNG to replay


def shard(model: nn.Module, mesh: "DeviceMesh", precision: Optional[PrecisionPolicy] = None) -> None:
    """FSDP2 per block, then the root (embedding, final norm, head). A 2-D ``mesh`` (replicate, shard) makes it HSDP
    (FSDP2's ``fully_shard`` on a 2-D mesh: sharded along the last dimension, replicated along the first).

    The loss is computed outside ``forward`` (``hidden`` then ``output_weight``, so the chunked loss never builds
    the logits), hence ``hidden`` is registered as a forward method (it all-gathers the root's parameters) and
    the root keeps them unsharded after it (``reshard_after_forward=False``) so the head weight the loss reads
    is whole; its gradient is reduce-scattered at the end of the backward pass like every other.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    precision = precision or PrecisionPolicy()
    for block in model.blocks:  # type: ignore[union-attr]
        fully_shard(block, mesh=mesh, mp_policy=precision.fsdp())
    fully_shard(model, mesh=mesh, mp_policy=precision.fsdp(root=True), reshard_after_forward=False)
    register_fsdp_forward_method(model, "hidden")


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """2-norm of all gradients; for DTensor (sharded) gradients the full norm over every shard, on every rank."""
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    return total.full_tensor() if _is_dtensor(total) else total


def grad_sq_norm(parameters: Iterable[nn.Parameter]) -> torch.Tensor:
    """Σ |p.grad|² over the whole model as a 0-d float64 device tensor (no host sync), whether gradients are whole
    (one device, DDP) or sharded (FSDP).

    Whole gradients use ``lab.noise.grad_sq_norm_tensor`` (float32 accumulation); FSDP2's DTensor gradients
    ``torch.nn.utils.get_total_norm``, which all-reduces the shards' partial norms on the device.
    """
    params = [p for p in parameters if p.grad is not None]
    sharded = [p.grad for p in params if _is_dtensor(p.grad)]
    whole = [p for p in params if not _is_dtensor(p.grad)]
    total = local_grad_sq_norm(whole)
    if sharded:
        norm = _total_norm(sharded).double()
        total = total.to(norm.device) + norm.square()
    return total


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale gradients so their global 2-norm is at most ``max_norm`` (inf: never); return the norm before, as a
    0-d device tensor (no host sync: the scaling is a device-side clamp).

    Same as ``torch.nn.utils.clip_grad_norm_`` for whole gradients; for sharded ones the norm is the full one
    (all shards), so every rank scales by the same factor.
    """
    params = [p for p in parameters if p.grad is not None]
    if not any(_is_dtensor(p.grad) for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = _total_norm([p.grad for p in params])
    if math.isfinite(max_norm):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def finish_distributed() -> None:
    """Barrier, then destroy the process group: without the barrier gloo/FSDP processes can abort at exit
    ("terminate called without an active exception", environment.md)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    """Global rank of this process (0 before the process group exists: from the launcher's environment)."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


def describe(p: Parallelism) -> dict[str, Any]:
    """MLflow params beyond the flattened config: what ``trainer.compile=null`` resolved to, and sharding."""
    return {"parallel.compile": p.compile, "parallel.sharded": p.sharded,
            "parallel.compute_dtype": str(p.precision.compute_dtype).replace("torch.", "")}
