"""Dense, noisy curves (a raw per-step training loss in a table): lab-fit schedule fits window means of at most
--points points per run, so the noise averages out and the fit costs the same whatever the cadence, while errors and
--predict-out still cover every measured point."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from analysis.cli import main as lab_fit
from analysis.laws import schedule_forms as sf
from analysis.laws.schedule import Curve, thin_curve
from analysis.laws.schedule_shapes import lr_sequence

STEPS, WARMUP, PEAK, NOISE = 6000, 120, 1.2e-3, 0.01
TRUE = dict(L0=2.5, A=0.6, alpha=0.45, B=100.0, C=2.0 * 4 ** (0.6 - 1), beta=0.6, gamma=0.6)


def test_thin_curve_keeps_sparse_curves_and_averages_dense_ones_but_never_across_an_lr_drop():
    lr = lr_sequence("two-stage", 1000, 1e-3, 10, drop_fraction=0.503)
    steps = np.arange(1000)
    loss = np.where(steps < 503, 3.0, 2.0) + 0.1 * (steps % 2)  # alternating noise of mean 0.05
    curve = Curve("r", lr, steps, loss)
    assert thin_curve(curve, 1000) is curve
    thin = thin_curve(curve, 96)  # windows of 10 measured points: +-5 steps
    assert thin.steps.size == 96 and thin.steps[-1] == 999 and thin.steps[0] == 0
    # the lr drops between steps 502 and 503 (and climbs 10% a step through the 10-step warmup)
    straddles = (thin.steps - 5 < 503) & (thin.steps + 5 >= 503)
    assert straddles.sum() == 1
    np.testing.assert_array_equal(thin.loss[straddles], loss[thin.steps[straddles]])
    clean = ~straddles & (thin.steps > 15) & (thin.steps < 994)
    np.testing.assert_allclose(thin.loss[clean], np.where(thin.steps[clean] < 503, 3.05, 2.05), atol=0.0051)


@pytest.fixture(scope="module")
def dense_table(tmp_path_factory):
    rng = np.random.default_rng(0)
    frames, truth = [], {}
    for shape in ("cosine", "constant", "two-stage", "wsd"):
        lr = lr_sequence(shape, STEPS, PEAK, WARMUP)
        exact = sf.multi_power_exact(TRUE, lr, np.arange(0, STEPS, 25))
        truth[shape] = np.interp(np.arange(STEPS), np.arange(0, STEPS, 25), exact)
        loss = truth[shape] * (1 + NOISE * rng.standard_normal(STEPS))
        frames.append(pl.DataFrame({"run_id": shape, "step": np.arange(STEPS), "lr": lr, "loss": loss}))
    path = tmp_path_factory.mktemp("dense") / "curves.csv"
    pl.concat(frames).write_csv(path)
    return path, truth


def test_a_dense_noisy_table_predicts_the_held_out_curve_within_a_tenth_of_its_noise(dense_table, tmp_path):
    path, truth = dense_table
    out = tmp_path / "pred.csv"
    code = lab_fit(["schedule", "--input", str(path), "--fit-runs", "cosine", "constant", "two-stage",
                    "--bootstrap", "0", "--predict-out", str(out), "-q"])
    assert code == 0
    pred = pl.read_csv(out)
    wsd = pred.filter(pl.col("run_id") == "wsd")
    assert wsd.height == STEPS - int(0.1 * STEPS), "every measured point after the skipped transient"
    exact = truth["wsd"][wsd["step"].to_numpy()]
    vs_truth = np.abs(wsd["predicted"].to_numpy() / exact - 1).mean()
    assert vs_truth < NOISE / 10, vs_truth  # 1% noise on every step, the law within 0.1% of the noiseless curve
