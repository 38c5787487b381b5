"""Critical batch size B_crit (tokens): measured by branching, fitted over training, turned into a batch warmup.

Empirical CBS (Merrill et al. 2025, "Critical Batch Size Revisited"): from checkpoints of a reference run,
branches train with larger batches B (LR rescaled by a stated rule) over a token window; the local CBS at a
checkpoint is the largest B whose branch loss stays within a relative tolerance ε of the reference loss,
L_B <= L_ref·(1 + ε). It starts near 0, rises fast and plateaus, so two forms are fitted against the
checkpoint's tokens D:
    power law          CBS(D) = coef·D^exp
    rise-then-plateau  CBS(D) = B_max·(1 − exp(−(D/D0)^k))
A batch-size warmup that doubles the batch whenever the fitted CBS reaches twice the current batch trained
OLMo 1B to slightly better loss with 43% fewer steps (Merrill et al. 2025). The steps/tokens trade-off route to
B_crit (McCandlish et al. 2018) lives in `analysis.laws.tradeoff` and is re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from analysis.fitting import (FitResult, bootstrap, fit_power_law, grid_starts, multistart_lbfgsb, params_at_bound,
                              polish, summarize_draws)
from analysis.serialize import jsonable
from analysis.laws.tradeoff import TradeoffResult, fit_tradeoff, steps_to_target
from analysis.validate import PointsError, check_points
from tracking.record import Design

__all__ = ["CBS_TOLERANCE", "BatchWarmupPlan", "CbsFit", "TradeoffResult", "fit_cbs_curve", "fit_tradeoff",
           "local_cbs", "propose_batch_warmup", "steps_to_target"]

CBS_TOLERANCE = 0.01
"""ε: a branch is as good as the reference when its loss is within 1% (relative) of the reference loss."""

LOCAL_COLUMNS = ("checkpoint_tokens", "cbs", "ref_loss", "B_pass", "B_fail", "censored", "monotone", "n_branches")


def local_cbs(df: pl.DataFrame, tolerance: float = CBS_TOLERANCE, reference_B: float | None = None,
              interpolate: bool = False) -> pl.DataFrame:
    """Local CBS per checkpoint from branch runs (checkpoint_tokens, B in tokens, loss; optional ref_loss).

    Reference loss per checkpoint: the `ref_loss` column if present, else the loss of the rows with
    B == reference_B, else (reference_B None) the loss at the smallest B of that checkpoint. Replicates are
    averaged. Scanning B upwards, the first B with L_B > L_ref·(1 + ε) is B_fail and the B before it B_pass;
    cbs = B_pass, or with interpolate=True the B at which the excess L_B/L_ref − 1 reaches ε on the line
    through (ln B_pass, excess) and (ln B_fail, excess). The first failure (not the largest passing B) is used
    so one lucky large branch cannot inflate the CBS; monotone = False flags a passing B above B_fail.
    censored: "above" when every B passes (cbs = largest B, a lower bound), "below" when none does (cbs null).
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance is a relative loss excess in (0, 1), got {tolerance}; Merrill et al. use ~0.01")
    check_points(df, ["checkpoint_tokens", "B", "loss"], min_points=2)
    has_ref = "ref_loss" in df.columns
    if has_ref:
        check_points(df, ["ref_loss"])
    mean = df.group_by(["checkpoint_tokens", "B"]).agg(pl.col("loss").mean(),
                                                       *([pl.col("ref_loss").mean()] if has_ref else []))
    rows = []
    for (t,), g in mean.sort(["checkpoint_tokens", "B"]).group_by(["checkpoint_tokens"], maintain_order=True):
        B = g["B"].cast(pl.Float64).to_numpy()
        loss = g["loss"].cast(pl.Float64).to_numpy()
        if has_ref:
            ref = float(g["ref_loss"].mean())
        elif reference_B is not None:
            at = np.isclose(B, reference_B, rtol=1e-9)
            if not at.any():
                raise PointsError(f"checkpoint {t}: no branch with B == reference_B = {reference_B} (B: {B.tolist()});"
                                  " add the reference continuation or give a ref_loss column")
            ref = float(loss[at].mean())
        else:
            ref = float(loss[0])
        excess = loss / ref - 1.0
        passes = excess <= tolerance
        fail = int(np.argmin(passes)) if not passes.all() else B.size
        row = {"checkpoint_tokens": float(t), "ref_loss": ref, "n_branches": int(B.size),
               "monotone": not passes[fail:].any(), "B_pass": float(B[fail - 1]) if fail > 0 else None,
               "B_fail": float(B[fail]) if fail < B.size else None}
        if fail == 0:
            row.update(cbs=None, censored="below")
        elif fail == B.size:
            row.update(cbs=float(B[-1]), censored="above")
        else:
            cbs = B[fail - 1]
            if interpolate:
                e0, e1 = excess[fail - 1], excess[fail]
                w = (tolerance - e0) / (e1 - e0)
                cbs = float(np.exp(np.log(B[fail - 1]) + w * (np.log(B[fail]) - np.log(B[fail - 1]))))
            row.update(cbs=float(cbs), censored="none")
        rows.append(row)
    return pl.DataFrame(rows, schema_overrides={"cbs": pl.Float64, "B_pass": pl.Float64,
                                                "B_fail": pl.Float64}).select(LOCAL_COLUMNS)


def _saturating_predict(params: dict[str, float], D: Any) -> np.ndarray:
    z = (np.asarray(D, dtype=float) / params["D0"]) ** params["k"]
    return params["B_max"] * -np.expm1(-z)


def _saturating_objective(log_D: np.ndarray, log_y: np.ndarray):
    """Σ r², r = ln B_max + ln(1 − e^(−z)) − ln y with z = exp(k·(ln D − ln D0)); theta = (ln B_max, ln D0, k)."""

    def fun_and_grad(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lbm, ld0, k = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
        s = log_D[None, :] - ld0
        z = np.maximum(np.exp(np.minimum(k * s, 700.0)), 1e-300)
        with np.errstate(over="ignore"):
            dg_dz = 1.0 / np.expm1(z)  # d ln(1 − e^−z)/dz, → 0 for large z
        r = lbm + np.log(-np.expm1(-z)) - log_y[None, :]
        f = np.sum(r * r, axis=1)
        g = np.stack([2 * r.sum(axis=1), 2 * np.sum(r * dg_dz * (-k * z), axis=1),
                      2 * np.sum(r * dg_dz * s * z, axis=1)], axis=1)
        return np.where(np.isfinite(f), f, np.inf), np.nan_to_num(g)

    return fun_and_grad


def _fit_saturating(D: np.ndarray, y: np.ndarray, n_bootstrap: int, seed: int) -> FitResult:
    log_D, log_y = np.log(D), np.log(y)
    bounds = [(log_y.min(), log_y.max() + 10.0), (log_D.min() - 10.0, log_D.max() + 10.0), (0.05, 5.0)]
    starts = grid_starts([log_y.max() + np.array([0.0, 0.5, 2.0]), np.percentile(log_D, [0, 50, 100]),
                          [0.5, 1.0, 2.0]])
    x, f = multistart_lbfgsb(_saturating_objective(log_D, log_y), starts, bounds)

    def refit(idx: np.ndarray) -> np.ndarray:  # warm-started from the full-data optimum, like fitting's recipe
        if np.unique(log_D[idx]).size < 4:
            raise ValueError("resample has fewer than 4 distinct checkpoints")
        xr, _ = polish(_saturating_objective(log_D[idx], log_y[idx]), x, bounds, restarts=1)
        return np.array([np.exp(xr[0]), np.exp(xr[1]), xr[2]])

    draws = bootstrap(refit, D.size, n_bootstrap, seed, n_jobs=1) if n_bootstrap > 0 else np.empty((0, 3))
    names = ("B_max", "D0", "k")
    stderr, ci95 = summarize_draws(names, draws)
    params = {"B_max": float(np.exp(x[0])), "D0": float(np.exp(x[1])), "k": float(x[2])}
    residuals = log_y - np.log(_saturating_predict(params, D))
    return FitResult(form="CBS = B_max·(1 − exp(−(D/D0)^k))", params=params, stderr=stderr, ci95=ci95,
                     objective=float(f), n_points=int(D.size),
                     at_bound=params_at_bound(x, bounds, ("B_max", "D0", "k")), inputs=("D",),
                     n_resamples=int(draws.shape[0]),
                     n_failed_resamples=int((~np.isfinite(draws).all(axis=1)).sum()), residuals=residuals,
                     draws=draws, predictor=_saturating_predict)


@dataclass(frozen=True, eq=False)
class CbsFit:
    """CBS (tokens) against tokens D: power law and rise-then-plateau fits of the uncensored local CBS.

    best: the form with the lower AIC, n·ln(RSS/n) + 2·(number of parameters), on log residuals.
    saturating is None with fewer than 5 points.
    """

    power: FitResult
    saturating: FitResult | None
    best: str
    points: pl.DataFrame

    def fit(self, form: str | None = None) -> FitResult:
        form = form or self.best
        chosen = {"power": self.power, "saturating": self.saturating}.get(form)
        if chosen is None:
            raise ValueError(f"no {form!r} fit here (forms: power, saturating when >= 5 points)")
        return chosen

    def predict(self, D: Any, form: str | None = None) -> np.ndarray:
        return self.fit(form).predict(D)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"best": self.best, "power": self.power.to_dict(),
                         "saturating": self.saturating.to_dict() if self.saturating else None,
                         "points": self.points.to_dicts()})


def _aic(fit: FitResult) -> float:
    rss = float(np.sum(fit.residuals ** 2))
    return fit.n_points * np.log(max(rss, 1e-300) / fit.n_points) + 2 * len(fit.params)


def fit_cbs_curve(local: pl.DataFrame, bootstrap: int = 1000, seed: int = 0) -> CbsFit:
    """Fit CBS(D) to `local_cbs` output (uncensored rows; D = checkpoint_tokens), intervals by bootstrap over
    checkpoints. Needs >= 3 uncensored checkpoints (5 for the rise-then-plateau form)."""
    missing = [c for c in ("checkpoint_tokens", "cbs", "censored") if c not in local.columns]
    if missing:
        raise PointsError(f"columns {missing} missing; pass the frame returned by local_cbs")
    points = local.filter(pl.col("censored") == "none")
    if points.height < 3:
        raise PointsError(f"only {points.height} checkpoints have an uncensored CBS (need >= 3; censored: "
                          f"{local['censored'].to_list()}); widen the B grid of the branches or add checkpoints")
    check_points(points, ["checkpoint_tokens", "cbs"], min_points=3)
    D, y = points["checkpoint_tokens"].to_numpy(), points["cbs"].to_numpy()
    power = fit_power_law(D, y, n_bootstrap=bootstrap, seed=seed, form="CBS = coef·D^exp")
    saturating = _fit_saturating(D, y, bootstrap, seed) if np.unique(D).size >= 5 else None
    best = "saturating" if saturating is not None and _aic(saturating) < _aic(power) else "power"
    return CbsFit(power=power, saturating=saturating, best=best, points=points)


def _tokens_reaching(fit: CbsFit, target: float, form: str | None) -> float | None:
    """Smallest D with fitted CBS(D) >= target tokens, or None if the fitted curve never gets there."""
    f = fit.fit(form)
    p = f.params
    if "B_max" in p:
        if target >= p["B_max"]:
            return None
        return p["D0"] * (-np.log1p(-target / p["B_max"])) ** (1.0 / p["k"])
    if p["exp"] <= 0:
        return None
    return (target / p["coef"]) ** (1.0 / p["exp"])


@dataclass(frozen=True)
class BatchWarmupPlan:
    """Stepwise batch warmup: start_sequences until the first milestone, then milestones ((tokens, sequences)…)."""

    start_sequences: int
    milestones: tuple[tuple[int, int], ...]
    seq_len: int

    def to_overrides(self) -> list[str]:
        """Hydra overrides for conf/batch (lab.config.BatchConfig): the stepwise schedule, or constant if no step."""
        if not self.milestones:
            return ["batch.schedule=constant", f"batch.sequences={self.start_sequences}"]
        pairs = ",".join(f"[{t},{s}]" for t, s in self.milestones)
        return ["batch.schedule=stepwise", f"batch.start_sequences={self.start_sequences}",
                f"batch.sequences={self.milestones[-1][1]}", f"batch.milestones=[{pairs}]"]

    def check_overrides(self, total_tokens: float) -> list[str]:
        """lab-sweep overrides of the warmup check (sweep=warmup_check, sweeps.warmup_check) of this plan: D is
        total_tokens rounded up to a whole number of steps of the start and the final batch, as the check needs."""
        if not self.milestones:
            raise ValueError("a plan without milestones is a constant batch: there is no warmup to check")
        pairs = ",".join(f"[{t},{s}]" for t, s in self.milestones)
        unit = math.lcm(self.start_sequences, self.milestones[-1][1]) * self.seq_len
        D = max(math.ceil(total_tokens / unit), self.milestones[-1][0] // unit + 1) * unit
        return [f"sweep={Design.WARMUP_CHECK}", f"hydra.sweeper.design.tokens={D}",
                f"hydra.sweeper.design.start_sequences={self.start_sequences}",
                f"hydra.sweeper.design.milestones=[{pairs}]"]


def propose_batch_warmup(fit: CbsFit, total_tokens: float, micro_batch_granularity: int, seq_len: int,
                         max_sequences: int, start_sequences: int | None = None,
                         form: str | None = None) -> BatchWarmupPlan:
    """Doubling milestones: the batch b (sequences) doubles at the first token count where the fitted CBS
    reaches 2·b·seq_len tokens, while 2·b <= max_sequences and before total_tokens.

    start_sequences (default: micro_batch_granularity, the smallest allowed batch) must be a multiple of the
    granularity (micro_batch · devices), so every doubled batch is too. Milestone tokens are rounded up to a
    whole step of the batch in force counted from the previous milestone (where that batch began), so each change
    falls on a step boundary of the run lab-train trains; they are strictly increasing and > 0, as
    lab.schedules.BatchSchedule requires.
    """
    g = int(micro_batch_granularity)
    b = g if start_sequences is None else int(start_sequences)
    if g < 1 or b < g or b % g or b > max_sequences or seq_len < 1 or not total_tokens > 0:
        raise ValueError(f"need granularity >= 1, start_sequences a multiple of it and <= max_sequences, seq_len >= 1 "
                         f"and total_tokens > 0; got granularity={micro_batch_granularity}, start={b}, "
                         f"max_sequences={max_sequences}, seq_len={seq_len}, total_tokens={total_tokens}")
    milestones: list[tuple[int, int]] = []
    previous = 0
    while 2 * b <= max_sequences:
        t = _tokens_reaching(fit, 2 * b * seq_len, form)
        if t is None or t >= total_tokens:
            break
        step = b * seq_len  # tokens per step of the batch in force
        t_step = previous + max(int(np.ceil((t - previous) / step)), 1) * step
        if t_step >= total_tokens:
            break
        b *= 2
        milestones.append((t_step, b))
        previous = t_step
    return BatchWarmupPlan(start_sequences=g if start_sequences is None else int(start_sequences),
                           milestones=tuple(milestones), seq_len=int(seq_len))
