"""Gradient noise scale B_simple from gradient norms at two batch sizes (McCandlish et al. 2018, appendix A).

For a batch of b examples the minibatch gradient G_b satisfies E|G_b|² = |G|² + tr(Σ)/b, with G the true
gradient and Σ the per-example gradient covariance. Two batch sizes b < B give unbiased estimates

    |G|²   ≈ (B·|G_B|² − b·|G_b|²) / (B − b)
    tr(Σ)  ≈ (|G_b|² − |G_B|²) / (1/b − 1/B)

each smoothed by an exponential moving average before the ratio B_simple = tr(Σ)/|G|² (the ratio of noisy
estimates is biased; the ratio of smoothed ones much less so). B_simple comes out in the unit of b and B:
pass them in tokens to get B_simple in tokens (design §4: B is in tokens).

How the trainer measures the two norms (see :class:`MicroGradMeter`): the small batch is the *first*
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


class MicroGradMeter:
    """Measures |g_micro|² on the first micro-batch of a step and |G_step|² before the optimizer step.

    Why the first micro-batch only: after zero_grad(set_to_none=True), .grad after the first backward *is*
    that micro-batch's gradient (times 1/loss_divisor), so one norm suffices. Measuring every micro-batch
    would need a copy of .grad before each backward (a parameter-sized buffer and A extra passes); the first
    micro-batch is an unbiased sample of the same quantity, and the EMA averages over steps anyway.

    Batch sizes in tokens: b = micro_tokens (one micro-batch on one rank), B = A·micro_tokens·world_size (the
    step gradient accumulated over A micro-batches and averaged over ranks). Under DDP this needs the first
    A − 1 backward passes to run without gradient sync, so that the first micro-batch's .grad is rank-local:
    Lightning's automatic optimization does so; with manual optimization wrap them in
    ``self.trainer.strategy.block_backward_sync()`` (which also saves A − 1 all-reduces per step). If every
    backward syncs instead, the first micro-batch is really micro_tokens·world_size tokens: construct the meter
    with micro_tokens = micro·seq_len·world_size and world_size = 1. With A = 1 there is no smaller batch to
    compare with and the meter returns None.

    Lightning wiring (automatic optimization divides each micro-batch loss by A):
        on_before_backward(loss):  meter.before_backward(self.parameters())
        on_after_backward():       meter.after_backward(self.parameters(), loss_divisor=A, grad_scale=s)
        on_before_optimizer_step:  b = meter.before_optimizer_step(self.parameters())
                                   (after AMP unscaling and before clipping; log grad_norm from
                                   meter.last_big_sq and noise/b_simple from b when not None)
        on_save_checkpoint / on_load_checkpoint: meter.state_dict() / meter.load_state_dict(...)
    With manual optimization call before_backward/after_backward around each manual_backward, then
    before_optimizer_step(params, step_grad_sq=norm**2) with the pre-clip norm that clip_grad_norm_ returns,
    which reuses that norm instead of computing a second one.
    s is the fp16 GradScaler scale at backward time (1.0 for fp32 or bf16).
    """

    def __init__(self, micro_tokens: int, world_size: int = 1, decay: float = 0.95, every: int = 1) -> None:
        if micro_tokens <= 0 or world_size <= 0 or every <= 0:
            raise NoiseScaleError(f"MicroGradMeter(micro_tokens={micro_tokens}, world_size={world_size},"
                                  f" every={every}): all must be positive integers")
        self.micro_tokens = micro_tokens
        self.world_size = world_size
        self.every = every
        """Measure on every ``every``-th optimizer step (1 = each step)."""
        self.noise = NoiseScale(decay)
        self.step = 0
        """Optimizer steps seen (for ``every``)."""
        self.micro = 0
        """Backward passes since the last optimizer step (= A at the step)."""
        self.loss_divisor = 1.0
        self.last_small_sq: float | None = None
        """|g_micro|² of the current step's first micro-batch (in loss units per token, unscaled)."""
        self.last_big_sq: float | None = None
        """|G_step|² of the last step (its square root is the pre-clipping grad_norm)."""

    @property
    def measuring(self) -> bool:
        return self.step % self.every == 0

    def before_backward(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Check that the first micro-batch starts from empty gradients (what makes one norm enough)."""
        if self.micro == 0 and self.measuring and any(p.grad is not None for p in parameters):
            raise NoiseScaleError("MicroGradMeter: .grad is not empty before the first backward of a step, so the"
                                  " micro-batch gradient cannot be read from it; call"
                                  " optimizer.zero_grad(set_to_none=True) before the first micro-batch")

    def after_backward(self, parameters: Iterable[torch.nn.Parameter], loss_divisor: float = 1.0,
                       grad_scale: float = 1.0) -> None:
        """Record |g_micro|² after the first backward of a step; later micro-batches cost nothing.

        loss_divisor: what each micro-batch loss was divided by before backward (A under Lightning).
        grad_scale: the fp16 loss scale still applied to .grad (1.0 otherwise).
        """
        if loss_divisor <= 0 or grad_scale <= 0:
            raise NoiseScaleError(f"after_backward(loss_divisor={loss_divisor}, grad_scale={grad_scale}):"
                                  " both must be > 0")
        if self.micro == 0 and self.measuring:
            self.last_small_sq = grad_sq_norm(parameters) * (loss_divisor / grad_scale) ** 2
        self.loss_divisor = loss_divisor
        self.micro += 1

    def before_optimizer_step(self, parameters: Iterable[torch.nn.Parameter], grad_scale: float = 1.0,
                              step_grad_sq: float | None = None) -> float | None:
        """Record |G_step|², update the EMAs and return B_simple [tokens], or None when not measured/defined.

        .grad now holds Σ_k g_k / loss_divisor (averaged over ranks), so G_step = .grad · loss_divisor / A.
        Pass ``step_grad_sq`` if the trainer already computed Σ|.grad|² (unscaled) for this step.
        """
        A, measured = self.micro, self.measuring
        self.micro = 0
        self.step += 1
        if A == 0:
            raise NoiseScaleError("MicroGradMeter.before_optimizer_step called with no after_backward since the"
                                  " last step; call after_backward after every backward")
        raw = grad_sq_norm(parameters) / grad_scale**2 if step_grad_sq is None else step_grad_sq
        self.last_big_sq = raw * (self.loss_divisor / A) ** 2
        if not measured or A < 2 or self.last_small_sq is None:
            return None
        small, self.last_small_sq = self.last_small_sq, None
        return self.noise.update(small, self.micro_tokens, self.last_big_sq,
                                 A * self.micro_tokens * self.world_size)

    def state_dict(self) -> dict[str, object]:
        return {"step": self.step, "noise": self.noise.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.step = int(state["step"])  # type: ignore[arg-type]
        self.noise.load_state_dict(state["noise"])  # type: ignore[arg-type]
        self.micro = 0
        self.last_small_sq = None
