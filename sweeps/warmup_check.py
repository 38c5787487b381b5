"""Proving a batch-size warmup: the warmup `lab-fit cbs` proposes against constant batches on the same tokens.

Merrill et al. 2025 ("Critical Batch Size Revisited") trained OLMo 1B with a stepwise batch warmup that follows the
critical batch size to slightly better loss than the constant-batch run with 43% fewer optimizer steps. This design
checks such a promise on our own models: per model size and seed, three runs train the same D tokens from scratch
(one seed: one token stream, lab.data.sampling indexes sequences, not steps, so every batch schedule reads the same
sequences in the same order):

- ``batch_warmup`` (Role.BATCH_WARMUP): ``batch.schedule=stepwise`` from ``start_sequences`` through ``milestones``
  ((tokens, sequences), ...: BatchWarmupPlan.milestones) to the final batch b_final, with the peak lr ``lr`` at the
  start batch, rescaled at every batch change by ``lr_rescale`` (lab.schedules.lr_batch_factor);
- ``constant_final`` (Role.CONSTANT_FINAL): a constant batch of b_final sequences at the lr the warmup reaches
  there, lr x lr_batch_factor(b_final / start_sequences): the large batch from the first step, with the same rule;
- ``constant_start`` (Role.CONSTANT_START): a constant batch of start_sequences at ``lr``: the small-batch run whose
  optimizer steps the warmup saves (Merrill et al.'s comparison).

The LR schedule is a function of tokens (lab.schedules), so all three follow the same LR curve up to the batch
factor. `lab-fit warmup-check` (analysis.laws.warmup_check) pairs the runs by (point, seed) and reports steps saved
and loss differences. D must be a whole number of steps of both constant batches. The milestones are taken as
lab-fit cbs gives them, so the warmup run is the one `lab-train <its overrides>` trains: lab changes the batch at the
first step that starts at or after a milestone, and stops at the first step end at or past D, within one final
batch of it (lab-fit warmup-check shows each run's D and flags a gap above 1%).

Names: ``wuc-N<N>-D<D>-lr<lr>-<rule>-B<start>-<b1>@<t1>-...-s<seed>`` for the warmup (B in tokens, t in tokens) and
``wuc-N<N>-D<D>-lr<lr used>-B<b>-s<seed>`` for the constant batches: each covers what changes the run's trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

from lab.config import LR_RESCALE_RULES
from lab.schedules import lr_batch_factor
from sweeps.designs import Base, DesignError, RunSpec, _unique, sci, tokens_label
from tracking.record import Design, Role, Tag


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise DesignError(f"{Design.WARMUP_CHECK}: {message}")


def _whole(name: str, value: object) -> int:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) == int(value)
           and value > 0, f"{name}={value!r} must be a positive whole number")
    return int(value)


def _milestones(milestones: Sequence[Sequence[float]], start: int) -> tuple[tuple[int, int], ...]:
    _check(len(milestones) > 0, "milestones is empty: give the warmup's [[tokens, sequences], ...] (lab-fit cbs "
           "prints them); a plan without milestones is a constant batch, nothing to check")
    out: list[tuple[int, int]] = []
    for pair in milestones:
        _check(isinstance(pair, Sequence) and len(pair) == 2, f"milestone {pair!r} must be a pair [tokens, sequences]")
        out.append((_whole("milestone tokens", pair[0]), _whole("milestone sequences", pair[1])))
    previous_t, previous_b = 0, start
    for t, b in out:
        _check(t > previous_t, f"milestones {out}: tokens must strictly increase from > 0")
        _check(b > previous_b, f"milestones {out}: a warmup grows the batch; each milestone's sequences must exceed "
               f"the batch before it ({previous_b}, start_sequences={start} first)")
        previous_t, previous_b = t, b
    return tuple(out)


def warmup_check(base: Base, tokens: float, lr: float, milestones: Sequence[Sequence[float]],
                 start_sequences: Optional[int] = None, lr_rescale: str = "sqrt", seeds: Sequence[int] = (0,),
                 micro_batch: Optional[int] = None) -> list[RunSpec]:
    """Three runs per ladder size and seed (module docstring): the warmup and constant batches at its ends.

    tokens: D of every run; lr: peak lr at the warmup's first batch (optim.lr of the warmup and constant_start);
    milestones: [[tokens, sequences], ...] of the warmup, batches increasing, the last one the final batch;
    start_sequences: its first batch (default: the base config's batch.sequences); lr_rescale: none | linear |
    sqrt, set as batch.lr_rescale on every run; micro_batch: default the base config's batch.micro_batch.
    """
    D = _whole("tokens", tokens)
    _check(isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0, f"lr={lr!r} must be a positive peak lr "
           "(the warmup's lr at its first batch)")
    _check(lr_rescale in LR_RESCALE_RULES, f"lr_rescale={lr_rescale!r}: use one of {', '.join(LR_RESCALE_RULES)}")
    _check(bool(seeds) and len(set(seeds)) == len(seeds), f"seeds={list(seeds)}: give distinct integers")
    seq = base.seq_len
    start = _whole("start_sequences", base.batch_sequences if start_sequences is None else start_sequences)
    micro = _whole("micro_batch", base.micro_batch if micro_batch is None else micro_batch)
    steps = _milestones(milestones, start)
    final = steps[-1][1]
    for b in (start, *(b for _, b in steps)):
        _check(b % micro == 0, f"batch of {b} sequences is not a multiple of batch.micro_batch={micro}; use "
               "multiples of it (lab-fit cbs --granularity)")
    _check(D > steps[-1][0], f"tokens={D} must exceed the last milestone ({steps[-1][0]} tokens) so the warmup "
           "reaches its final batch")
    lcm = math.lcm(start * seq, final * seq)
    _check(D % lcm == 0, f"tokens={D} is not a whole number of steps of both constant batches ({start * seq} and "
           f"{final * seq} tokens per step); use a multiple of {lcm}, e.g. {math.ceil(D / lcm) * lcm}")
    lr_final = lr * lr_batch_factor(final, start, lr_rescale)
    plan = "".join(f"-{tokens_label(b * seq)}@{sci(t)}" for t, b in steps)
    pairs = ",".join(f"[{t},{b}]" for t, b in steps)
    specs = []
    for rung in base.rungs:
        point = f"N{sci(rung.N)}-D{sci(D)}"
        for seed in seeds:
            shared = (*rung.overrides, f"budget.tokens={D}", f"batch.micro_batch={micro}",
                      f"batch.lr_rescale={lr_rescale}", f"seed={seed}")
            tags = {Tag.DESIGN: Design.WARMUP_CHECK, Tag.POINT: point, Tag.SEED: str(seed)}
            specs.append(RunSpec(
                f"wuc-{point}-lr{sci(lr)}-{lr_rescale}-B{tokens_label(start * seq)}{plan}-s{seed}",
                (*shared, "batch.schedule=stepwise", f"batch.start_sequences={start}", f"batch.sequences={final}",
                 f"batch.milestones=[{pairs}]", f"optim.lr={lr!r}"),
                {**tags, Tag.ROLE: Role.BATCH_WARMUP}))
            for role, b, lr_b in ((Role.CONSTANT_FINAL, final, lr_final), (Role.CONSTANT_START, start, lr)):
                specs.append(RunSpec(
                    f"wuc-{point}-lr{sci(lr_b)}-B{tokens_label(b * seq)}-s{seed}",
                    (*shared, "batch.schedule=constant", f"batch.sequences={b}", f"optim.lr={lr_b!r}"),
                    {**tags, Tag.ROLE: role}))
    return _unique(Design.WARMUP_CHECK, specs)
