"""Cross-entropy of a linear output head, optionally in chunks that never hold the full (M, V) logits.

L = mean over targets t_i != ignore_index of  logsumexp_j(z_ij) - z_i,t_i,   z = scale · h W^T   (nats/token).

The chunked path is the "fused linear cross-entropy" trick (as in Liger-Kernel, Hsu et al. 2024): for each chunk
of rows, compute the logits, the loss and, in the same pass, dL/dz = (softmax(z) - onehot(t)) / n_valid, which
gives dL/dh = scale · dL/dz W and dL/dW += scale · dL/dz^T h. Only those gradients (the size of h and W) are kept,
so peak memory holds one (chunk, V) block instead of (M, V); the backward multiplies them by the incoming grad.

Precision: the three matmuls (logits, dL/dh, dL/dW) run in the compute dtype — bf16 under autocast (or for bf16
inputs), else the inputs' dtype — with the GEMM's own fp32 accumulation; logits, softmax, the loss and the sum of
the weight gradient over chunks are kept in float32 (float64 for float64 inputs). The casts are explicit, because
an autograd Function's in-place ``addmm_`` (and FSDP without autocast) would otherwise run fp32 GEMMs.

A padded head (``vocab_size`` < weight rows, lab.model's ``vocab_multiple_of``) has its padding logits set to
-inf before the softmax: they are never predicted, add nothing to the normaliser and get no gradient.

ignore_index=-100 is supported on both paths, as in ``F.cross_entropy``: ignored targets add no loss and no
gradient, and the mean is over the remaining targets (NaN when every target is ignored, as F.cross_entropy).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

IGNORE_INDEX = -100


def _flatten(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (B, T, d) or (M, d) -> (M, d); targets (B, T) or (M,) -> (M,); checks the shapes agree."""
    if hidden.ndim not in (2, 3) or weight.ndim != 2 or hidden.size(-1) != weight.size(1):
        raise ValueError(f"cross_entropy: hidden {tuple(hidden.shape)} must be (B, T, d) or (M, d) and weight "
                         f"{tuple(weight.shape)} must be (V, d) with the same d")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"cross_entropy: targets {tuple(targets.shape)} must match hidden's leading dims "
                         f"{tuple(hidden.shape[:-1])}")
    return hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)  # float32, or float64 for float64 inputs


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """dtype the loss's matmuls run in: autocast's lower-precision dtype where autocast is on for ``t``'s device,
    else ``t``'s own floating dtype."""
    device = t.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return t.dtype


def _padding(rows: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    """(rows,) mask of the padded head rows, True from vocab_size on."""
    return torch.arange(rows, device=device) >= vocab_size


def _chunk_grad_logits(z: torch.Tensor, lse: torch.Tensor, t: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """d(sum of chunk losses)/dz = softmax(z) - onehot(t), zero on ignored rows; overwrites z (c, V)."""
    g = z.sub_(lse[:, None]).exp_()  # softmax, in place: z is not needed again
    g[torch.arange(g.size(0), device=g.device), t] -= 1.0
    return g.mul_(valid[:, None].to(g.dtype))


def _chunked(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: float, chunk_size: int,
    ignore_index: int, need_grad_h: bool, need_grad_w: bool, vocab_size: Optional[int] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Mean loss and, where asked, its gradients w.r.t. hidden (M, d) and weight (V, d), chunk by chunk."""
    acc, cd = _acc_dtype(hidden), compute_dtype(hidden)
    valid_all = targets != ignore_index  # (M,)
    n_valid = valid_all.sum().to(acc)
    loss_sum = torch.zeros((), dtype=acc, device=hidden.device)
    grad_h = torch.empty(hidden.shape, dtype=acc, device=hidden.device) if need_grad_h else None  # (M, d)
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_grad_w else None  # (V, d)
    w_cd = weight.to(cd)  # (V, d), one cast for every chunk
    for start in range(0, hidden.size(0), chunk_size):
        rows = slice(start, start + chunk_size)
        h, valid = hidden[rows].to(cd), valid_all[rows]  # (c, d), (c,)
        t = targets[rows].masked_fill(~valid, 0)  # a safe gather index on ignored rows
        z = (h @ w_cd.T).to(acc) * scale  # (c, V)
        if vocab_size is not None and vocab_size < z.size(1):
            z[:, vocab_size:] = -math.inf  # padding: never predicted
        lse = torch.logsumexp(z, dim=-1)  # (c,)
        z_t = z.gather(1, t[:, None]).squeeze(1)  # (c,)
        loss_sum += ((lse - z_t) * valid).sum()
        if grad_h is None and grad_w is None:
            continue
        g = _chunk_grad_logits(z, lse, t, valid).mul_(scale)  # d(loss sum)/d(h W^T), (c, V)
        g = g.to(cd)
        if grad_h is not None:
            grad_h[rows] = g @ w_cd
        if grad_w is not None:
            grad_w += g.T @ h  # (V, d) in the compute dtype, summed over chunks in acc
    # Mean over valid targets; 0/0 = NaN when all are ignored, matching F.cross_entropy.
    loss = loss_sum / n_valid  # float32 (float64) even for half-precision inputs
    grad_h = (grad_h / n_valid).to(hidden.dtype) if grad_h is not None else None
    grad_w = (grad_w / n_valid).to(weight.dtype) if grad_w is not None else None
    return loss, grad_h, grad_w


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss in the forward pass together with its gradients; the backward only scales the stored gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, scale, chunk_size, ignore_index, vocab_size):  # type: ignore[override]
        loss, grad_h, grad_w = _chunked(hidden, weight, targets, scale, chunk_size, ignore_index,
                                        ctx.needs_input_grad[0], ctx.needs_input_grad[1], vocab_size)
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        return (
            grad_h * grad_loss if grad_h is not None else None,
            grad_w * grad_loss if grad_w is not None else None,
            None, None, None, None, None,
        )


def cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    scale: float = 1.0,
    chunk_size: Optional[int] = None,
    ignore_index: int = IGNORE_INDEX,
    vocab_size: Optional[int] = None,
) -> torch.Tensor:
    """Mean cross-entropy in nats/token of logits = scale · hidden @ weight.T against targets, as a float32
    scalar (float64 for float64 inputs).

    hidden (B, T, d) or (M, d); weight (V, d); targets (B, T) or (M,) token ids. ``chunk_size`` None is the
    reference path (full logits, ``F.cross_entropy``); an int processes that many rows at a time and never
    materialises the full logits (see the module docstring). Both give the same value and gradients.
    ``vocab_size``: the real vocabulary when weight has padding rows after it (their logits are masked).
    """
    h, t = _flatten(hidden, weight, targets)
    if chunk_size is None:
        cd = compute_dtype(h)
        logits = (h.to(cd) @ weight.to(cd).T).to(_acc_dtype(h)) * scale  # (M, V)
        if vocab_size is not None and vocab_size < logits.size(1):
            logits = logits.masked_fill(_padding(logits.size(1), vocab_size, logits.device), -math.inf)
        return F.cross_entropy(logits, t, ignore_index=ignore_index)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"cross_entropy: chunk_size={chunk_size!r}; use a positive number of rows, or None")
    if not torch.is_grad_enabled():
        # Evaluation: no graph is wanted, so skip the gradients (parameters still say requires_grad here).
        return _chunked(h, weight, t, scale, chunk_size, ignore_index, False, False, vocab_size)[0]
    return _ChunkedLinearCrossEntropy.apply(h, weight, t, scale, chunk_size, ignore_index, vocab_size)
