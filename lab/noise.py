"""Gradient noise scale B_simple from gradient norms at two batch sizes (McCandlish et al. 2018, appendix A).

For a batch of b examples the minibatch gradient G_b satisfies E|G_b|² = |G|² + tr(Σ)/b, with G the true
gradient and Σ the per-example gradient covariance. Two batch sizes b < B give unbiased estimates

    |G|²   ≈ (B·|G_B|² − b·|G_b|²) / (B − b)
    tr(Σ)  ≈ (|G_b|² − |G_B|²) / (1/b − 1/B)

each smoothed by an exponential moving average before the ratio B_simple = tr(Σ)/|G|² (the ratio of noisy
estimates is biased; the ratio of smoothed ones much less so). B_simple comes out in the unit of b and B:
pass them in tokens to get B_simple in tokens (design §4: B is in tokens).

How the trainer measures the two norms (lab/module.py, manual optimization): the small batch is the *first*
micro-batch of an optimizer step, measured right after its backward, when .grad holds only its gradient
(.grad starts empty after zero_grad(set_to_none=True)); the big batch is the accumulated (and, under DDP,
all-reduced) step gradient just before the optimizer step. The cost is one fused norm over the gradients per
step, plus the norm of the step gradient that the trainer logs as grad_norm anyway; the estimate is logged every
LOG_EVERY_STEPS steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


LOG_EVERY_STEPS = 10
"""The trainer measures B_simple at every step (one norm, ~0.3% of a size-4 step, ~1% of a tiny one) but logs it
every 10th step and at the last: it is an EMA over ~20 measurements, so denser points add nothing, and an MLflow
metric per step costs more than the measurement itself (benchmarks/noise_cost.py)."""


class NoiseScaleError(ValueError):
    """Bad input to the noise-scale estimator; the message names the value and the fix."""


def unbiased_estimates(g_small_sq: float, b_small: float, g_big_sq: float, b_big: float) -> tuple[float, float]:
    """(|G|², tr(Σ)) from |G_b|² at b = b_small and |G_B|² at B = b_big (McCandlish et al. 2018, eqs. A.2, A.3).

    Both estimates are unbiased but noisy; either can be negative for a single measurement.
    """
    if not 0 < b_small < b_big:
        raise NoiseScaleError(f"batch sizes b_small={b_small}, b_big={b_big} must satisfy 0 < b_small < b_big;"
                              " the small batch is a micro-batch, the big one the whole step")
    G2 = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
    S = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
    return G2, S


class NoiseScale:
    """Bias-corrected EMAs of |G|² and tr(Σ), and their ratio B_simple.

    EMA: m_k = decay·m_{k−1} + (1 − decay)·x_k with m_0 = 0, corrected m_k / (1 − decay^k) (as in Adam), so
    the first estimate is the first measurement rather than a value shrunk towards 0.
    """

    def __init__(self, decay: float = 0.95) -> None:
        if not 0.0 <= decay < 1.0:
            raise NoiseScaleError(f"NoiseScale decay={decay} must be in [0, 1); 0.95 averages ~20 measurements")
        self.decay = decay
        self.G2_ema = 0.0
        self.S_ema = 0.0
        self.count = 0
        """Measurements averaged so far."""
        self.skipped = 0
        """Non-finite measurements ignored (e.g. fp16 overflow steps that the grad scaler also skips)."""

    def update(self, g_small_sq: float, b_small: float, g_big_sq: float, b_big: float) -> float | None:
        """Add one pair of measurements; return B_simple in the unit of b, or None while undefined.

        B_simple is undefined while the smoothed |G|² is not positive (early, noisy estimates) and for a
        non-finite measurement, which is skipped rather than allowed to poison the averages.
        """
        G2, S = unbiased_estimates(g_small_sq, b_small, g_big_sq, b_big)
        if not (math.isfinite(G2) and math.isfinite(S)):
            self.skipped += 1
            return None
        self.G2_ema = self.decay * self.G2_ema + (1.0 - self.decay) * G2
        self.S_ema = self.decay * self.S_ema + (1.0 - self.decay) * S
        self.count += 1
        return self.b_simple

    @property
    def G2(self) -> float:
        """Bias-corrected EMA of |G|² (nan before the first update)."""
        return self.G2_ema / (1.0 - self.decay**self.count) if self.count else math.nan

    @property
    def S(self) -> float:
        """Bias-corrected EMA of tr(Σ) (nan before the first update)."""
        return self.S_ema / (1.0 - self.decay**self.count) if self.count else math.nan

    @property
    def b_simple(self) -> float | None:
        """B_simple = tr(Σ)/|G|² from the smoothed estimates, or None while |G|² ≤ 0 or no data."""
        if self.count == 0 or not self.G2 > 0:
            return None
        return self.S / self.G2

    def state_dict(self) -> dict[str, float | int]:
        return {"decay": self.decay, "G2_ema": self.G2_ema, "S_ema": self.S_ema, "count": self.count,
                "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        if float(state["decay"]) != self.decay:
            raise NoiseScaleError(f"checkpoint noise-scale decay={state['decay']} differs from the configured"
                                  f" decay={self.decay}; resume with the same decay")
        self.G2_ema = float(state["G2_ema"])
        self.S_ema = float(state["S_ema"])
        self.count = int(state["count"])
        self.skipped = int(state["skipped"])


def grad_sq_norm_tensor(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """Σ |p.grad|² over parameters with a gradient, as a 0-d float64 tensor on the first gradient's device, with
    no host sync; accumulated in at least float32 whatever the gradient dtype.

    Uses one fused torch._foreach_norm per device and dtype group (as clip_grad_norm_ does). Float32 accumulation
    matters: the noise estimate subtracts two close squared norms, which bf16 would swamp. Gradients are assumed
    whole on each rank (single device or DDP); sharded gradients (FSDP) need their squared norms summed across
    shards by the caller.
    """
    # Group by device and accumulation dtype: float64 gradients keep float64, everything else gets float32.
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            acc = torch.float64 if p.grad.dtype == torch.float64 else torch.float32
            groups.setdefault((p.grad.device, acc), []).append(p.grad)
    if not groups:
        return torch.zeros((), dtype=torch.float64)
    partial = []
    for (_, acc), grads in groups.items():
        if hasattr(torch, "_foreach_norm"):
            norms = torch._foreach_norm(grads, 2, dtype=acc)
        else:  # older torch: one kernel per tensor, same result
            norms = [torch.linalg.vector_norm(g, dtype=acc) for g in grads]
        partial.append(torch.stack(norms).square().sum().double())
    first = partial[0].device
    return torch.stack([x.to(first) for x in partial]).sum()


def grad_sq_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """:func:`grad_sq_norm_tensor` read on the host (one sync)."""
    return float(grad_sq_norm_tensor(parameters).item())


