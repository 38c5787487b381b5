"""How much a forecast moves when one budget, model size or (N, D) cell is left out of the fit.

Bootstrap intervals say how noisy the points are; they do not say how much the forecast leans on one part of the
design (the largest budget, the smallest model). Marin's Delphi reports the second as the standard deviation of
the forecast over leave-one-budget-out refits. Here every fit that forecasts at a target reports, per forecast
quantity, the relative change v_k / v − 1 of each leave-one-group-out refit k: its standard deviation (`std_rel`)
and the largest in size (`worst_rel`, with the group left out). A refit the remaining points cannot determine
(too few budgets, one size left) is counted in `n_failed` with its reason, not hidden.

Groups: "budget" clusters C = 6·N·D (or the `budget` column) to `BUDGET_REL_TOL` as the IsoFLOP fit does;
"size" is each distinct N; "cell" each (N, D) of an lr x B landscape. A grid design with more than
`MAX_GROUPS` distinct budgets or sizes (every run its own C) is binned into `MAX_GROUPS` groups of equal count
in ln C (or ln N), so the refits stay few.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import polars as pl

from analysis.laws.hparams import fit_hparams, predict_hparams
from analysis.laws.isoflop import BUDGET_REL_TOL, assign_budgets, fit_isoflop, predict_optimal, relative_groups
from analysis.laws.loss import compute_optimal, fit_loss, with_derived_columns
from analysis.laws.loss_forms import get_form

MAX_GROUPS = 12

Forecast = Callable[[pl.DataFrame], Mapping[str, float]]


@dataclass(frozen=True)
class Sensitivity:
    """Leave-one-group-out refits of one forecast. refits: one row per group left out (left_out, then one
    column per quantity); summary: per quantity full, std_rel, worst_rel, worst_left_out, n_refits, n_failed."""

    left_out: str
    refits: pl.DataFrame
    summary: pl.DataFrame
    failed: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"left_out": self.left_out, "summary": self.summary.to_dicts(), "refits": self.refits.to_dicts(),
                "failed": list(self.failed)}


def leave_one_out(df: pl.DataFrame, labels: Sequence[str], forecast: Forecast, left_out: str) -> Sensitivity:
    """Refit `forecast` (a frame -> {quantity: value}) without each group of rows (labels, one per row)."""
    labels = np.asarray(labels, dtype=object)
    if labels.size != df.height:
        raise ValueError(f"{labels.size} group labels for {df.height} rows; give one label per row")
    full = dict(forecast(df))
    rows, failed = [], []
    for g in dict.fromkeys(labels.tolist()):  # first-seen order
        try:
            values = forecast(df.filter(pl.Series(labels != g)))
        except ValueError as err:  # the rest cannot determine the law: a failed refit, reported with its reason
            failed.append(f"{left_out} {g}: {' '.join(str(err).split())}")
            continue
        rows.append({"left_out": str(g), **{k: float(values[k]) for k in full}})
    refits = pl.DataFrame(rows, schema={"left_out": pl.String, **{k: pl.Float64 for k in full}})
    summary = []
    for k, v in full.items():
        rel = refits[k].to_numpy() / v - 1.0 if refits.height else np.empty(0)
        worst = int(np.argmax(np.abs(rel))) if rel.size else None
        summary.append({"quantity": k, "full": float(v), "n_refits": int(rel.size), "n_failed": len(failed),
                        "std_rel": float(np.std(rel, ddof=1)) if rel.size > 1 else float("nan"),
                        "worst_rel": float(rel[worst]) if worst is not None else float("nan"),
                        "worst_left_out": refits["left_out"][worst] if worst is not None else None})
    return Sensitivity(left_out, refits, pl.DataFrame(summary), tuple(failed))


def group_labels(values: np.ndarray, rel_tol: float = 0.0, max_groups: int = MAX_GROUPS) -> list[str]:
    """A label per value: values within rel_tol of their group's first (sorted) share it; more than max_groups
    groups are binned into max_groups of equal count. Labels: a group's geometric mean ("1.2e+18"), or a bin's
    range ("1.2e+18..3e+18")."""
    values = np.asarray(values, dtype=float)
    gid = relative_groups(values, rel_tol)
    current = int(gid.max())
    binned = current + 1 > max_groups
    if binned:  # equal-count bins over the sorted groups
        gid = np.floor(gid * max_groups / (current + 1)).astype(int)
    labels = {}
    for k in np.unique(gid):
        v = values[gid == k]
        labels[k] = f"{v.min():.3g}..{v.max():.3g}" if binned else f"{np.exp(np.log(v).mean()):.3g}"
    return [labels[k] for k in gid]


def loss_sensitivity(df: pl.DataFrame, targets_C: Sequence[float], fit_kwargs: Mapping[str, Any],
                     rel_tol: float = BUDGET_REL_TOL) -> list[Sensitivity]:
    """Chinchilla loss fit: loss_opt, N_opt, D_opt at each target C, leaving out one budget, then one size.

    Each refit starts from the full fit's optimum (as the bootstrap's resamples do), not from the form's grid of
    starts: a refit without one group moves the optimum little, and 24 grid searches would take a minute."""
    df = with_derived_columns(df)
    full = fit_loss(df, **{**fit_kwargs, "bootstrap": 0})
    start = get_form(full.form).from_params(np.array(list(full.params.values())))[None, :]

    def forecast(part: pl.DataFrame) -> dict[str, float]:
        opt = compute_optimal(fit_loss(part, **{**fit_kwargs, "bootstrap": 0, "starts": start}), list(targets_C))
        return {f"{q}@C={C:.3g}": float(opt[q][i]) for i, C in enumerate(targets_C)
                for q in ("loss_opt", "N_opt", "D_opt")}

    return [leave_one_out(df, group_labels(df["C"].to_numpy(), rel_tol), forecast, "budget"),
            leave_one_out(df, group_labels(df["N"].to_numpy()), forecast, "size")]


def loss_sensitivity_at(df: pl.DataFrame, N: float, D: float, fit_kwargs: Mapping[str, Any],
                        rel_tol: float = BUDGET_REL_TOL) -> list[Sensitivity]:
    """Loss fit: the predicted loss at (N, D), leaving out one budget, then one size (warm-started refits)."""
    df = with_derived_columns(df)
    full = fit_loss(df, **{**fit_kwargs, "bootstrap": 0})
    start = get_form(full.form).from_params(np.array(list(full.params.values())))[None, :]

    def forecast(part: pl.DataFrame) -> dict[str, float]:
        fit = fit_loss(part, **{**fit_kwargs, "bootstrap": 0, "starts": start})
        return {f"loss@N={N:.3g},D={D:.3g}": float(np.asarray(fit.predict(N, D)))}

    return [leave_one_out(df, group_labels(df["C"].to_numpy(), rel_tol), forecast, "budget"),
            leave_one_out(df, group_labels(df["N"].to_numpy()), forecast, "size")]


def isoflop_sensitivity(df: pl.DataFrame, targets_C: Sequence[float], rel_tol: float = BUDGET_REL_TOL,
                        **fit_kwargs: Any) -> Sensitivity:
    """IsoFLOP fit: N*, D* at each target C, leaving out one budget (as the fit clusters them)."""
    budgets = assign_budgets(df if "C" in df.columns else with_derived_columns(df), rel_tol)

    def forecast(part: pl.DataFrame) -> dict[str, float]:
        out = {}
        for C in targets_C:
            a = predict_optimal(fit_isoflop(part.drop("budget_C"), bootstrap=0, rel_tol=rel_tol, **fit_kwargs), C)
            out |= {f"N*@C={C:.3g}": a.N, f"D*@C={C:.3g}": a.D}
        return out

    return leave_one_out(budgets, [f"{c:.3g}" for c in budgets["budget_C"].to_list()], forecast, "budget")


def hparams_sensitivity(df: pl.DataFrame, method: str, N: float | None = None, D: float | None = None,
                        C: float | None = None, **fit_kwargs: Any) -> Sensitivity:
    """Hyperparameter fit with a fixed method: lr*, B* at the target, leaving out one (N, D) cell."""
    def forecast(part: pl.DataFrame) -> dict[str, float]:
        p = predict_hparams(fit_hparams(part, method=method, bootstrap=0, loo=False, **fit_kwargs), N=N, D=D, C=C)
        return {"lr*": p.lr, "B*": p.B}

    labels = [f"N={n:.3g},D={d:.3g}" for n, d in zip(df["N"].to_list(), df["D"].to_list())]
    return leave_one_out(df, labels, forecast, "cell")
