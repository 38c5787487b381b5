"""Choosing a schedule with a fitted Multi-Power Law: the choice is non-increasing after warmup, predicted no worse
than WSD and better than cosine (Luo et al. 2025 find WSD-like optima), and its table is one lab-train reads."""

import numpy as np
import pytest

from analysis.laws import schedule_forms as sf
from analysis.laws.schedule import ScheduleFit, predict_curve
from analysis.laws.schedule_choose import choose_schedule, write_lr_table
from lab.schedules import LRSchedule, lr_multiplier, read_lr_table

STEPS, WARMUP, PEAK = 2000, 40, 3.6e-3
LAW = ScheduleFit.of(sf.MULTI_POWER, dict(L0=2.5, A=0.6, alpha=0.45, B=400.0 / 12, C=2.0 * 12 ** -0.4, beta=0.6,
                                          gamma=0.6), lr_ref=PEAK)


@pytest.fixture(scope="module")
def choice():
    return choose_schedule(LAW, STEPS, PEAK, WARMUP)


def test_the_choice_beats_cosine_and_matches_or_beats_wsd(choice):
    p = choice.predicted_final
    assert p["chosen"] <= p["wsd"] + 1e-6 and p["chosen"] < p["cosine"] - 0.01, p
    assert predict_curve(LAW, choice.lr(), [STEPS - 1])[0] == pytest.approx(p["chosen"], rel=1e-9)


def test_the_choice_is_a_warmup_then_non_increasing(choice):
    m = np.array(choice.multipliers)
    assert choice.fractions[0] == 0.0 and choice.fractions[-1] == 1.0 and m[0] == 0.0 and m[1] == 1.0
    assert (np.diff(m[1:]) <= 1e-12).all() and (m >= 0).all()


def test_the_table_is_what_lab_train_runs(choice, tmp_path):
    path = write_lr_table(choice, tmp_path / "chosen.csv")
    table = read_lr_table(str(path))
    s = LRSchedule("table", 0, STEPS * 256, table=table)
    lab_lr = np.array([PEAK * lr_multiplier((k + 1) * 256, s) for k in range(STEPS)])
    np.testing.assert_allclose(lab_lr, choice.lr(), rtol=1e-7, atol=1e-12)
