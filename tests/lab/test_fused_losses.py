"""Liger and Cut Cross-Entropy against lab's reference loss, where installed and a GPU is present; the choice fails
clearly where they are not."""

from __future__ import annotations

import pytest
import torch

from lab.fused_losses import LossImplError, available, loss_function
from lab.losses import cross_entropy


def test_lab_is_the_reference_and_unknown_or_missing_kernels_are_named():
    assert loss_function("lab") is cross_entropy
    with pytest.raises(LossImplError, match="trainer.loss_impl"):
        loss_function("triton-magic")
    for impl in ("liger", "cce"):
        if available(impl) is None:
            with pytest.raises(LossImplError, match=r"pip install -e '\.\[gpu\]'"):
                loss_function(impl)


@pytest.mark.parametrize("impl", ["liger", "cce"])
@pytest.mark.parametrize("V", [50_257, 50_304])
def test_third_party_kernel_matches_the_reference(impl, V):
    fn = available(impl)
    if fn is None or not torch.cuda.is_available():
        pytest.skip(f"{impl} needs its package (the gpu extra) and CUDA")
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(2048, 256, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
    weight = (0.02 * torch.randn(50_304, 256, device="cuda", generator=g, dtype=torch.bfloat16)).requires_grad_()
    targets = torch.randint(0, V, (2048,), device="cuda", generator=g)
    targets[::9] = -100
    out = {}
    for name, f in (("ref", cross_entropy), (impl, fn)):
        loss = f(hidden, weight, targets, scale=0.5, vocab_size=V)
        out[name] = (loss.float(), *torch.autograd.grad(loss, [hidden, weight]))
    assert abs(float(out["ref"][0] - out[impl][0])) < 1e-2
    for a, b in zip(out["ref"][1:], out[impl][1:]):
        assert torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0) > 0.999
