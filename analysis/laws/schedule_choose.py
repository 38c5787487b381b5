"""Choose an LR schedule with a fitted schedule law: the non-increasing schedule after warmup that minimises the
predicted final loss, next to cosine and WSD of the same length, written as a table lab-train runs.

Parametrisation: after a linear warmup, the lr multiplier is piecewise linear through knots at fixed fractions of the
post-warmup steps (KNOTS, denser near the end, where Luo et al. 2025 find the optimal schedules do their decay,
WSD-like), starting at 1 (the peak). The knot values are 1 − cumsum(softmax(z))[:K] with z free, so every
z gives a non-increasing schedule in [0, 1]; the final loss is minimised over z by L-BFGS-B (numerical gradient;
one evaluation is one predicted point of the curve, ~ms).

Output table (`write_lr_table`, read by lab.schedules.read_lr_table): columns `fraction` (fraction of the run's
tokens, 0..1, increasing) and `lr_multiplier` (fraction of optim.lr), the warmup included; lab-train interpolates
linearly between rows (optim.schedule=table optim.table=PATH).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from analysis.laws.schedule import ScheduleFit, predict_curve
from analysis.laws.schedule_shapes import lr_sequence

KNOTS = (0.0, 0.25, 0.5, 0.65, 0.75, 0.82, 0.88, 0.92, 0.95, 0.975, 1.0)
"""Fractions of the post-warmup steps where the chosen schedule has a knot."""


@dataclass(frozen=True)
class ScheduleChoice:
    """The chosen schedule and the predicted final losses of it, cosine and WSD (same steps, peak, warmup)."""

    steps: int
    peak_lr: float
    warmup: int
    fractions: tuple[float, ...]
    """Knots as fractions of the run (warmup included), 0 … 1."""
    multipliers: tuple[float, ...]
    """lr / peak at each knot."""
    predicted_final: dict[str, float]
    """Predicted final loss of 'chosen', 'cosine' and 'wsd'."""

    def lr(self) -> np.ndarray:
        """The chosen lr of every optimizer step (step k evaluated after k + 1 steps, as lab.schedules)."""
        return self.peak_lr * np.interp((np.arange(self.steps) + 1.0) / self.steps, self.fractions, self.multipliers)

    def to_dict(self) -> dict:
        return {"steps": self.steps, "peak_lr": self.peak_lr, "warmup": self.warmup,
                "table": [{"fraction": f, "lr_multiplier": m} for f, m in zip(self.fractions, self.multipliers)],
                "predicted_final": self.predicted_final}


def _knot_values(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return np.clip(1.0 - np.cumsum(e / e.sum())[:-1], 0.0, 1.0)  # K values, non-increasing, in [0, 1]


def choose_schedule(fit: ScheduleFit, steps: int, peak_lr: float, warmup: int, min_ratio: float = 0.0,
                    cosine_final: float = 0.1, wsd_decay: float = 0.2) -> ScheduleChoice:
    """The non-increasing post-warmup schedule (KNOTS) minimising fit's predicted loss after `steps` steps.

    min_ratio: floor of the multiplier (the chosen schedule never goes below min_ratio·peak). The comparisons are
    cosine to cosine_final·peak and WSD with a linear decay over the last wsd_decay of the run to min_ratio·peak.
    """
    if not (steps > 1 and 0 <= warmup < steps and peak_lr > 0 and 0 <= min_ratio < 1):
        raise ValueError(f"need steps > 1, 0 <= warmup < steps, peak_lr > 0 and min_ratio in [0, 1); got steps="
                         f"{steps}, warmup={warmup}, peak_lr={peak_lr}, min_ratio={min_ratio}")
    fractions = np.array([warmup / steps + k * (1 - warmup / steps) for k in KNOTS])
    if warmup:
        fractions = np.concatenate([[0.0], fractions])
    last = np.array([steps - 1])

    def table(z: np.ndarray) -> np.ndarray:
        post = np.concatenate([[1.0], min_ratio + (1 - min_ratio) * _knot_values(z)])
        return np.concatenate([[0.0], post]) if warmup else post

    def final_loss(z: np.ndarray) -> float:
        if not np.isfinite(z).all():
            return 1e6
        lr = peak_lr * np.interp((np.arange(steps) + 1.0) / steps, fractions, table(z))
        loss = float(predict_curve(fit, lr, last)[0])
        return loss if np.isfinite(loss) else 1e6  # the law predicts no positive loss there: never choose it

    n = len(KNOTS)  # K − 1 knot values after the first, and one softmax slot for the remainder
    starts = [np.zeros(n), np.concatenate([np.full(n - 1, -4.0), [0.0]]), np.linspace(-3, 1, n)]
    best = min((minimize(final_loss, z0, method="L-BFGS-B", options={"maxiter": 200}) for z0 in starts),
               key=lambda r: r.fun)
    chosen = tuple(float(v) for v in table(best.x))
    compare = comparisons(steps, peak_lr, warmup, min_ratio, cosine_final, wsd_decay)
    predicted = {"chosen": float(best.fun),
                 **{k: float(predict_curve(fit, lr, last)[0]) for k, lr in compare.items()}}
    return ScheduleChoice(steps, peak_lr, warmup, tuple(float(f) for f in fractions), chosen, predicted)


def comparisons(steps: int, peak_lr: float, warmup: int, min_ratio: float = 0.0, cosine_final: float = 0.1,
                wsd_decay: float = 0.2) -> dict[str, np.ndarray]:
    """The lr of every step of the schedules a choice is compared with (choose_schedule's defaults): cosine to
    cosine_final·peak and WSD decaying linearly over the last wsd_decay of the run to min_ratio·peak."""
    return {"cosine": lr_sequence("cosine", steps, peak_lr, warmup, final_ratio=cosine_final),
            "wsd": lr_sequence("wsd", steps, peak_lr, warmup, final_ratio=min_ratio, decay_fraction=wsd_decay)}


def write_lr_table(choice: ScheduleChoice, path: str | Path) -> Path:
    """The chosen schedule as the CSV lab-train reads (module docstring)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fraction", "lr_multiplier"])
        for fraction, multiplier in zip(choice.fractions, choice.multipliers):
            writer.writerow([f"{fraction:.9g}", f"{multiplier:.9g}"])
    return path
