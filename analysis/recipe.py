"""A full training recipe at a target (N, D) or C from a hyperparameter fit, as `lab-train` overrides.

From lr*, B* (with their 95% intervals, `analysis.laws.hparams.predict_hparams`) it derives what a run needs:
- the batch in sequences: B*/seq_len rounded to a multiple of the granularity (micro_batch · devices);
- the steps S = D / B (the interval from B's: a larger batch, fewer steps);
- the LR warmup: `warmup_fraction` of D (the lab's default 5%, conf/optim), in tokens and in steps;
- a batch warmup (optional): GPT-3's linear ramp from B/8 to B over the LR warmup's tokens. The CBS is small
  early in training and grows (Merrill et al. 2025), so a small start batch wastes nothing; with
  `batch.lr_rescale=sqrt` lab-train scales lr by sqrt(batch / start batch), so `optim.lr` is set to
  lr*·sqrt(start / final) and the run reaches lr* when the ramp ends. A measured CBS(D) gives a better schedule:
  `lab-fit cbs` proposes its stepwise milestones.
From C alone (DeepSeek form) N and D come from `tokens_per_param` (default 20, Chinchilla's ratio and the lab's
default): N = sqrt(C / (6·r)), D = r·N, C = 6·N·D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.laws.hparams import HparamsResult, predict_hparams
from tracking.record import Param

DEFAULT_SEQ_LEN = 256
"""seq_len of a recipe when the fitted runs record none (the granularity's: analysis.points.DEFAULT_GRANULARITY)."""
WARMUP_FRACTION = 0.05
"""LR warmup as a fraction of the run's tokens (conf/optim's default warmup_fraction)."""
RAMP_START_DIVISOR = 8
"""The batch warmup starts at B/8 (GPT-3 ramped its batch up from 32k tokens to 3.2M over its first tokens)."""


@dataclass(frozen=True)
class Recipe:
    """lr*, B* and what follows from them at a target; *_ci95 are 95% intervals from the fit's bootstrap."""

    N: float
    D: float
    C: float
    form: str
    lr: float
    lr_ci95: tuple[float, float]
    B: float  # tokens, as predicted
    B_ci95: tuple[float, float]
    seq_len: int
    sequences: int  # B rounded to the granularity
    steps: int
    steps_ci95: tuple[int, int]
    warmup_tokens: float
    warmup_steps: int
    warmup_steps_ci95: tuple[int, int]
    start_sequences: int | None  # batch warmup: first batch, None without one
    # steps counts steps at the final batch; a ramp over the warmup tokens adds a few (its steps are smaller)

    def to_overrides(self) -> list[str]:
        """lab-train overrides (conf groups optim, batch, budget) that realise the recipe."""
        out = [f"budget.tokens={self.D:.6g}", f"optim.warmup_tokens={self.warmup_tokens:.6g}",
               f"model.seq_len={self.seq_len}"]
        if self.start_sequences is None:
            return [f"{Param.LR}={self.lr:.4g}", "batch.schedule=constant", f"batch.sequences={self.sequences}", *out]
        start_lr = self.lr * math.sqrt(self.start_sequences / self.sequences)  # lr_rescale=sqrt reaches lr* at B
        return [f"{Param.LR}={start_lr:.4g}", "batch.schedule=linear", f"batch.start_sequences={self.start_sequences}",
                f"batch.sequences={self.sequences}", f"batch.ramp_tokens={self.warmup_tokens:.6g}",
                "batch.lr_rescale=sqrt", *out]


def _round_to(x: float, g: int) -> int:
    return max(g, int(round(x / g)) * g)


def recipe(result: HparamsResult, seq_len: int, N: float | None = None, D: float | None = None,
           C: float | None = None, granularity: int = 8, tokens_per_param: float = 20.0,
           warmup_fraction: float = WARMUP_FRACTION, batch_warmup: bool = True) -> Recipe:
    """The recipe at (N, D) (Step Law form) or at C alone (DeepSeek form; N, D from tokens_per_param)."""
    if seq_len < 1 or granularity < 1 or not 0 < warmup_fraction < 1 or not tokens_per_param > 0:
        raise ValueError(f"need seq_len >= 1, granularity >= 1, 0 < warmup_fraction < 1 and tokens_per_param > 0; "
                         f"got seq_len={seq_len}, granularity={granularity}, warmup_fraction={warmup_fraction}, "
                         f"tokens_per_param={tokens_per_param}")
    p = predict_hparams(result, N=N, D=D, C=C)  # validates the target
    if C is not None:
        N = math.sqrt(C / (6.0 * tokens_per_param))
        D = tokens_per_param * N
    C = 6.0 * N * D
    sequences = _round_to(p.B / seq_len, granularity)
    tokens_per_step = sequences * seq_len
    lo_seq, hi_seq = (_round_to(b / seq_len, granularity) if math.isfinite(b) else sequences for b in p.B_ci95)
    steps = math.ceil(D / tokens_per_step)
    warmup = warmup_fraction * D
    start = None
    if batch_warmup:
        start = _round_to(sequences / RAMP_START_DIVISOR, granularity)
        start = None if start >= sequences else start
    return Recipe(
        N=float(N), D=float(D), C=float(C), form=p.form, lr=p.lr, lr_ci95=p.lr_ci95, B=p.B, B_ci95=p.B_ci95,
        seq_len=int(seq_len), sequences=sequences, steps=steps,
        steps_ci95=(math.ceil(D / (hi_seq * seq_len)), math.ceil(D / (lo_seq * seq_len))),
        warmup_tokens=warmup, warmup_steps=math.ceil(warmup / tokens_per_step),
        warmup_steps_ci95=(math.ceil(warmup / (hi_seq * seq_len)), math.ceil(warmup / (lo_seq * seq_len))),
        start_sequences=start)
