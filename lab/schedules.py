"""Learning-rate and batch-size schedules as pure functions of tokens.

Every duration is in tokens (OLMo-core style), so a schedule means the same thing whatever the batch size,
and a batch-size warmup does not stretch or squeeze the LR curve. Nothing here imports torch: the trainer
calls :func:`plan` once before training, checks and logs the result, and then looks up its step's row.

Conventions (units in brackets):
- ``lr_multiplier(tokens, s)`` is the fraction of the peak lr [dimensionless, in 0..1] after ``tokens`` [tokens].
- The lr of optimizer step ``k`` is evaluated at the tokens seen *after* that step (tokens_before + the step's
  batch), as OLMo-core evaluates at the 1-based step: the first update gets a non-zero lr during warmup and the
  last update gets the schedule's end value.
- The batch of step ``k`` is the batch at ``tokens_before`` (the batch is fixed when the step starts).
"""

from __future__ import annotations

import bisect
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple


class ScheduleError(ValueError):
    """A schedule configuration that cannot run; the message names the field, the value and the fix."""


LR_SCHEDULES = ("constant", "cosine", "linear", "wsd", "two_stage", "power", "inverse_sqrt", "table")
LR_TABLE_COLUMNS = ("fraction", "lr_multiplier")
"""Columns of a tabulated LR schedule: fraction of the run's tokens, lr as a fraction of the peak."""
DECAY_SHAPES = ("linear", "cosine", "1-sqrt", "exponential")
BATCH_SCHEDULES = ("constant", "linear", "stepwise")
RESCALE_RULES = ("none", "linear", "sqrt")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ScheduleError(message)


# ---------------------------------------------------------------------------------------------------------------
# Learning rate
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LRSchedule:
    """An LR schedule over tokens; :func:`lr_multiplier` gives the fraction of the peak lr.

    - ``constant``: linear warmup, then 1.
    - ``cosine``: warmup, then min + (1 − min)·(1 + cos(π·p))/2 with p the post-warmup fraction of the run.
    - ``linear``: warmup, then 1 − (1 − min)·p.
    - ``wsd``: warmup-stable-decay (Hu et al. 2024, MiniCPM): 1 until t0 = total·(1 − decay_fraction), then
      ``decay_shape`` from 1 to min over [t0, total].
    - ``two_stage``: warmup, 1 until t0 = total·(1 − decay_fraction), then min_lr_ratio: the step drop Luo et al.
      (ICLR 2025, the Multi-Power Law) fit their law on beside cosine and constant.
    - ``power``: the Power scheduler (Shen et al. 2024, arXiv:2408.13359, §4), see :func:`power_lr_multiplier`.
    - ``inverse_sqrt``: warmup, then sqrt(warmup/tokens) (Vaswani et al. 2017, in tokens); min_lr_ratio unused.
    - ``table``: linear interpolation in ``table`` ((fraction of total_tokens, multiplier), ...), its own warmup
      included (warmup_tokens unused), e.g. the schedule `analysis.laws.schedule_choose` chose with a fitted law.

    Decay shapes over the decay window, with p ∈ [0, 1] the fraction of the window elapsed, all going 1 → min:
    ``linear`` 1 − p; ``cosine`` (1 + cos πp)/2; ``1-sqrt`` 1 − sqrt(p) (Hägele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations"); ``exponential`` (e^(1−p) − 1)/(e − 1), one e-fold
    shifted to hit both ends, as IBM's dolomite-engine ExponentialScheduler (the Power-scheduler authors' code).
    Each shape g(p) is mapped to min + (1 − min)·g(p).
    """

    name: str
    warmup_tokens: float
    """Linear warmup from 0 to the schedule's value [tokens]."""
    total_tokens: float
    """End of the schedule, D [tokens]; past it the multiplier stays at its end value."""
    min_lr_ratio: float = 0.0
    """End value as a fraction of the peak lr (cosine, linear, wsd; for power, of the lr where decay starts)."""
    decay_fraction: float = 0.2
    """Fraction of total_tokens spent in the final decay (wsd, power), or after the drop (two_stage)."""
    decay_shape: str = "linear"
    """Shape of the final decay (wsd, power): linear, cosine, 1-sqrt or exponential."""
    power_a: float = 4.6
    """Power scheduler amplitude a (Shen et al. 2024 fit: lr_opt/β = a·n^(−b), β in sequences, n in tokens)."""
    power_b: float = 0.51
    """Power scheduler exponent b > 0 (the paper writes n^b with b = −0.51)."""
    power_batch: float = 0.0
    """β of the Power scheduler: the batch size [sequences] the amplitude refers to (the run's initial batch)."""
    power_lr_max: float = 0.0
    """η_max of the Power scheduler: the lr cap, i.e. the configured peak lr (optim.lr)."""
    table: tuple[tuple[float, float], ...] = ()
    """``table``: rows (fraction of total_tokens, lr multiplier), fractions from 0 to 1 increasing (read_lr_table)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", tuple((float(f), float(m)) for f, m in self.table))
        if self.name == "table":
            check_lr_table(self.table, "LRSchedule.table")
        _require(self.name in LR_SCHEDULES,
                 f"LRSchedule.name={self.name!r} is unknown; use one of {', '.join(LR_SCHEDULES)}")
        _require(self.total_tokens > 0,
                 f"LRSchedule.total_tokens={self.total_tokens} must be > 0; set the run length in tokens")
        _require(0 <= self.warmup_tokens < self.total_tokens,
                 f"LRSchedule.warmup_tokens={self.warmup_tokens} must be in [0, total_tokens={self.total_tokens});"
                 " shorten the warmup or lengthen the run")
        _require(0.0 <= self.min_lr_ratio <= 1.0,
                 f"LRSchedule.min_lr_ratio={self.min_lr_ratio} must be in [0, 1] (a fraction of the peak lr)")
        _require(self.decay_shape in DECAY_SHAPES,
                 f"LRSchedule.decay_shape={self.decay_shape!r} is unknown; use one of {', '.join(DECAY_SHAPES)}")
        if self.name in ("wsd", "power", "two_stage"):
            _require(0.0 < self.decay_fraction <= 1.0,
                     f"LRSchedule.decay_fraction={self.decay_fraction} must be in (0, 1] for {self.name!r}")
            _require(self.decay_start >= self.warmup_tokens,
                     f"LRSchedule.decay_fraction={self.decay_fraction} starts the decay at {self.decay_start:g}"
                     f" tokens, before warmup ends at {self.warmup_tokens:g}; lower decay_fraction or the warmup")
        if self.name == "inverse_sqrt":
            _require(self.warmup_tokens > 0,
                     "LRSchedule.warmup_tokens=0 with name='inverse_sqrt' divides by zero tokens; "
                     "set warmup_tokens > 0")
        if self.name == "power":
            _require(self.power_a > 0 and self.power_b > 0,
                     f"LRSchedule.power_a={self.power_a}, power_b={self.power_b} must both be > 0"
                     " (the schedule is a·n^(−b))")
            _require(self.power_batch > 0 and self.power_lr_max > 0,
                     f"LRSchedule.power_batch={self.power_batch} and power_lr_max={self.power_lr_max} must be > 0"
                     " for name='power'; set power_batch to the initial batch in sequences and power_lr_max to"
                     " the peak lr (optim.lr)")

    @property
    def decay_start(self) -> float:
        """t0 [tokens]: where the final decay of wsd and power begins, or two_stage's drop."""
        return self.total_tokens * (1.0 - self.decay_fraction)


def _decay_shape(p: float, shape: str) -> float:
    """g(p) of a decay shape: 1 at p=0, 0 at p=1 (p clamped to [0, 1])."""
    p = min(max(p, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - p
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(p)
    return (math.exp(1.0 - p) - 1.0) / (math.e - 1.0)  # exponential


def _decay(p: float, min_ratio: float, shape: str) -> float:
    return min_ratio + (1.0 - min_ratio) * _decay_shape(p, shape)


def power_lr_multiplier(tokens: float, s: LRSchedule) -> float:
    """Stable phase of the Power scheduler as a fraction of the peak lr.

    Shen et al. 2024 (arXiv:2408.13359, §4): η_power(n) = min(η_max, β·a·n^b), n tokens seen, β the batch size
    in sequences, a = 4.6, b = −0.51 fitted from WSD sweeps with μP. Dividing by the peak lr η_max gives the
    multiplier min(1, (β·a/η_max)·n^(−b)); so a and b keep the paper's meaning and units, and the two run facts
    the paper folds in (β and η_max) are the fields power_batch and power_lr_max. A batch that later grows is
    handled by the batch rescale rule ("linear" reproduces the paper's lr ∝ β).
    """
    if tokens <= 0:
        return 1.0
    return min(1.0, s.power_batch * s.power_a / s.power_lr_max * tokens ** (-s.power_b))


def _power_schedule(tokens: float, s: LRSchedule) -> float:
    """The full Power scheduler (Shen et al. 2024, §4, eq. for η(n)):

        η(n) = n/N_warmup · η_power(N_warmup)          n < N_warmup
               η_power(n)                               N_warmup ≤ n < N − N_decay
               f(n, N, N_decay) · η_power(N − N_decay)  n ≥ N − N_decay

    with N_decay = decay_fraction·N and f the decay shape going 1 → min_lr_ratio (the paper decays to 0).
    """
    if tokens < s.warmup_tokens:
        return tokens / s.warmup_tokens * power_lr_multiplier(s.warmup_tokens, s)
    t0 = s.decay_start
    if tokens < t0:
        return power_lr_multiplier(tokens, s)
    p = (tokens - t0) / (s.total_tokens - t0)
    return power_lr_multiplier(t0, s) * _decay(p, s.min_lr_ratio, s.decay_shape)


def lr_multiplier(tokens: float, s: LRSchedule) -> float:
    """Fraction of the peak lr [0..1] after ``tokens`` tokens; multiply by the peak lr (and the batch factor)."""
    if tokens < 0 or math.isnan(tokens):
        raise ScheduleError(f"lr_multiplier(tokens={tokens}): tokens must be >= 0")
    if s.name == "power":
        return _power_schedule(tokens, s)
    if s.name == "table":
        return _table_multiplier(min(tokens / s.total_tokens, 1.0), s.table)
    if tokens < s.warmup_tokens:
        return tokens / s.warmup_tokens
    if s.name == "constant":
        return 1.0
    if s.name == "inverse_sqrt":
        return math.sqrt(s.warmup_tokens / tokens)
    if s.name in ("cosine", "linear"):
        p = (tokens - s.warmup_tokens) / (s.total_tokens - s.warmup_tokens)
        return _decay(p, s.min_lr_ratio, s.name)
    t0 = s.decay_start
    if tokens < t0:
        return 1.0
    if s.name == "two_stage":
        return s.min_lr_ratio
    # wsd
    return _decay((tokens - t0) / (s.total_tokens - t0), s.min_lr_ratio, s.decay_shape)


def _table_multiplier(fraction: float, table: tuple[tuple[float, float], ...]) -> float:
    i = bisect.bisect_right([f for f, _ in table], fraction)
    if i >= len(table):
        return table[-1][1]
    (f0, m0), (f1, m1) = table[i - 1], table[i]
    return m0 + (m1 - m0) * (fraction - f0) / (f1 - f0)


def check_lr_table(table: Sequence[tuple[float, float]], where: str) -> None:
    """A tabulated schedule must start at fraction 0, end at 1, increase strictly, with multipliers in [0, 1]."""
    _require(len(table) >= 2, f"{where} has {len(table)} rows; give at least (0, m0) and (1, m1)")
    fractions = [f for f, _ in table]
    _require(fractions[0] == 0.0 and fractions[-1] == 1.0,
             f"{where} covers fractions {fractions[0]:g}..{fractions[-1]:g} of the run; make it start at 0 and end "
             "at 1 (fractions of the run's tokens)")
    bad = next((i for i in range(1, len(fractions)) if not fractions[i] > fractions[i - 1]), None)
    _require(bad is None, f"{where}: fraction {fractions[bad] if bad else 0:g} (row {bad}) does not increase; sort "
                          "the rows by fraction and drop repeats")
    out = [m for _, m in table if not (0.0 <= m <= 1.0 and math.isfinite(m))]
    _require(not out, f"{where}: lr multiplier {out[0] if out else 0:g} is outside [0, 1]; multipliers are "
                      "fractions of the peak lr (optim.lr)")


def read_lr_table(path: str) -> tuple[tuple[float, float], ...]:
    """Rows of a CSV with columns fraction, lr_multiplier (LR_TABLE_COLUMNS), checked by check_lr_table."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in LR_TABLE_COLUMNS if c not in (reader.fieldnames or ())]
            _require(not missing, f"LR table {path} lacks columns {missing} (has {reader.fieldnames}); give "
                                  f"{', '.join(LR_TABLE_COLUMNS)}")
            rows = tuple((float(r["fraction"]), float(r["lr_multiplier"])) for r in reader)
    except OSError as err:
        raise ScheduleError(f"cannot read LR table {path}: {err.strerror}; check optim.table") from err
    except (TypeError, ValueError) as err:
        if isinstance(err, ScheduleError):
            raise
        raise ScheduleError(f"LR table {path} has a value that is not a number ({err}); fill every cell") from err
    check_lr_table(rows, f"LR table {path}")
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Batch size
# ---------------------------------------------------------------------------------------------------------------


def _as_int(field: str, value: object) -> int:
    """Accept ints and integral floats (YAML's 1e6); reject the rest with the field's name."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ScheduleError(f"BatchSchedule.{field}={value!r} must be a whole number")
    return int(value)


@dataclass(frozen=True)
class BatchSchedule:
    """The global batch [sequences] as a function of tokens, validated before training.

    - ``constant``: ``sequences`` throughout.
    - ``linear``: GPT-3's ramp (Brown et al. 2020, §2.3): start_sequences → sequences linearly over ramp_tokens,
      rounded down to a multiple of ``granularity`` (at least one granularity).
    - ``stepwise``: batch-size warmup of Merrill et al. 2025 ("Critical Batch Size Revisited"): the batch at
      ``tokens`` is that of the last milestone (tokens, sequences) with milestone tokens ≤ tokens, and
      start_sequences before the first milestone.

    ``granularity`` = micro_batch · world_size: every global batch must be a whole number of micro-batches on
    every rank, so the accumulation count is sequences / granularity.
    """

    name: str
    sequences: int
    """Final (or constant) global batch [sequences]."""
    start_sequences: int = 0
    """Initial batch [sequences] for linear and stepwise."""
    ramp_tokens: int = 0
    """Length of the linear ramp [tokens]."""
    milestones: tuple[tuple[int, int], ...] = ()
    """Stepwise changes as ((tokens, sequences), ...), tokens strictly increasing; the last is ``sequences``."""
    granularity: int = 1
    """Every batch is a multiple of this many sequences (micro_batch · world_size)."""

    def __post_init__(self) -> None:
        _require(self.name in BATCH_SCHEDULES,
                 f"BatchSchedule.name={self.name!r} is unknown; use one of {', '.join(BATCH_SCHEDULES)}")
        for field in ("sequences", "start_sequences", "ramp_tokens", "granularity"):
            object.__setattr__(self, field, _as_int(field, getattr(self, field)))
        try:
            milestones = tuple((_as_int("milestones tokens", t), _as_int("milestones sequences", n))
                               for t, n in self.milestones)
        except (TypeError, ValueError) as e:
            raise ScheduleError(f"BatchSchedule.milestones={self.milestones!r} must be pairs (tokens, sequences):"
                                f" {e}") from e
        object.__setattr__(self, "milestones", milestones)
        g = self.granularity
        _require(g >= 1, f"BatchSchedule.granularity={g} must be >= 1 (micro_batch · world_size)")
        _require(self.sequences >= g and self.sequences % g == 0,
                 f"BatchSchedule.sequences={self.sequences} must be a positive multiple of granularity={g}"
                 f" (micro_batch · world_size); use {max(g, self.sequences // g * g)}")
        if self.name == "linear":
            _require(self.ramp_tokens > 0, f"BatchSchedule.ramp_tokens={self.ramp_tokens} must be > 0 for 'linear'")
            _require(1 <= self.start_sequences <= self.sequences,
                     f"BatchSchedule.start_sequences={self.start_sequences} must be in [1, sequences="
                     f"{self.sequences}] for 'linear'")
        if self.name == "stepwise":
            _require(self.start_sequences >= g and self.start_sequences % g == 0,
                     f"BatchSchedule.start_sequences={self.start_sequences} must be a positive multiple of"
                     f" granularity={g} for 'stepwise'")
            _require(len(milestones) > 0, "BatchSchedule.milestones is empty for 'stepwise'; give at least one"
                                          " (tokens, sequences) pair, or use name='constant'")
            previous = 0
            for t, n in milestones:
                _require(t > previous,
                         f"BatchSchedule.milestones token {t} must be > {previous}: milestones start after 0"
                         " tokens and strictly increase")
                _require(n >= g and n % g == 0,
                         f"BatchSchedule.milestones batch {n} (at {t} tokens) must be a positive multiple of"
                         f" granularity={g}")
                previous = t
            _require(milestones[-1][1] == self.sequences,
                     f"BatchSchedule.milestones ends at {milestones[-1][1]} sequences but sequences="
                     f"{self.sequences}; make the last milestone the final batch")


def batch_sequences(tokens: float, s: BatchSchedule) -> int:
    """Global batch [sequences] for a step that starts after ``tokens`` tokens."""
    if tokens < 0 or math.isnan(tokens):
        raise ScheduleError(f"batch_sequences(tokens={tokens}): tokens must be >= 0")
    if s.name == "constant":
        return s.sequences
    if s.name == "linear":
        if tokens >= s.ramp_tokens:
            return s.sequences
        # Integer arithmetic so that the rounding never depends on float error.
        grown = (s.sequences - s.start_sequences) * math.floor(tokens) // s.ramp_tokens
        return max(s.granularity, (s.start_sequences + grown) // s.granularity * s.granularity)
    # stepwise
    i = bisect.bisect_right([t for t, _ in s.milestones], tokens)
    return s.start_sequences if i == 0 else s.milestones[i - 1][1]


def initial_sequences(s: BatchSchedule) -> int:
    """The batch the run starts with [sequences]: the reference for LR rescaling."""
    return batch_sequences(0, s)


def lr_batch_factor(sequences: float, reference_sequences: float, rule: str) -> float:
    """LR factor for a batch of ``sequences`` when the lr was tuned at ``reference_sequences``.

    - ``none``: 1.
    - ``linear``: k = sequences/reference (linear scaling rule, Goyal et al. 2017; SGD-like regime).
    - ``sqrt``: sqrt(k) (the square-root rule for Adam; OLMo's batch-size warmup rescales by sqrt(new/old)).

    The reference is the schedule's initial batch, because the configured lr (optim.lr) is the lr tuned for the
    batch the run starts with: a run whose batch grows k× then runs at sqrt(k)× the peak lr under "sqrt".
    Successive OLMo-style sqrt(new/old) rescalings compose to the same sqrt(final/initial).
    """
    _require(rule in RESCALE_RULES, f"rescale rule {rule!r} is unknown; use one of {', '.join(RESCALE_RULES)}")
    _require(sequences > 0 and reference_sequences > 0,
             f"lr_batch_factor(sequences={sequences}, reference_sequences={reference_sequences}): both must be > 0")
    k = sequences / reference_sequences
    if rule == "linear":
        return k
    if rule == "sqrt":
        return math.sqrt(k)
    return 1.0


# ---------------------------------------------------------------------------------------------------------------
# The step-level plan
# ---------------------------------------------------------------------------------------------------------------


class PlanStep(NamedTuple):
    """One optimizer step of the plan."""

    step: int
    """0-based optimizer step."""
    tokens_before: int
    """Tokens seen before this step [tokens]."""
    sequences: int
    """Global batch of this step [sequences]; tokens of the step = sequences · seq_len."""
    lr: float
    """Peak-lr-relative schedule × peak lr × batch factor: the lr the optimizer uses for this step."""


def _check_run(total_tokens: float, seq_len: int) -> None:
    _require(total_tokens > 0, f"total_tokens={total_tokens} must be > 0")
    _require(isinstance(seq_len, int) and seq_len > 0, f"seq_len={seq_len!r} must be a positive integer")


def total_steps(batch_sched: BatchSchedule, total_tokens: float, seq_len: int) -> int:
    """Optimizer steps S needed to reach ``total_tokens`` (the last step may overshoot by less than one batch)."""
    _check_run(total_tokens, seq_len)
    if batch_sched.name == "constant":
        return math.ceil(total_tokens / (batch_sched.sequences * seq_len))
    steps, tokens = 0, 0
    while tokens < total_tokens:
        tokens += batch_sequences(tokens, batch_sched) * seq_len
        steps += 1
    return steps


def plan(lr_sched: LRSchedule, batch_sched: BatchSchedule, total_tokens: float, seq_len: int, peak_lr: float,
         rescale_rule: str) -> list[PlanStep]:
    """The exact sequence of steps the trainer executes: batch and lr of every optimizer step.

    Steps run while tokens_before < total_tokens. ``total_tokens`` may differ from lr_sched.total_tokens
    (e.g. a branch that stops early); the lr curve is always the one of lr_sched.
    """
    _check_run(total_tokens, seq_len)
    _require(peak_lr > 0, f"peak_lr={peak_lr} must be > 0")
    reference = initial_sequences(batch_sched)
    lr_batch_factor(reference, reference, rescale_rule)  # validates the rule before the loop
    steps: list[PlanStep] = []
    tokens = 0
    while tokens < total_tokens:
        sequences = batch_sequences(tokens, batch_sched)
        after = tokens + sequences * seq_len
        lr = peak_lr * lr_multiplier(after, lr_sched) * lr_batch_factor(sequences, reference, rescale_rule)
        steps.append(PlanStep(len(steps), tokens, sequences, lr))
        tokens = after
    return steps


def describe_plan(steps: Sequence[PlanStep], seq_len: int, rescale_rule: str) -> list[str]:
    """Human-readable lines for the log: a summary, then one line per batch change with its LR factor."""
    _require(len(steps) > 0, "describe_plan: the plan has no steps")
    first, last = steps[0], steps[-1]
    reference = first.sequences
    end_tokens = last.tokens_before + last.sequences * seq_len
    lines = [f"plan: {len(steps)} steps, {end_tokens:,} tokens; batch {reference} sequences"
             f" ({reference * seq_len:,} tokens/step) at start; LR rescale rule '{rescale_rule}'"
             f" relative to the initial batch"]
    for prev, cur in zip(steps, steps[1:]):
        if cur.sequences != prev.sequences:
            factor = lr_batch_factor(cur.sequences, reference, rescale_rule)
            lines.append(f"step {cur.step} at {cur.tokens_before:,} tokens: batch {prev.sequences} -> "
                         f"{cur.sequences} sequences ({cur.sequences * seq_len:,} tokens/step), "
                         f"lr x{factor:.4g} vs the initial batch")
    return lines
