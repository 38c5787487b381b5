"""A schedule study: one model trained on the same tokens under several LR schedules, to fit a schedule law on some
and check its prediction of the others (`lab-fit schedule`, analysis.laws.schedule).

The Multi-Power Law (Luo et al., ICLR 2025) is fitted on three runs of one model, cosine, constant and a two-stage
drop, and predicts the whole curve of other schedules (WSD, ...). The laws' only input is the lr sequence, so every
run of a study shares the model size, the batch, D, the peak lr and the seed (one token stream, the same sequences in
the same order); only the schedule differs. Per ladder size and seed, one run per named schedule:

- ``schedules``: {name: {optim field: value}}, the optim settings of each schedule (schedule, min_lr_ratio,
  decay_fraction, decay_shape, warmup_fraction, warmup_tokens, table), e.g. ``two_stage: {schedule: two_stage,
  decay_fraction: 0.3, min_lr_ratio: 0.1}``;
- ``held_out``: names kept out of the fit (tag role = held_out, the rest role = fit);
- ``train_held_out``: false launches the fitted runs only. Predict before you train: launch with false, fit and
  predict the held-out runs from their lr sequences, then launch with true under the same sweep id: the finished
  runs are skipped and only the held-out ones train (`lab-demo` does exactly this).

Names: ``sch-N<N>-D<D>-B<B>-lr<lr>-<name>-<settings digest>-s<seed>``: the digest covers the schedule's settings,
so redefining a name under the same sweep id trains a new run instead of skipping to the old one. Tags: design
schedules, point N…-D…, schedule_name <name>, role fit | held_out, seed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sweeps.designs import Base, DesignError, RunSpec, _check_tokens, _unique, sci, tokens_label
from tracking.record import Design, Role, Tag

SCHEDULE_FIELDS = ("schedule", "min_lr_ratio", "decay_fraction", "decay_shape", "warmup_fraction", "warmup_tokens",
                   "table")
"""The optim fields (lab.config.OptimConfig) a schedule of the study may set; the peak lr is the study's."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise DesignError(f"{Design.SCHEDULES}: {message}")


def _settings(name: str, fields: Any) -> dict[str, Any]:
    _check(isinstance(fields, Mapping) and "schedule" in fields,
           f"schedule {name!r}: give its optim settings with at least schedule, e.g. {{schedule: cosine, "
           f"min_lr_ratio: 0.1}}; got {fields!r}")
    unknown = sorted(set(fields) - set(SCHEDULE_FIELDS))
    _check(not unknown, f"schedule {name!r}: unknown setting(s) {unknown}; a schedule sets {', '.join(SCHEDULE_FIELDS)}"
           " (optim.lr is the study's lr, the same for every schedule)")
    return {k: fields[k] for k in SCHEDULE_FIELDS if k in fields}


def digest(settings: Mapping[str, Any]) -> str:
    """Six hex digits of a schedule's settings, for its run name."""
    return hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode()).hexdigest()[:6]


def schedules(base: Base, tokens: float, lr: float, schedules: Mapping[str, Mapping[str, Any]],
              held_out: Sequence[str] = (), train_held_out: bool = True, seeds: Sequence[int] = (0,)) -> list[RunSpec]:
    """One run per ladder size, seed and named schedule on the same D tokens at the same peak lr (module docstring).

    tokens: D of every run, a whole number of steps of the base batch; lr: the peak lr (optim.lr);
    schedules: {name: {optim field: value}}; held_out: the names kept out of the fit; train_held_out: false
    leaves them out of this launch.
    """
    _check(isinstance(tokens, (int, float)) and not isinstance(tokens, bool) and tokens > 0
           and float(tokens) == int(tokens), f"tokens={tokens!r} must be a positive whole number (D of every run)")
    D = int(tokens)
    _check(isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0, f"lr={lr!r} must be a positive peak lr")
    _check(isinstance(schedules, Mapping) and len(schedules) >= 2, "give at least two named schedules, e.g. "
           "{cosine: {schedule: cosine}, constant: {schedule: constant}} (a law is fitted on some, checked on others)")
    held = list(held_out)
    unknown = [h for h in held if h not in schedules]
    _check(not unknown, f"held_out names {unknown} that are not among the schedules {list(schedules)}")
    _check(len(held) < len(schedules), f"held_out={held} leaves no schedule to fit the law on")
    _check(bool(seeds) and len(set(seeds)) == len(seeds), f"seeds={list(seeds)}: give distinct integers")
    B = base.B_tokens
    _check(D % B == 0, f"tokens={D} is not a whole number of steps of the batch ({B} tokens: batch.sequences x "
           f"model.seq_len); use a multiple of it, e.g. {math.ceil(D / B) * B}")
    settings = {str(name): _settings(str(name), fields) for name, fields in schedules.items()}
    specs = []
    for rung in base.rungs:
        _check_tokens(Design.SCHEDULES, D, B, rung.label)
        point = f"N{sci(rung.N)}-D{sci(D)}"
        for name, fields in settings.items():
            role = Role.HELD_OUT if name in held else Role.FIT
            if role == Role.HELD_OUT and not train_held_out:
                continue
            for seed in seeds:
                specs.append(RunSpec(
                    f"sch-{point}-B{tokens_label(B)}-lr{sci(lr)}-{name}-{digest(fields)}-s{seed}",
                    (*rung.overrides, f"budget.tokens={D}", f"optim.lr={lr!r}",
                     *(f"optim.{k}={'null' if v is None else v}" for k, v in fields.items()), f"seed={seed}"),
                    {Tag.DESIGN: Design.SCHEDULES, Tag.POINT: point, Tag.SCHEDULE_NAME: name, Tag.ROLE: role,
                     Tag.SEED: str(seed)}))
    return _unique(Design.SCHEDULES, specs)


def planned_lr(overrides: Sequence[str]) -> np.ndarray:
    """The lr of every optimizer step of the run lab-train would train with these overrides (a RunSpec's overrides
    after the sweep's task overrides), before it trains: lab.run's own step plan, so a schedule law predicts
    exactly the sequence the run will use."""
    # torch loads here, not at import: the Hydra plugins import this module to plan a sweep.
    from lab.flops import non_embedding_params
    from lab.run import budget_tokens, model_config, step_plan
    from lab.train import compose_config

    cfg = compose_config(overrides)
    D = budget_tokens(cfg, non_embedding_params(model_config(cfg)))
    return np.array([step.lr for step in step_plan(cfg, D)])
