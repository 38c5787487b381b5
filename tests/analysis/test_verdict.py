"""analysis.verdict: the demo's words about each law."""

from __future__ import annotations

import math

import pytest

from analysis import verdict as v


@pytest.mark.parametrize("estimate, lo, hi, at_bound, expected", [
    (0.50, 0.44, 0.56, (), v.USABLE),
    (0.96, 0.15, 1.24, (), v.NOISY),          # the demo: interval ±0.55
    (0.80, 0.74, 0.86, (), v.OUTSIDE),        # narrow, elsewhere
    (0.50, 0.45, 0.55, ("E",), v.NOISY),      # a bound decides before the interval
    (math.nan, math.nan, math.nan, (), v.NOISY),
])
def test_isoflop_exponent_verdicts(estimate, lo, hi, at_bound, expected):
    got = v.judge("IsoFLOP a", estimate, lo, hi, v.ISOFLOP_A, at_bound)
    assert got.verdict == expected and got.why


def test_step_law_exponents_are_judged_against_their_own_range():
    assert v.judge("lr N", -0.65, -0.75, -0.55, v.LR_N).verdict == v.USABLE
    assert v.judge("lr D", 0.33, -0.2, 0.9, v.LR_D).verdict == v.NOISY


@pytest.mark.parametrize("exp, lo, hi, best, plateau, expected, words", [
    (0.6, 0.4, 0.8, "saturating", True, v.USABLE, "flattens"),
    (0.6, 0.4, 0.8, "power", False, v.USABLE, "no plateau"),
    (0.3, -0.5, 1.2, "power", False, v.NOISY, "includes 0"),
    (-0.4, -0.6, -0.2, "power", False, v.OUTSIDE, "falls"),
])
def test_cbs_shape(exp, lo, hi, best, plateau, expected, words):
    got = v.judge_cbs(exp, lo, hi, best, plateau)
    assert got.verdict == expected and words in got.why


def test_ratio_interval_of_approach_3():
    lo, hi = v.ratio_interval([0.34] * 50 + [0.30] * 50, [0.28] * 50 + [0.32] * 50)
    assert lo == pytest.approx(0.28 / 0.62) and hi == pytest.approx(0.32 / 0.62)
    assert all(math.isnan(x) for x in v.ratio_interval([0.3], [0.3]))


def test_page_gives_two_lines_per_law_and_a_title_per_section():
    laws = [v.judge("IsoFLOP a", 0.5, 0.45, 0.55, v.ISOFLOP_A), v.judge_cbs(0.6, 0.4, 0.8, "power", False)]
    lines = v.page([("this demo", laws), ("Chinchilla", laws[:1])])
    assert len(lines) == 2 + 2 * 3
    assert lines[0] == "this demo" and "-> usable" in lines[2] and "published +0.50" in lines[1]
    assert "Merrill" in lines[3]
    assert v.sources(laws) == [f"published: {v.ISOFLOP_A.source}"]
