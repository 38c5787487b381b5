"""Plain-text tables of fitted laws for terminals and logs (what `lab-fit` prints).

Pure formatting: every function takes results from `analysis.laws` / `analysis.extrapolate` and returns a string;
nothing here fits, reads or writes. Numbers are shown to 4 significant digits; a missing or non-finite value
(an interval without bootstrap draws, a censored CBS) prints as "n/a".
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, Union

import polars as pl

from analysis.extrapolate import HoldoutReport
from analysis.fitting import FitResult
from analysis.laws.cbs import BatchWarmupPlan, CbsFit
from analysis.laws.hparams import HparamsPrediction, HparamsResult
from analysis.laws.isoflop import Allocation, IsoflopResult
from analysis.laws.warmup_check import WarmupCheck
from analysis.recipe import Recipe
from analysis.sensitivity import Sensitivity

Column = Union[str, tuple[str, str, str]]
"""A frame column to show, or (estimate, lo, hi) columns shown together as "estimate [lo, hi]"."""


def num(x: Any, digits: int = 4) -> str:
    """x to `digits` significant digits; booleans and strings as they are; None / NaN / inf as "n/a"."""
    if isinstance(x, (bool, str)):
        return str(x)
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{float(x):.{digits}g}"


def bracket(lo: Any, hi: Any) -> str:
    """ "[lo, hi]" (a 95% interval)."""
    return f"[{num(lo)}, {num(hi)}]"


def interval(estimate: Any, lo: Any, hi: Any) -> str:
    """ "estimate [lo, hi]"."""
    return f"{num(estimate)} {bracket(lo, hi)}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    cells = [list(map(str, headers))] + [[c if isinstance(c, str) else num(c) for c in row] for row in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))).rstrip()

    out = [title] if title else []
    out += [line(cells[0]), "  ".join("-" * w for w in widths).rstrip()] + [line(r) for r in cells[1:]]
    return "\n".join(out)


def frame_table(df: pl.DataFrame, columns: Mapping[str, Column], title: str | None = None) -> str:
    """One row per frame row; `columns` maps each header to a column name or an (estimate, lo, hi) triple."""
    rows = []
    for r in df.iter_rows(named=True):
        rows.append([interval(r[c[0]], r[c[1]], r[c[2]]) if isinstance(c, tuple) else num(r[c])
                     for c in columns.values()])
    return table(list(columns), rows, title)


def fit_table(fit: FitResult, title: str | None = None) -> str:
    """Parameter, estimate, bootstrap SE, percentile 95% interval and an at-bound flag; then the fit's figures."""
    rows = [[name, value, fit.stderr.get(name), bracket(*fit.ci95.get(name, (None, None))),
             "AT BOUND" if name in fit.at_bound else ""] for name, value in fit.params.items()]
    text = table(["parameter", "estimate", "SE", "95% CI", ""], rows, title or fit.form)
    objective = ("sum of squared log residuals" if fit.delta is None
                 else f"sum of Huber(delta={fit.delta:g}) log residuals")
    text += (f"\nobjective {num(fit.objective)} ({objective}); {fit.n_points} points; {fit.n_resamples} bootstrap "
             f"resamples ({fit.n_failed_resamples} failed); Jacobian condition {num(fit.condition_number, 2)}")
    if fit.at_bound:
        text += (f"\nwarning: {', '.join(fit.at_bound)} ended on a bound of the search: that estimate and its "
                 "interval are not trustworthy; add points that constrain it or fit a form with fewer parameters")
    if fit.n_resamples and fit.n_failed_resamples > fit.n_resamples // 10:
        text += f"\nwarning: {fit.n_failed_resamples} of {fit.n_resamples} resamples failed; intervals are unreliable"
    return text


def holdout_table(report: HoldoutReport) -> str:
    """The extrapolation check: held-out runs, their loss, the prediction (with interval) and the relative error."""
    predicted: Column = ("predicted", "predicted_lo", "predicted_hi") if "predicted_lo" in report.frame.columns \
        else "predicted"
    columns: dict[str, Column] = {c: c for c in ("N", "D", "C", "loss") if c in report.frame.columns}
    columns.update({"predicted [95% CI]": predicted, "rel. error": "rel_error"})
    title = (f"holdout: fitted on {report.n_train} points with C < {num(report.C_threshold)} FLOPs, "
             f"predicting {report.n_test} points above"
             + (f" (whole runs held out: {report.n_unused} of their points below the threshold unused)"
                if report.n_unused else ""))
    return (frame_table(report.frame.sort("C"), columns, title)
            + f"\nmean |rel. error| {num(report.mean_abs_rel_error)}, max {num(report.max_abs_rel_error)}")


def compute_optimal_table(frame: pl.DataFrame) -> str:
    """`analysis.laws.loss.compute_optimal` output: N*, D*, D*/N* with 95% intervals, and the loss there."""
    return frame_table(frame, {"C (FLOPs)": "C", "N_opt [95% CI]": ("N_opt", "N_opt_lo", "N_opt_hi"),
                               "D_opt [95% CI]": ("D_opt", "D_opt_lo", "D_opt_hi"),
                               "D/N [95% CI]": ("tokens_per_param", "tokens_per_param_lo", "tokens_per_param_hi"),
                               "loss at optimum": "loss_opt"}, "compute-optimal allocation (C = 6*N*D)")


def isoflop_report(result: IsoflopResult, allocations: Sequence[Allocation] = ()) -> str:
    """Per-budget optima (fitted: convex and in range), the laws N*(C) and D*(C), and predicted allocations."""
    parts = [frame_table(result.budgets, {
        "C (FLOPs)": "C", "runs": "n_runs", "N_opt [95% CI]": ("N_opt", "N_opt_lo", "N_opt_hi"),
        "D_opt [95% CI]": ("D_opt", "D_opt_lo", "D_opt_hi"), "D/N": "tokens_per_param", "loss_opt": "loss_opt",
        "convex": "convex", "in range": "in_range"}, f"per-budget optima ({result.approach})"),
        fit_table(result.N_law), fit_table(result.D_law)]
    if allocations:
        parts.append(table(["C (FLOPs)", "N_opt [95% CI]", "D_opt [95% CI]", "D/N [95% CI]"],
                           [[a.C, interval(a.N, *a.N_ci95), interval(a.D, *a.D_ci95),
                             interval(a.tokens_per_param, *a.tokens_per_param_ci95)] for a in allocations],
                           "predicted compute-optimal allocation"))
    return "\n\n".join(parts)


def hparams_report(result: HparamsResult, prediction: HparamsPrediction | None = None) -> str:
    """Cells with their optimum, the Step-Law and DeepSeek-form laws, the leave-one-cell-out check, a prediction."""
    parts = [frame_table(result.cells, {
        "N": "N", "D": "D", "configs": "n_configs", "lr_opt": "lr_opt", "B_opt (tokens)": "B_opt",
        "loss_best": "loss_best", "optimum from": "source", "plateau configs": "n_plateau"},
        f"(N, D) cells; optimum by the {result.method!r} method"),
        fit_table(result.lr), fit_table(result.batch), fit_table(result.deepseek_lr),
        fit_table(result.deepseek_batch),
        frame_table(result.loo, {"method": "method", "cells": "n_cells", "mean regret": "mean_regret",
                                 "rms ln lr": "rms_log_lr", "rms ln B": "rms_log_B"},
                    "leave-one-cell-out check (regret: held-out loss at the predicted (lr, B) / best - 1)")]
    if prediction is not None:
        parts.append(table(["law", "lr* [95% CI]", "B* tokens [95% CI]"],
                           [[prediction.form, interval(prediction.lr, *prediction.lr_ci95),
                             interval(prediction.B, *prediction.B_ci95)]], "prediction at the target"))
    return "\n\n".join(parts)


def recipe_table(plan: Recipe) -> str:
    """The recipe at the target with its intervals, and the lab-train overrides that realise it."""
    ramp = "none" if plan.start_sequences is None else f"linear {plan.start_sequences} -> {plan.sequences} sequences"
    rows = [["target", f"N={num(plan.N)} D={num(plan.D)} C={num(plan.C)} ({plan.form} form)"],
            ["lr*", interval(plan.lr, *plan.lr_ci95)], ["B* (tokens)", interval(plan.B, *plan.B_ci95)],
            [f"batch (sequences of {plan.seq_len})", str(plan.sequences)],
            ["steps", f"{plan.steps} [{plan.steps_ci95[0]}, {plan.steps_ci95[1]}]"],
            ["LR warmup", f"{num(plan.warmup_tokens)} tokens, {plan.warmup_steps} steps "
                          f"[{plan.warmup_steps_ci95[0]}, {plan.warmup_steps_ci95[1]}]"],
            ["batch warmup", ramp]]
    return table(["recipe", "value [95% CI]"], rows, "recipe at the target") + \
        "\nlab-train " + " ".join(plan.to_overrides())


def sensitivity_table(sens: Sensitivity) -> str:
    """Per forecast quantity: its value, the std and the worst relative change over leave-one-out refits."""
    rows = [[r["quantity"], r["full"], f"{100 * r['std_rel']:.3g}%" if r["std_rel"] == r["std_rel"] else "n/a",
             f"{100 * r['worst_rel']:+.3g}%" if r["worst_rel"] == r["worst_rel"] else "n/a",
             str(r["worst_left_out"]), f"{r['n_refits']} ({r['n_failed']} failed)"]
            for r in sens.summary.to_dicts()]
    return table(["forecast", "full fit", "std", "worst", f"worst {sens.left_out} left out", "refits"], rows,
                 f"sensitivity: the forecast refitted leaving one {sens.left_out} out (beside the 95% intervals)")


def cbs_report(local: pl.DataFrame, curve: CbsFit, plan: BatchWarmupPlan | None,
               total_tokens: float | None = None) -> str:
    """Local CBS per checkpoint, the fitted CBS(D) curves (best by AIC) and the batch warmup as lab-train overrides."""
    parts = [frame_table(local, {"checkpoint tokens": "checkpoint_tokens", "CBS (tokens)": "cbs",
                                 "ref loss": "ref_loss", "B pass": "B_pass", "B fail": "B_fail",
                                 "censored": "censored", "monotone": "monotone", "branches": "n_branches"},
                         "local critical batch size (largest B within tolerance of the reference)"),
             fit_table(curve.power)]
    if curve.saturating is not None:
        parts.append(fit_table(curve.saturating))
    parts.append(f"best form by AIC: {curve.best}")
    if plan is not None:
        lo, hi = local["checkpoint_tokens"].min(), local["checkpoint_tokens"].max()
        outside = [t for t, _ in plan.milestones if not lo <= t <= hi]
        if outside:
            parts.append(f"note: {len(outside)} milestones lie outside the checkpoints measured ({num(lo)} to "
                         f"{num(hi)} tokens): there the CBS curve is extrapolated")
        steps = ", ".join(f"{s} sequences from {num(t)} tokens" for t, s in plan.milestones) or "no change"
        parts.append(f"batch warmup (seq_len {plan.seq_len}): start at {plan.start_sequences} sequences; {steps}\n"
                     "lab-train " + " ".join(shlex.quote(o) for o in plan.to_overrides()))
        if plan.milestones and total_tokens:
            parts.append("check it against constant batches (then lab-fit warmup-check --sweep <its id>; set "
                         "hydra.sweeper.design.sizes and .lr, the lr at the start batch):\nlab-sweep "
                         + " ".join(shlex.quote(o) for o in plan.check_overrides(total_tokens)))
    return "\n\n".join(parts)


def warmup_check_report(check: WarmupCheck) -> str:
    """A batch-warmup check (analysis.laws.warmup_check): per (point, seed) the optimizer steps of the three runs,
    steps saved against the start batch and the loss differences L_warmup − L_constant (negative: warmup better);
    then the means over seeds per point, with standard errors where there are several seeds."""
    rows = [[p.point, p.seed, p.steps_warmup, p.steps_start, p.steps_final, f"{p.steps_saved:.1%}",
             p.step_ratio_final, p.loss_warmup, f"{p.loss_diff_start:+.4f}", f"{p.loss_diff_final:+.4f}",
             "yes" if p.kept(check.tolerance) else "no"] for p in check.pairs]
    parts = [table(["point", "seed", "S warmup", "S start B", "S final B", "steps saved", "S warmup/S final",
                    "L warmup", "ΔL vs start B", "ΔL vs final B", "kept"], rows,
                   "batch warmup against constant batches on the same tokens (ΔL = L_warmup − L_constant, "
                   "negative: warmup better; steps saved = 1 − S_warmup/S_start)")]

    def mean(s: Any, fmt: str) -> str:
        return format(s.mean, fmt) + ("" if s.stderr is None else f" ± {format(s.stderr, fmt.lstrip('+'))}")

    means = [[point, len([p for p in check.pairs if p.point == point]), mean(m["steps_saved"], ".1%"),
              mean(m["step_ratio_final"], ".3g"), mean(m["loss_diff_start"], "+.4f"),
              mean(m["loss_diff_final"], "+.4f")] for point, m in check.means.items()]
    parts.append(table(["point", "seeds", "steps saved", "S warmup/S final", "ΔL vs start B", "ΔL vs final B"],
                       means, "mean over seeds (± standard error)"))
    parts.append(f"promise kept (fewer steps than the start batch, loss within {check.tolerance:.1%} of its loss) at "
                 f"{check.kept} of {len(check.pairs)} (point, seed)")
    parts += [f"note: {n}" for n in check.notes]
    return "\n\n".join(parts)
