"""Exact values of the LR and batch schedules at chosen token counts, their validation, and the step plan."""

import math

import pytest

from lab.schedules import (
    BatchSchedule,
    LRSchedule,
    PlanStep,
    ScheduleError,
    batch_sequences,
    describe_plan,
    initial_sequences,
    lr_batch_factor,
    lr_multiplier,
    plan,
    power_lr_multiplier,
    total_steps,
)

# Shared schedule length: warmup 100 tokens, total 1000 tokens.
W, T = 100, 1000


def lr(name: str, tokens: float, **kw) -> float:
    return lr_multiplier(tokens, LRSchedule(name, W, T, **kw))


# --- learning rate ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["constant", "cosine", "linear", "wsd", "two_stage", "inverse_sqrt"])
def test_warmup_is_linear_from_zero_to_one(name):
    assert lr(name, 0) == 0.0
    assert lr(name, 25) == 0.25
    assert lr(name, 50) == 0.5
    assert lr(name, W) == 1.0


def test_constant_stays_at_one_after_warmup_and_past_the_end():
    assert [lr("constant", t) for t in (W, 500, T, 10 * T)] == [1.0, 1.0, 1.0, 1.0]


def test_no_warmup_starts_at_the_peak():
    assert lr_multiplier(0, LRSchedule("constant", 0, T)) == 1.0
    assert lr_multiplier(0, LRSchedule("cosine", 0, T)) == 1.0


def test_cosine_exact_values():
    # Mid-decay: p = 0.5 so (1 + cos(pi/2))/2 = 1/2 and the multiplier is (1 + min)/2.
    assert lr("cosine", 550, min_lr_ratio=0.1) == pytest.approx(0.55, abs=1e-15)
    assert lr("cosine", 550) == pytest.approx(0.5, abs=1e-15)
    # Quarter of the decay: p = 0.25.
    assert lr("cosine", 325, min_lr_ratio=0.1) == pytest.approx(0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2, abs=1e-15)
    assert lr("cosine", T, min_lr_ratio=0.1) == pytest.approx(0.1, abs=1e-15)
    assert lr("cosine", 5 * T, min_lr_ratio=0.1) == pytest.approx(0.1, abs=1e-15)


def test_linear_exact_values():
    assert lr("linear", 325, min_lr_ratio=0.2) == pytest.approx(0.8, abs=1e-15)
    assert lr("linear", 550, min_lr_ratio=0.2) == pytest.approx(0.6, abs=1e-15)
    assert lr("linear", T, min_lr_ratio=0.2) == pytest.approx(0.2, abs=1e-15)
    assert lr("linear", 2 * T) == 0.0


def test_two_stage_drops_once_to_the_min_ratio_at_the_decay_start():
    # decay_fraction 0.3 of T = 1000 tokens: the peak until token 700, then min_lr_ratio to the end and past it
    values = [lr("two_stage", t, decay_fraction=0.3, min_lr_ratio=0.1) for t in (W, 699.9, 700, 850, T, 2 * T)]
    assert values == [1.0, 1.0, 0.1, 0.1, 0.1, 0.1]
    with pytest.raises(ScheduleError, match="before warmup ends"):
        LRSchedule("two_stage", 500, T, decay_fraction=0.9)


def test_wsd_is_stable_until_the_decay_window():
    # decay_fraction 0.2 of 1000 tokens: the decay starts at 800.
    for t in (W, 500, 799.9, 800):
        assert lr("wsd", t, decay_fraction=0.2) == 1.0


@pytest.mark.parametrize("shape, mid", [
    ("linear", 0.5),
    ("cosine", 0.5),
    ("1-sqrt", 1 - math.sqrt(0.5)),
    ("exponential", (math.exp(0.5) - 1) / (math.e - 1)),
])
def test_wsd_decay_shapes_at_mid_decay(shape, mid):
    assert lr("wsd", 900, decay_fraction=0.2, decay_shape=shape) == pytest.approx(mid, abs=1e-15)
    # With a floor: min + (1 - min)·g(p).
    assert lr("wsd", 900, decay_fraction=0.2, decay_shape=shape, min_lr_ratio=0.1) == pytest.approx(
        0.1 + 0.9 * mid, abs=1e-15)
    # Both ends of the window and past the end.
    assert lr("wsd", 800, decay_fraction=0.2, decay_shape=shape, min_lr_ratio=0.1) == pytest.approx(1.0, abs=1e-15)
    assert lr("wsd", T, decay_fraction=0.2, decay_shape=shape, min_lr_ratio=0.1) == pytest.approx(0.1, abs=1e-15)
    assert lr("wsd", 3 * T, decay_fraction=0.2, decay_shape=shape, min_lr_ratio=0.1) == pytest.approx(0.1, abs=1e-15)


def test_wsd_one_minus_sqrt_quarter_window():
    # p = 0.25: 1 - sqrt(0.25) = 0.5; with min 0.1: 0.1 + 0.9·0.5 = 0.55.
    assert lr("wsd", 850, decay_fraction=0.2, decay_shape="1-sqrt", min_lr_ratio=0.1) == pytest.approx(0.55, abs=1e-15)


def test_inverse_sqrt_exact_values():
    assert lr("inverse_sqrt", 400) == 0.5
    assert lr("inverse_sqrt", 10_000) == pytest.approx(0.1, abs=1e-15)


# Power: a=1, b=0.5, β=1, η_max=0.01, so the multiplier is min(1, 100/sqrt(n)).
POWER = dict(power_a=1.0, power_b=0.5, power_batch=1, power_lr_max=0.01)


def power(**kw) -> LRSchedule:
    return LRSchedule("power", kw.pop("warmup", 20_000), 1_000_000, decay_fraction=0.2, **{**POWER, **kw})


def test_power_stable_phase_follows_the_power_law():
    s = power()
    assert lr_multiplier(40_000, s) == pytest.approx(0.5, abs=1e-15)
    assert lr_multiplier(160_000, s) == pytest.approx(0.25, abs=1e-15)
    # Capped at the peak lr when the power law exceeds it.
    assert power_lr_multiplier(10_000, s) == 1.0
    assert power_lr_multiplier(100, s) == 1.0


def test_power_warmup_ramps_to_the_power_law_value_at_warmup_end():
    s = power()
    at_warmup = 100 / math.sqrt(20_000)
    assert lr_multiplier(0, s) == 0.0
    assert lr_multiplier(10_000, s) == pytest.approx(0.5 * at_warmup, abs=1e-15)
    assert lr_multiplier(20_000, s) == pytest.approx(at_warmup, abs=1e-15)


def test_power_final_decay_starts_from_the_power_law_value():
    s = power(min_lr_ratio=0.1)
    at_t0 = 100 / math.sqrt(800_000)  # decay starts at 0.8·1e6 tokens
    assert lr_multiplier(800_000, s) == pytest.approx(at_t0, abs=1e-15)
    assert lr_multiplier(900_000, s) == pytest.approx(at_t0 * 0.55, abs=1e-15)  # linear, p = 0.5
    assert lr_multiplier(1_000_000, s) == pytest.approx(at_t0 * 0.1, abs=1e-15)
    assert lr_multiplier(2_000_000, s) == pytest.approx(at_t0 * 0.1, abs=1e-15)
    exp = power(decay_shape="exponential")
    assert lr_multiplier(1_000_000, exp) == pytest.approx(0.0, abs=1e-15)


def test_power_with_the_papers_constants_reproduces_min_lr_max_beta_a_n_b():
    # Shen et al. 2024: lr = min(η_max, β·a·n^(−0.51)), a = 4.6, η_max = 0.02, here β = 256 sequences.
    s = LRSchedule("power", 1e8, 1e12, power_batch=256, power_lr_max=0.02)
    for n in (1e9, 1e10, 1e11):
        assert 0.02 * lr_multiplier(n, s) == pytest.approx(min(0.02, 256 * 4.6 * n ** -0.51), rel=1e-12)
    assert lr_multiplier(1e9, s) == 1.0  # 256·4.6·1e9^−0.51 ≈ 0.030 > η_max: capped
    assert lr_multiplier(1e11, s) < 0.2  # ≈ 0.0029 / 0.02 at 100B tokens


@pytest.mark.parametrize("name", ["constant", "cosine", "linear", "wsd", "power", "inverse_sqrt"])
def test_every_schedule_stays_in_unit_interval(name):
    s = LRSchedule(name, W, T, min_lr_ratio=0.05, power_batch=1, power_lr_max=1e-3)
    values = [lr_multiplier(t, s) for t in range(0, 2 * T, 7)]
    assert all(0.0 <= v <= 1.0 for v in values)


@pytest.mark.parametrize("kwargs, field", [
    (dict(name="cosyne", warmup_tokens=0, total_tokens=10), "name"),
    (dict(name="cosine", warmup_tokens=10, total_tokens=10), "warmup_tokens"),
    (dict(name="cosine", warmup_tokens=-1, total_tokens=10), "warmup_tokens"),
    (dict(name="cosine", warmup_tokens=0, total_tokens=0), "total_tokens"),
    (dict(name="cosine", warmup_tokens=0, total_tokens=10, min_lr_ratio=1.5), "min_lr_ratio"),
    (dict(name="wsd", warmup_tokens=0, total_tokens=10, decay_shape="sqrt"), "decay_shape"),
    (dict(name="wsd", warmup_tokens=0, total_tokens=10, decay_fraction=0.0), "decay_fraction"),
    (dict(name="wsd", warmup_tokens=5, total_tokens=10, decay_fraction=0.6), "decay_fraction"),
    (dict(name="inverse_sqrt", warmup_tokens=0, total_tokens=10), "warmup_tokens"),
    (dict(name="power", warmup_tokens=0, total_tokens=10), "power_batch"),
    (dict(name="power", warmup_tokens=0, total_tokens=10, power_batch=1, power_lr_max=1, power_b=0), "power_b"),
])
def test_lr_schedule_validation_names_the_field(kwargs, field):
    with pytest.raises(ScheduleError, match=field):
        LRSchedule(**kwargs)


def test_negative_tokens_are_rejected():
    with pytest.raises(ScheduleError, match="tokens"):
        lr_multiplier(-1, LRSchedule("constant", 0, 10))


# --- batch size ------------------------------------------------------------------------------------------------


def test_constant_batch():
    s = BatchSchedule("constant", 32, granularity=8)
    assert [batch_sequences(t, s) for t in (0, 1, 10**12)] == [32, 32, 32]
    assert initial_sequences(s) == 32


def test_linear_ramp_rounds_down_to_granularity():
    s = BatchSchedule("linear", 64, start_sequences=8, ramp_tokens=1000, granularity=8)
    assert batch_sequences(0, s) == 8
    assert batch_sequences(500, s) == 32  # 8 + 56·0.5 = 36 → 32
    assert batch_sequences(999, s) == 56  # 8 + 55 = 63 → 56
    assert batch_sequences(1000, s) == 64
    assert batch_sequences(10**9, s) == 64


def test_linear_ramp_is_at_least_one_granularity():
    s = BatchSchedule("linear", 64, start_sequences=3, ramp_tokens=1000, granularity=8)
    assert batch_sequences(0, s) == 8
    assert initial_sequences(s) == 8


def test_stepwise_uses_the_last_milestone_at_or_before_tokens():
    s = BatchSchedule("stepwise", 32, start_sequences=8, milestones=((100, 16), (300, 32)), granularity=8)
    assert [batch_sequences(t, s) for t in (0, 99, 100, 299, 300, 10**9)] == [8, 8, 16, 16, 32, 32]


def test_batch_schedule_accepts_hydra_style_lists_and_integral_floats():
    s = BatchSchedule("stepwise", 32, start_sequences=8.0, milestones=[[1e2, 16], [3e2, 32]], granularity=8)
    assert s.milestones == ((100, 16), (300, 32))
    assert isinstance(s.start_sequences, int)
    hash(s)  # frozen and hashable after normalisation


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(name="cyclic", sequences=8), "name"),
    (dict(name="constant", sequences=12, granularity=8), "sequences=12"),
    (dict(name="constant", sequences=8, granularity=0), "granularity"),
    (dict(name="constant", sequences=8.5), "sequences"),
    (dict(name="linear", sequences=64, start_sequences=8, ramp_tokens=0), "ramp_tokens"),
    (dict(name="linear", sequences=64, start_sequences=128, ramp_tokens=10), "start_sequences"),
    (dict(name="stepwise", sequences=32, start_sequences=8, milestones=()), "milestones"),
    (dict(name="stepwise", sequences=32, start_sequences=8, milestones=((300, 16), (100, 32))), "increase"),
    (dict(name="stepwise", sequences=32, start_sequences=8, milestones=((0, 32),)), "milestones"),
    (dict(name="stepwise", sequences=32, start_sequences=8, milestones=((100, 12), (200, 32)), granularity=8), "12"),
    (dict(name="stepwise", sequences=32, start_sequences=8, milestones=((100, 16),)), "last milestone"),
    (dict(name="stepwise", sequences=32, start_sequences=4, milestones=((100, 32),), granularity=8),
     "start_sequences"),
    (dict(name="stepwise", sequences=32, start_sequences=8, milestones=((100,),)), "pairs"),
])
def test_batch_schedule_validation(kwargs, fragment):
    with pytest.raises(ScheduleError, match=fragment):
        BatchSchedule(**kwargs)


# --- LR rescaling and the plan ---------------------------------------------------------------------------------


def test_lr_batch_factor_rules():
    assert lr_batch_factor(64, 16, "none") == 1.0
    assert lr_batch_factor(64, 16, "linear") == 4.0
    assert lr_batch_factor(64, 16, "sqrt") == 2.0
    with pytest.raises(ScheduleError, match="rescale rule"):
        lr_batch_factor(64, 16, "cubic")
    with pytest.raises(ScheduleError, match="> 0"):
        lr_batch_factor(0, 16, "sqrt")


def test_plan_constant_batch_counts_steps_and_evaluates_lr_after_the_step():
    lr_s = LRSchedule("constant", 80, 400)
    steps = plan(lr_s, BatchSchedule("constant", 4), 400, seq_len=10, peak_lr=1e-3, rescale_rule="sqrt")
    assert len(steps) == 10 == total_steps(BatchSchedule("constant", 4), 400, 10)
    assert steps[0] == PlanStep(0, 0, 4, 0.5e-3)  # lr at 40 tokens = half the warmup
    assert steps[1].lr == 1e-3
    assert steps[-1].tokens_before == 360
    # One token more needs one more (overshooting) step.
    assert total_steps(BatchSchedule("constant", 4), 401, 10) == 11
    assert len(plan(lr_s, BatchSchedule("constant", 4), 401, 10, 1e-3, "none")) == 11


def test_plan_cosine_ends_at_the_floor():
    steps = plan(LRSchedule("cosine", 0, 400, min_lr_ratio=0.1), BatchSchedule("constant", 4), 400, 10, 1.0, "none")
    assert steps[-1].lr == pytest.approx(0.1, abs=1e-15)
    assert steps[4].lr == pytest.approx(0.55, abs=1e-15)  # evaluated at 200 tokens = mid-decay


def test_plan_stepwise_with_sqrt_rescaling():
    batch = BatchSchedule("stepwise", 8, start_sequences=2, milestones=((40, 8),), granularity=2)
    steps = plan(LRSchedule("constant", 0, 200), batch, 200, seq_len=10, peak_lr=1e-3, rescale_rule="sqrt")
    assert [(s.step, s.tokens_before, s.sequences) for s in steps] == [(0, 0, 2), (1, 20, 2), (2, 40, 8), (3, 120, 8)]
    assert [s.lr for s in steps] == pytest.approx([1e-3, 1e-3, 2e-3, 2e-3], abs=1e-18)
    assert total_steps(batch, 200, 10) == 4
    lines = describe_plan(steps, 10, "sqrt")
    assert len(lines) == 2
    assert "4 steps, 200 tokens" in lines[0] and "'sqrt'" in lines[0]
    assert "step 2 at 40 tokens: batch 2 -> 8 sequences (80 tokens/step), lr x2 " in lines[1]


def test_plan_linear_ramp_respects_granularity_and_total():
    batch = BatchSchedule("linear", 64, start_sequences=8, ramp_tokens=20_000, granularity=8)
    steps = plan(LRSchedule("wsd", 1000, 50_000), batch, 50_000, seq_len=16, peak_lr=3e-4, rescale_rule="linear")
    assert all(s.sequences % 8 == 0 for s in steps)
    assert [s.sequences for s in steps] == sorted(s.sequences for s in steps)
    assert steps[-1].tokens_before < 50_000 <= steps[-1].tokens_before + steps[-1].sequences * 16
    assert all(b.tokens_before == a.tokens_before + a.sequences * 16 for a, b in zip(steps, steps[1:]))
    assert len(steps) == total_steps(batch, 50_000, 16)
    # Under the linear rule the lr at the final batch is 64/8 = 8× the schedule value.
    mid = next(s for s in steps if 2000 < s.tokens_before < 30_000 and s.sequences == 64)
    assert mid.lr == pytest.approx(3e-4 * 8)


def test_plan_rejects_bad_run_arguments():
    lr_s, batch = LRSchedule("constant", 0, 100), BatchSchedule("constant", 1)
    with pytest.raises(ScheduleError, match="seq_len"):
        plan(lr_s, batch, 100, 0, 1e-3, "none")
    with pytest.raises(ScheduleError, match="rescale rule"):
        plan(lr_s, batch, 100, 10, 1e-3, "quadratic")
    with pytest.raises(ScheduleError, match="peak_lr"):
        plan(lr_s, batch, 100, 10, 0.0, "none")


def test_schedules_import_without_torch():
    import subprocess
    import sys

    code = "import sys, lab.schedules; assert 'torch' not in sys.modules, 'lab.schedules imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
