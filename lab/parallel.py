"""Distribution, compilation and activation checkpointing, applied to a plain GPT from outside (torchtitan style).

Order (as torchtitan's ``parallelize``): activation checkpointing wraps each block, then each block is compiled,
then FSDP2 shards each block and finally the root. The model's code never changes and its parameter names stay
the same (in-place ``nn.Module.compile``; the checkpoint wrapper's prefix is removed from state dicts by its own
hooks), so checkpoints and optimizer parameter groups do not depend on which of these are on.

Strategies (``trainer.strategy``):
- ``auto``: one device. ``ddp``: Lightning's DDPStrategy (gloo on CPU, NCCL on GPU).
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) per transformer block and at the root, through
  Lightning's ``ModelParallelStrategy`` (data-parallel mesh of all ranks, no tensor parallelism). Runs on the CPU
  with gloo and on GPUs with NCCL; on CUDA parameters are all-gathered in bf16 and gradients reduce-scattered in
  fp32 (``MixedPrecisionPolicy``; sharded parameters and optimizer state stay fp32). Checkpoints are distributed
  (a directory of per-rank shards).
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import nn

from lab.config import COMPILE_MODES
from lab.noise import grad_sq_norm as local_grad_sq_norm

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
    bf16: bool = True
    """FSDP on CUDA: bf16 parameters for compute, fp32 gradient reduction. Ignored on the CPU."""

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ParallelError(f"trainer.compile_mode={self.compile_mode!r}: use one of "
                                f"{', '.join(str(m) for m in COMPILE_MODES)}")

    @property
    def sharded(self) -> bool:
        """Gradients are sharded (FSDP): every backward reduce-scatters, so no micro-batch gradient is rank-local."""
        return self.strategy in SHARDED


COMPILE_MIN_STEPS = 1_000
"""Runs shorter than this are not compiled by default: the first compile (20-90 s on this CPU) would not pay."""


def compile_default(accelerator: str, steps: int) -> bool:
    """Whether ``trainer.compile=null`` compiles: only where it is faster over the whole run.

    Per step, compiled blocks were never slower on this CPU (benchmarks/throughput.py, ladder sizes 1-6: ×1.3-1.7
    the eager tokens/s with the byte vocabulary, ×1.0-1.1 with 50,257 tokens, where the head dominates), but a
    cold compile costs 20-90 s, which the per-step gain repays after a few hundred steps: so runs of >= 1,000
    steps would pay back. The default still compiles only on CUDA: on a CPU, inductor needs a C compiler that a
    laptop may lack, and every parallel sweep worker pays its own cold compile; `trainer.compile=true` opts in.
    CUDA: not measured here (no GPU); compiling the blocks is the documented speed path there (nanoGPT's README:
    250 → 135 ms per iteration for GPT-2 124M on an A100).
    """
    if steps < COMPILE_MIN_STEPS:
        return False
    return accelerator in ("gpu", "cuda") and torch.cuda.is_available()


def from_config(t: "TrainerConfig", steps: int) -> Parallelism:
    """The settings of a run of ``steps`` optimizer steps (``compile=null`` resolves by ``compile_default``)."""
    compile_on = compile_default(t.accelerator, steps) if t.compile is None else t.compile
    return Parallelism(strategy=t.strategy, compile=compile_on, compile_mode=t.compile_mode,
                       activation_checkpointing=t.activation_checkpointing, bf16=t.fsdp_bf16)


def lightning_strategy(t: "TrainerConfig") -> Union[str, "Strategy"]:
    """The ``strategy`` argument of ``lightning.Trainer`` for ``trainer.strategy``."""
    if t.strategy == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        # Pure data parallelism over every rank: Lightning's "auto" would make the devices of a node a
        # tensor-parallel group instead.
        return ModelParallelStrategy(data_parallel_size=t.devices * t.num_nodes, tensor_parallel_size=1,
                                     save_distributed_checkpoint=True)
    return t.strategy


def apply(model: nn.Module, p: Parallelism, device_mesh: Optional["DeviceMesh"] = None) -> nn.Module:
    """Activation checkpointing, compilation and FSDP2 applied in place to ``model`` (a ``lab.model.GPT``).

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
        shard(model, device_mesh, bf16=p.bf16)
    return model


def checkpoint_blocks(blocks: nn.ModuleList) -> None:
    """Wrap each block in a non-reentrant activation-checkpoint wrapper (state-dict keys are unchanged)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(blocks):
        blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)  # no dropout: no RNG to replay


def shard(model: nn.Module, mesh: "DeviceMesh", bf16: bool = True) -> None:
    """FSDP2 per block, then the root (embedding, final norm, head).

    The loss is computed outside ``forward`` (``hidden`` then ``output_weight``, so the chunked loss never builds
    the logits), hence ``hidden`` is registered as a forward method (it all-gathers the root's parameters) and
    the root keeps them unsharded after it (``reshard_after_forward=False``) so the head weight the loss reads
    is whole; its gradient is reduce-scattered at the end of the backward pass like every other.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    on_cuda = mesh.device_type == "cuda"
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 and on_cuda \
        else MixedPrecisionPolicy()
    for block in model.blocks:  # type: ignore[union-attr]
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    register_fsdp_forward_method(model, "hidden")


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """2-norm of all gradients; for DTensor (sharded) gradients the full norm over every shard, on every rank."""
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    return total.full_tensor() if _is_dtensor(total) else total


def grad_sq_norm(parameters: Iterable[nn.Parameter]) -> float:
    """Σ |p.grad|² over the whole model, whether gradients are whole (one device, DDP) or sharded (FSDP).

    Whole gradients use ``lab.noise.grad_sq_norm`` (float32 accumulation, one host sync); FSDP2's DTensor
    gradients ``torch.nn.utils.get_total_norm``, which all-reduces the shards' partial norms.
    """
    params = [p for p in parameters if p.grad is not None]
    sharded = [p.grad for p in params if _is_dtensor(p.grad)]
    whole = [p for p in params if not _is_dtensor(p.grad)]
    return (float(_total_norm(sharded)) ** 2 if sharded else 0.0) + local_grad_sq_norm(whole)


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Scale gradients so their global 2-norm is at most ``max_norm`` (inf: never); return the norm before.

    Same as ``torch.nn.utils.clip_grad_norm_`` for whole gradients; for sharded ones the norm is the full one
    (all shards), so every rank scales by the same factor.
    """
    params = [p for p in parameters if p.grad is not None]
    if not any(_is_dtensor(p.grad) for p in params):
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    total = _total_norm([p.grad for p in params])
    if math.isfinite(max_norm):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


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
    return {"parallel.compile": p.compile, "parallel.sharded": p.sharded}
