"""The demo's closing page: each law's estimate with its interval, a verdict in words and the published values,
for the demo's own runs and, beside them, for the published Chinchilla points fitted by the same functions.

Torch-free: fitted results in, lines out (the verdict rules are analysis.verdict's).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import polars as pl

from analysis import verdict as v

CHINCHILLA_POINTS = Path(__file__).resolve().parents[1] / "tests" / "data" / "chinchilla_points.csv"
CHINCHILLA_BUDGETS = (6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21)
"""The nine IsoFLOP budgets of Hoffmann et al. 2022 (Figure 3): each digitised point joins the nearest in log C."""

ISOFLOP_LAW = "IsoFLOP (approach 2): N* ∝ C^a"
APPROACH3_LAW = "L(N, D) (approach 3): a = β/(α+β)"
LR_N_LAW = "lr* ∝ N^x (Step Law form)"
LR_D_LAW = "lr* ∝ D^y (Step Law form)"
B_D_LAW = "B* ∝ D^g (Step Law form)"
CBS_LAW = "CBS(D) ∝ D^exp"
DEMO_LAWS = (ISOFLOP_LAW, APPROACH3_LAW, LR_N_LAW, LR_D_LAW, B_D_LAW, CBS_LAW)


def unfitted(law: str, published: v.Published, err: Any) -> v.Verdict:
    return v.Verdict(law, math.nan, math.nan, math.nan, published, v.NOISY, f"no fit: {str(err)[:80]}")


def isoflop_verdict(iso: Any, err: Any = None) -> v.Verdict:
    if iso is None:
        return unfitted(ISOFLOP_LAW, v.ISOFLOP_A, err)
    lo, hi = iso.N_law.ci95.get("exp", (math.nan, math.nan))
    return v.judge(ISOFLOP_LAW, iso.N_law.params["exp"], lo, hi, v.ISOFLOP_A, iso.N_law.at_bound)


def approach3_verdict(law: Any, err: Any = None) -> v.Verdict:
    if law is None:
        return unfitted(APPROACH3_LAW, v.ISOFLOP_A, err)
    alpha, beta = law.params["alpha"], law.params["beta"]
    draws = law.param_draws()
    lo, hi = v.ratio_interval(draws.get("alpha", []), draws.get("beta", []))
    return v.judge(APPROACH3_LAW, beta / (alpha + beta), lo, hi, v.ISOFLOP_A, law.at_bound)


def approach3_line(law: Any) -> str:
    if law is None:
        return "    approach 3 could not be fitted"
    parts = []
    for name in ("E", "alpha", "beta"):
        lo, hi = law.ci95.get(name, (math.nan, math.nan))
        mark = " AT BOUND" if name in law.at_bound else ""
        parts.append(f"{name} = {law.params[name]:.3g} [{lo:.3g}, {hi:.3g}]{mark}")
    return "    approach 3 parameters: " + ", ".join(parts)


def hparams_verdicts(result: Any, err: Any = None) -> list[v.Verdict]:
    if result is None:
        return [unfitted(LR_N_LAW, v.LR_N, err), unfitted(LR_D_LAW, v.LR_D, err), unfitted(B_D_LAW, v.B_D, err)]
    out = []
    for law, fit, name, published in ((LR_N_LAW, result.lr, "exp_N", v.LR_N), (LR_D_LAW, result.lr, "exp_D", v.LR_D),
                                      (B_D_LAW, result.batch, "exp_D", v.B_D)):
        lo, hi = fit.ci95.get(name, (math.nan, math.nan))
        out.append(v.judge(law, fit.params[name], lo, hi, published, fit.at_bound))
    return out


def cbs_verdict(curve: Any, err: Any = None) -> v.Verdict:
    if curve is None:
        return unfitted(CBS_LAW, v.CBS_SHAPE, err)
    power = curve.power
    lo, hi = power.ci95.get("exp", (math.nan, math.nan))
    measured_max = float(curve.points["checkpoint_tokens"].max()) if "checkpoint_tokens" in curve.points.columns \
        else math.inf
    plateau = curve.saturating is not None and curve.saturating.params["D0"] < measured_max
    return v.judge_cbs(power.params["exp"], lo, hi, curve.best, plateau, power.at_bound)


def chinchilla_reference(bootstrap: int) -> tuple[list[v.Verdict], Any]:
    """Approaches 2 and 3 on the published Chinchilla points (245 points digitised by Epoch AI; Besiroglu et al.
    2024 drop the 5 highest losses for approach 3), with the functions the demo's own study uses."""
    import numpy as np

    from analysis.laws import fit_loss
    from analysis.laws.isoflop import fit_isoflop
    from analysis.load import load_table

    df = load_table(CHINCHILLA_POINTS)
    budgets = np.array(CHINCHILLA_BUDGETS)
    nearest = budgets[np.abs(np.log(df["C"].to_numpy()[:, None] / budgets[None, :])).argmin(axis=1)]
    iso = fit_isoflop(df.with_columns(budget=pl.Series(nearest)), bootstrap=bootstrap)
    law = fit_loss(df, form="chinchilla", bootstrap=bootstrap, exclude_top_loss=5)
    return [isoflop_verdict(iso), approach3_verdict(law)], law


def optima_inside(iso: Any) -> Optional[str]:
    """How many per-budget optima lie inside the sampled sizes (a convex parabola with its minimum in range)."""
    if iso is None:
        return None
    b = iso.budgets
    inside = b.filter(pl.col("convex") & pl.col("in_range")).height
    return f"{inside} of {b.height} per-budget optima lie inside the sampled sizes"


def closing_page(demo: list[v.Verdict], demo_law: Any, reference: Optional[list[v.Verdict]], reference_law: Any,
                 notes: list[str]) -> list[str]:
    """The page's lines: the demo's laws, Chinchilla's beside them, and notes (design, optima, where to look)."""
    sections = [("This demo's runs (CPU scale):", demo)]
    if reference is not None:
        sections.append(("Chinchilla's published points, fitted by the same functions:", reference))
    lines = ["", "=" * 100, "What the demo's laws say, next to the published values (95% intervals)", "=" * 100]
    body = v.page(sections)
    split = 1 + 2 * len(demo)
    lines += body[:split] + [approach3_line(demo_law)]
    if reference is not None:
        lines += body[split:] + [approach3_line(reference_law)]
    usable = sum(x.verdict == v.USABLE for x in demo)
    lines += v.sources(demo)
    lines += ["", f"{usable} of {len(demo)} of this demo's laws are usable at this scale.", *notes]
    return lines
