"""Synthetic loss curves of the Multi-Power Law (Luo et al. 2025) under four LR schedules, shared by the tests of
`lab-fit schedule` (tests/analysis) and of the Schedules page (tests/app): the law and its true parameters, each
run's lr at every step and its loss every 20 steps with 0.03% noise. The root conftest.py serves them as the
`curves_csv` fixture; tests import the constants by module name (pytest puts tests/, the root conftest's
folder, on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from analysis.laws import schedule_forms as sf
from analysis.laws.schedule_shapes import lr_sequence

STEPS, WARMUP, PEAK = 1000, 20, 3e-4 * 24
TRUE = dict(L0=2.5, A=0.6, alpha=0.45, B=400.0 / 24, C=2.0 * 24 ** (0.6 - 1), beta=0.6, gamma=0.6)
SHAPES = ("cosine", "constant", "two-stage", "wsd")
MEASURED = np.arange(WARMUP, STEPS, 20)
"""Steps at which the loss is measured (0-based, as the schedule law counts them)."""


def schedule_curves() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """shape -> (lr at each of the STEPS steps, loss at the MEASURED steps)."""
    rng = np.random.default_rng(0)
    curves = {}
    for shape in SHAPES:
        lr = lr_sequence(shape, STEPS, PEAK, WARMUP)
        curves[shape] = lr, sf.multi_power_exact(TRUE, lr, MEASURED) * (1 + 3e-4 * rng.standard_normal(MEASURED.size))
    return curves


def write_curves_csv(folder: Path) -> Path:
    """The curves as the `run_id, step, lr, loss` table lab-fit schedule --input reads (loss empty where unmeasured),
    one run per shape, named after it: folder/curves.csv."""
    frames = []
    for shape, (lr, measured) in schedule_curves().items():
        loss = np.full(STEPS, np.nan)
        loss[MEASURED] = measured
        frames.append(pl.DataFrame({"run_id": shape, "step": np.arange(STEPS), "lr": lr, "loss": loss}))
    path = folder / "curves.csv"
    pl.concat(frames).with_columns(pl.col("loss").fill_nan(None)).write_csv(path)
    return path
