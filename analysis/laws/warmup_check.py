"""Did the batch warmup keep its promise? Steps saved and loss differences of a warmup check (sweeps.warmup_check).

Merrill et al. 2025 ("Critical Batch Size Revisited"): a stepwise batch warmup that follows the critical batch size
trained OLMo 1B to slightly better loss than the constant-batch run with 43% fewer optimizer steps. A warmup check
trains, per model size (point) and seed, three runs on the same D tokens: the warmup, a constant batch at its final
size and a constant batch at its start size. From their recorded optimizer steps S (param ``steps``) and final
validation losses L (nats/token):

    steps saved          1 − S_warmup / S_start   the share of the start-batch run's steps the warmup does without
                                                  (> 0: fewer steps; Merrill et al.'s 43% is 0.43)
    step ratio (final)   S_warmup / S_final       how many more steps the warmup takes than the large batch from
                                                  the first step (>= 1: the warmup's first steps are smaller)
    ΔL_final             L_warmup − L_final       loss difference against the final batch from the start
    ΔL_start             L_warmup − L_start       loss difference against the start batch throughout

Sign convention: a negative ΔL means the warmup reached the *lower* (better) loss. The promise is *kept* at a seed
when steps saved > 0 and the warmup's loss is within the tolerance ε that defines the critical batch size
(analysis.laws.cbs.CBS_TOLERANCE, 1%) of the start-batch run's: L_warmup <= L_start·(1 + ε). ΔL_final says whether
growing the batch gradually beats using the large batch from the start. Means over seeds, and their standard error where there are
two or more seeds. Torch-free; input is a tidy frame (analysis.points.warmup_check_points).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from analysis.laws.cbs import CBS_TOLERANCE
from analysis.validate import PointsError
from tracking.record import Role

COLUMNS = ("run_name", "point", "seed", "role", "steps", "D", "loss")
"""Columns of the input frame: one row per run, role one of ROLES."""
ROLES = (Role.BATCH_WARMUP, Role.CONSTANT_FINAL, Role.CONSTANT_START)
D_MISMATCH = 0.01
"""Runs of one check whose D differ by more than this (relative) are named in the notes: not the same tokens."""


@dataclass(frozen=True)
class WarmupPair:
    """One (point, seed): the warmup against the constant batches at its final and start sizes."""

    point: str
    seed: str
    steps_warmup: int
    steps_final: int
    steps_start: int
    D_warmup: float
    D_final: float
    D_start: float
    loss_warmup: float
    loss_final: float
    loss_start: float

    @property
    def steps_saved(self) -> float:
        """1 − S_warmup / S_start: the share of the start-batch run's optimizer steps the warmup saves."""
        return 1.0 - self.steps_warmup / self.steps_start

    @property
    def step_ratio_final(self) -> float:
        """S_warmup / S_final: the warmup's steps relative to the final batch from the first step."""
        return self.steps_warmup / self.steps_final

    @property
    def loss_diff_final(self) -> float:
        """L_warmup − L_final (nats/token); negative: the warmup is better."""
        return self.loss_warmup - self.loss_final

    @property
    def loss_diff_start(self) -> float:
        """L_warmup − L_start (nats/token); negative: the warmup is better."""
        return self.loss_warmup - self.loss_start

    def kept(self, tolerance: float = CBS_TOLERANCE) -> bool:
        """Fewer steps than the start batch, and a loss within ``tolerance`` (relative) of its loss."""
        return self.steps_saved > 0 and self.loss_warmup <= self.loss_start * (1.0 + tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps_saved": self.steps_saved, "step_ratio_final": self.step_ratio_final,
                "loss_diff_final": self.loss_diff_final, "loss_diff_start": self.loss_diff_start}


@dataclass(frozen=True)
class Summary:
    """Mean over seeds of one quantity, with its standard error (None with one seed)."""

    mean: float
    stderr: float | None


@dataclass(frozen=True)
class WarmupCheck:
    """Every complete (point, seed) of a warmup check, and per point the means over seeds (module docstring)."""

    pairs: tuple[WarmupPair, ...]
    means: dict[str, dict[str, Summary]]
    """point -> quantity (steps_saved, step_ratio_final, loss_diff_final, loss_diff_start) -> mean over seeds."""
    notes: tuple[str, ...] = ()
    tolerance: float = CBS_TOLERANCE
    """ε of WarmupPair.kept."""

    @property
    def kept(self) -> int:
        """How many (point, seed) kept the promise (module docstring)."""
        return sum(p.kept(self.tolerance) for p in self.pairs)

    def to_dict(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "kept": self.kept,
                "pairs": [{**p.to_dict(), "kept": p.kept(self.tolerance)} for p in self.pairs],
                "means": {pt: {q: asdict(s) for q, s in m.items()} for pt, m in self.means.items()},
                "notes": list(self.notes), "sign": "loss differences are L_warmup - L_constant: negative = warmup "
                "better; steps_saved = 1 - S_warmup / S_constant_start"}


QUANTITIES = ("steps_saved", "step_ratio_final", "loss_diff_final", "loss_diff_start")


def _summary(values: list[float]) -> Summary:
    x = np.asarray(values, dtype=float)
    stderr = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else None
    return Summary(float(x.mean()), stderr)


def check_warmup(frame: pl.DataFrame, tolerance: float = CBS_TOLERANCE) -> WarmupCheck:
    """Pair the runs of a warmup check by (point, seed) and measure steps saved and loss differences.

    A (point, seed) lacking one of the three roles is left out and named in the notes; with no complete one this
    raises PointsError naming what is there. Two runs of one role at one (point, seed) are an error (two sweeps
    mixed: select one with --sweep).
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance is a relative loss excess in (0, 1), got {tolerance}; the CBS uses "
                         f"{CBS_TOLERANCE}")
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise PointsError(f"warmup check: columns {missing} missing; pass analysis.points.warmup_check_points(...)"
                          f".frame (columns {list(COLUMNS)})")
    bad = frame.filter(pl.col("steps").is_null() | pl.col("loss").is_null() | ~pl.col("loss").cast(pl.Float64)
                       .is_finite() | (pl.col("steps") <= 0))
    if bad.height:
        raise PointsError(f"warmup check: runs {bad['run_name'].to_list()[:5]} lack a positive step count or a "
                          "finite final val/loss; re-run them (lab-sweep resumes unfinished runs) or drop them")
    twice = frame.group_by("point", "seed", "role").len().filter(pl.col("len") > 1)
    if twice.height:
        raise PointsError(f"warmup check: {twice.height} (point, seed, role) have more than one run, e.g. "
                          f"{twice.row(0)[:3]}: runs of several sweeps are mixed; select one with --sweep")
    pairs, notes = [], []
    for (point, seed), g in frame.sort("point", "seed").group_by("point", "seed", maintain_order=True):
        by_role = {r["role"]: r for r in g.to_dicts()}
        lacking = [r for r in ROLES if r not in by_role]
        if lacking:
            notes.append(f"{point} seed {seed}: no finished run of role {lacking} (have {sorted(by_role)}); left out")
            continue
        w, f, s = (by_role[r] for r in ROLES)
        pair = WarmupPair(str(point), str(seed), int(w["steps"]), int(f["steps"]), int(s["steps"]), float(w["D"]),
                          float(f["D"]), float(s["D"]), float(w["loss"]), float(f["loss"]), float(s["loss"]))
        spread = max(pair.D_warmup, pair.D_final, pair.D_start) / min(pair.D_warmup, pair.D_final, pair.D_start) - 1
        if spread > D_MISMATCH:
            notes.append(f"{point} seed {seed}: the runs saw D = {pair.D_warmup:g}, {pair.D_final:g}, "
                         f"{pair.D_start:g} tokens ({spread:.1%} apart): not the same tokens")
        pairs.append(pair)
    if not pairs:
        raise PointsError(f"warmup check: no (point, seed) has all of {list(ROLES)} finished among "
                          f"{frame.height} runs ({'; '.join(notes[:3])}); finish the sweep or select its id")
    means = {}
    for point in sorted({p.point for p in pairs}):
        of_point = [p for p in pairs if p.point == point]
        means[point] = {q: _summary([getattr(p, q) for p in of_point]) for q in QUANTITIES}
    return WarmupCheck(tuple(pairs), means, tuple(notes), tolerance)
