"""LR sequences per optimizer step for the schedule laws: the shapes Luo et al. 2025 fit on (cosine, constant,
two-stage drop) and predict (WSD), each with a linear warmup from peak/warmup to the peak.

Step k's lr is evaluated after k + 1 steps, as lab.schedules evaluates a step at the tokens seen after it, so the
first step of a warmup already moves. Every function returns an array (steps,) in the unit of `peak`.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("cosine", "constant", "two-stage", "wsd", "linear")


def _warmup(steps: int, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    if not (steps > 0 and 0 <= warmup < steps):
        raise ValueError(f"need 0 <= warmup ({warmup}) < steps ({steps})")
    k = np.arange(steps) + 1.0  # steps done after this one
    return k, np.minimum(k / warmup, 1.0) if warmup else np.ones(steps)


def lr_sequence(shape: str, steps: int, peak: float, warmup: int = 0, final_ratio: float = 0.1,
                decay_fraction: float = 0.2, drop_fraction: float = 0.8) -> np.ndarray:
    """lr of every step of `shape`:

    - cosine: warmup, then final + (1 − final)·(1 + cos πp)/2, p the post-warmup fraction;
    - linear: warmup, then 1 − (1 − final)·p;
    - constant: warmup, then the peak;
    - two-stage: the peak until drop_fraction·steps, then final·peak (Luo et al. 2025's step drop);
    - wsd: the peak until (1 − decay_fraction)·steps, then linear to final·peak (Hu et al. 2024, MiniCPM).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown lr shape {shape!r}; use one of {', '.join(SHAPES)}")
    k, warm = _warmup(steps, warmup)
    p = np.clip((k - warmup) / (steps - warmup), 0.0, 1.0)
    if shape == "cosine":
        after = final_ratio + (1 - final_ratio) * 0.5 * (1 + np.cos(np.pi * p))
    elif shape == "linear":
        after = 1 - (1 - final_ratio) * p
    elif shape == "constant":
        after = np.ones(steps)
    elif shape == "two-stage":
        after = np.where(k <= drop_fraction * steps, 1.0, final_ratio)
    else:
        start = (1 - decay_fraction) * steps
        after = 1 - (1 - final_ratio) * np.clip((k - start) / (steps - start), 0.0, 1.0)
    return peak * np.where(k <= warmup, warm, after)
