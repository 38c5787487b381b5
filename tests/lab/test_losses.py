"""The chunked linear cross-entropy against the naive F.cross_entropy path: values and gradients."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lab.losses import cross_entropy
from lab.model import GPT, GPTConfig

V, d = 37, 12  # a vocabulary no chunk size divides


def inputs(dtype, shape=(3, 7), seed=0, ignore_fraction=0.0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, d, dtype=dtype, generator=g).requires_grad_()
    weight = torch.randn(V, d, dtype=dtype, generator=g).requires_grad_()
    targets = torch.randint(0, V, shape, generator=g)
    if ignore_fraction:
        targets[torch.rand(shape, generator=g) < ignore_fraction] = -100
    return hidden, weight, targets


def loss_and_grads(hidden, weight, targets, **kwargs):
    loss = cross_entropy(hidden, weight, targets, **kwargs)
    grad_h, grad_w = torch.autograd.grad(loss, [hidden, weight])
    return loss, grad_h, grad_w


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 7, 21, 64])  # 21 rows: 4, 5 and 64 leave a ragged chunk
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_chunked_equals_naive_values_and_gradients(dtype, atol, chunk_size, scale):
    hidden, weight, targets = inputs(dtype)
    ref = loss_and_grads(hidden, weight, targets, scale=scale)
    out = loss_and_grads(hidden, weight, targets, scale=scale, chunk_size=chunk_size)
    assert out[0].dtype == dtype
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, atol=atol, rtol=0)


def test_naive_path_is_f_cross_entropy_of_scaled_logits():
    hidden, weight, targets = inputs(torch.float64, shape=(10,))
    logits = hidden @ weight.T * 0.5
    expected = torch.nn.functional.cross_entropy(logits, targets)
    torch.testing.assert_close(cross_entropy(hidden, weight, targets, scale=0.5), expected)
    assert 0 < expected.item() < 20


@pytest.mark.parametrize("chunk_size", [None, 3, 8])
def test_ignore_index_matches_f_cross_entropy(chunk_size):
    hidden, weight, targets = inputs(torch.float64, shape=(4, 6), ignore_fraction=0.4)
    n_valid = (targets != -100).sum().item()
    assert 0 < n_valid < targets.numel()
    keep = targets != -100
    # Reference: the mean over only the kept rows.
    ref = loss_and_grads(hidden, weight, targets, chunk_size=None)
    out = loss_and_grads(hidden, weight, targets, chunk_size=chunk_size)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, atol=1e-10, rtol=0)
    kept_loss = torch.nn.functional.cross_entropy(hidden[keep] @ weight.T, targets[keep])
    torch.testing.assert_close(out[0], kept_loss, atol=1e-12, rtol=0)
    assert torch.all(out[1][~keep] == 0)  # ignored rows get no gradient


def test_all_targets_ignored_gives_nan_like_f_cross_entropy():
    hidden, weight, targets = inputs(torch.float64, shape=(5,))
    targets[:] = -100
    assert torch.isnan(cross_entropy(hidden, weight, targets))
    assert torch.isnan(cross_entropy(hidden, weight, targets, chunk_size=2))


def test_upstream_gradient_scales_the_stored_gradients():
    hidden, weight, targets = inputs(torch.float64)
    (3.0 * cross_entropy(hidden, weight, targets, chunk_size=4)).backward()
    ref_h, ref_w = torch.autograd.grad(3.0 * cross_entropy(hidden, weight, targets), [hidden, weight])
    torch.testing.assert_close(hidden.grad, ref_h, atol=1e-10, rtol=0)
    torch.testing.assert_close(weight.grad, ref_w, atol=1e-10, rtol=0)


def test_no_grad_and_frozen_weight_paths():
    hidden, weight, targets = inputs(torch.float64)
    ref = cross_entropy(hidden, weight, targets)
    with torch.no_grad():
        torch.testing.assert_close(cross_entropy(hidden, weight, targets, chunk_size=5), ref.detach())
    loss = cross_entropy(hidden, weight.detach(), targets, chunk_size=5)
    (grad_h,) = torch.autograd.grad(loss, [hidden])
    torch.testing.assert_close(grad_h, torch.autograd.grad(ref, [hidden])[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("overrides", [{"mup": True, "mup_base_width": 8}, {"tie_embeddings": True}])
def test_chunked_loss_through_a_gpt_gives_the_same_parameter_gradients(overrides):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, seq_len=16, d_model=16, n_layers=2, n_heads=2, **overrides)
    model = GPT(cfg).double()
    idx = torch.randint(0, cfg.vocab_size, (3, 11))
    x, y = idx[:, :-1], idx[:, 1:]

    def grads(chunk_size):
        loss = cross_entropy(model.hidden(x), model.output_weight, y, scale=model.logit_scale, chunk_size=chunk_size)
        return loss, torch.autograd.grad(loss, list(model.parameters()))

    reference = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    ref_loss, ref_grads = grads(None)
    loss, out_grads = grads(7)
    torch.testing.assert_close(ref_loss, reference, atol=1e-12, rtol=0)
    torch.testing.assert_close(loss, ref_loss, atol=1e-10, rtol=0)
    for g, r in zip(out_grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=0)


def test_bad_shapes_and_chunk_sizes_are_rejected():
    hidden, weight, targets = inputs(torch.float32)
    with pytest.raises(ValueError, match="targets"):
        cross_entropy(hidden, weight, targets[:, :3])
    with pytest.raises(ValueError, match="same d"):
        cross_entropy(hidden, weight[:, :5], targets)
    with pytest.raises(ValueError, match="chunk_size=0"):
        cross_entropy(hidden, weight, targets, chunk_size=0)


def test_bfloat16_inputs_accumulate_in_float32():
    hidden, weight, targets = inputs(torch.float32)
    h16, w16 = (t.detach().bfloat16().requires_grad_() for t in (hidden, weight))
    loss, grad_h, grad_w = loss_and_grads(h16, w16, targets, chunk_size=4)
    ref = loss_and_grads(h16, w16, targets)
    assert loss.dtype == torch.float32 and grad_h.dtype == grad_w.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref[0], atol=1e-5, rtol=0)  # same bf16 products, float32 reductions
    torch.testing.assert_close(grad_h, ref[1], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(grad_w, ref[2], atol=1e-2, rtol=1e-2)


class LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_path_never_builds_the_full_logits():
    hidden, weight, targets = inputs(torch.float32, shape=(40,))  # full logits: 40 × 37 = 1480 elements
    with LargestOutput() as naive:
        torch.autograd.grad(cross_entropy(hidden, weight, targets), [hidden, weight])
    with LargestOutput() as chunked:
        torch.autograd.grad(cross_entropy(hidden, weight, targets, chunk_size=4), [hidden, weight])
    assert naive.largest >= 40 * V
    assert chunked.largest == max(4 * V, V * d, 40 * d)  # a (4, V) chunk, the (V, d) and (M, d) gradients
