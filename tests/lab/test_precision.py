"""One precision recipe (issue 14): the loss's matmuls run in bf16 under autocast, every strategy shares a policy."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lab import parallel
from lab.config import PRECISIONS, STRATEGIES, TrainerConfig
from lab.losses import cross_entropy

MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "addmm_"}


class MatmulDtypes(TorchDispatchMode):
    """Records the input dtypes of every aten matrix product run under it (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, tuple[torch.dtype, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in MATMULS:
            self.seen.append((name, tuple(a.dtype for a in args if isinstance(a, torch.Tensor))))
        return func(*args, **(kwargs or {}))


def inputs(M=24, d=16, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(M, d, generator=g).requires_grad_()
    weight = (0.3 * torch.randn(V, d, generator=g)).requires_grad_()
    targets = torch.randint(0, V, (M,), generator=g)
    targets[::5] = -100
    return hidden, weight, targets


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_loss_matmuls_run_in_bf16_under_cpu_autocast(chunk_size):
    hidden, weight, targets = inputs()
    with MatmulDtypes() as mode, torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cross_entropy(hidden, weight, targets, chunk_size=chunk_size)
        grads = torch.autograd.grad(loss, [hidden, weight])
    assert mode.seen, "no matmul recorded"
    assert all(dtypes and all(t == torch.bfloat16 for t in dtypes) for _, dtypes in mode.seen), mode.seen
    # Accumulation and results stay fp32: the loss, and gradients in the parameters' dtype.
    assert loss.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)


def test_bf16_chunked_loss_agrees_with_the_fp32_reference():
    hidden, weight, targets = inputs(M=64, V=300)
    ref = cross_entropy(hidden, weight, targets)
    ref_grads = torch.autograd.grad(ref, [hidden, weight])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cross_entropy(hidden, weight, targets, chunk_size=16)
    grads = torch.autograd.grad(out, [hidden, weight])
    assert abs(out.item() - ref.item()) < 2e-2  # bf16 inputs: ~3 significant digits per logit
    for g, r in zip(grads, ref_grads):
        cos = torch.nn.functional.cosine_similarity(g.flatten(), r.flatten(), dim=0)
        assert cos > 0.999


def test_fp32_without_autocast_runs_fp32_matmuls():
    hidden, weight, targets = inputs()
    with MatmulDtypes() as mode:
        torch.autograd.grad(cross_entropy(hidden, weight, targets, chunk_size=7), [hidden, weight])
    assert all(t == torch.float32 for _, dtypes in mode.seen for t in dtypes)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_one_precision_policy_for_every_strategy(precision):
    policies = {s: parallel.precision_policy(TrainerConfig(strategy=s, precision=precision)) for s in STRATEGIES}
    assert len(set(policies.values())) == 1, policies
    policy = policies["fsdp"]
    assert policy.param_dtype == torch.float32 and policy.reduce_dtype == torch.float32, "fp32 master + reductions"
    blocks, root = policy.fsdp(), policy.fsdp(root=True)
    # FSDP2 agrees with autocast: blocks gathered in the dtype autocast computes in, the root and every reduction
    # in fp32, inputs never cast by FSDP (autocast casts per op).
    assert blocks.param_dtype == (torch.bfloat16 if precision == "bf16-mixed" else None)
    assert root.param_dtype is None and blocks.reduce_dtype == root.reduce_dtype == torch.float32
    assert not blocks.cast_forward_inputs and policy.autocast == (precision == "bf16-mixed")


def test_precision_that_drops_fp32_master_weights_is_refused():
    with pytest.raises(ValueError, match="trainer.precision"):
        TrainerConfig(precision="bf16-true")


def test_tf32_is_a_cuda_switch_and_the_peak_follows_the_dtype():
    if torch.cuda.is_available():
        assert parallel.enable_tf32() and parallel.tf32_enabled()
        assert parallel.peak_dtype(parallel.POLICIES["32-true"]) == "tfloat32"
    else:
        assert parallel.enable_tf32() is False
        assert parallel.peak_dtype(parallel.POLICIES["32-true"]) == torch.float32
    assert parallel.peak_dtype(parallel.POLICIES["bf16-mixed"]) == torch.bfloat16
