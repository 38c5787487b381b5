"""Every plotly figure of the workbench: the dashboard (app/) and the notebooks draw only through here.

Functions take the tidy frames of `analysis.load` (runs: N, D, C, B, lr, loss, run_id, run_name; curves: run_id,
metric, step, value, tokens, flops) and the typed results of `analysis.laws`, and return a `go.Figure`; none
reads a store or fits a law beyond evaluating a fitted one. Axis labels use the symbols of design §4 with their
units. Intervals are the laws' own 95% bootstrap intervals (percentiles of the law over its draws).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import plotly.graph_objects as go
import polars as pl

from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from tracking.record import Metric, compute

# The laws are imported where a figure evaluates one, not here: they pull in scipy (seconds to import), and the
# dashboard's Home and Runs pages, which only draw curves, should not wait for it.
if TYPE_CHECKING:
    from analysis.fitting import FitResult
    from analysis.laws.cbs import BatchWarmupPlan, CbsFit
    from analysis.laws.hparams import HparamsResult
    from analysis.laws.isoflop import IsoflopResult

LABELS = {
    "N": "N (non-embedding parameters)", "D": "D (tokens)", "C": "C = 6·N·D (FLOPs)", "loss": "L (nats/token)",
    "B": "B (tokens)", "lr": "lr (peak)", "tokens": "D (tokens seen)",
    Metric.MODEL_FLOPS: "model FLOPs (attention and head included)",
    "step": "S (optimizer steps)", "residual": "ln L − ln L̂ (log residual)",
}
CURVE_X = ("tokens", "C", "step")
"""What learning curves are drawn against: tokens seen, compute spent C = 6·N·tokens, optimizer steps."""
SCALE = "Viridis"
TEMPLATE = "plotly_white"
MAX_CURVE_POINTS = 2000  # per run: a browser draws 1,000-step curves of many runs without stalling


def _colors(values: np.ndarray) -> list[str]:
    """One colour per value on a log scale (values > 0): the smallest dark, the largest yellow."""
    logs = np.log(np.asarray(values, dtype=float))
    span = logs.max() - logs.min() if logs.size else 0.0
    fractions = (logs - logs.min()) / span if span > 0 else np.zeros(logs.size)
    return sample_colorscale(SCALE, list(np.clip(fractions, 0.0, 1.0)))


LEGEND_BELOW = {"orientation": "h", "y": -0.25, "itemsizing": "constant"}  # clear of a colour bar on the right


def _figure(title: str, legend_below: bool = False, **layout: Any) -> go.Figure:
    fig = go.Figure()
    legend = LEGEND_BELOW if legend_below else {"itemsizing": "constant"}
    fig.update_layout(title=title, template=TEMPLATE, legend=legend, **layout)
    return fig


def _band(fig: go.Figure, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, color: str, name: str,
          **where: Any) -> None:
    """A filled 95% band between lo and hi (NaN bounds, e.g. no bootstrap, draw nothing)."""
    ok = np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return
    xs = np.concatenate([x[ok], x[ok][::-1]])
    ys = np.concatenate([hi[ok], lo[ok][::-1]])
    fig.add_trace(go.Scatter(x=xs, y=ys, fill="toself", line={"width": 0}, fillcolor=color, opacity=0.2,
                             name=name, hoverinfo="skip", showlegend=True), **where)


def _grid(values: np.ndarray, n: int = 100, pad: float = 1.0) -> np.ndarray:
    """n log-spaced points from min/pad to max·pad of positive `values`."""
    v = np.asarray(values, dtype=float)
    return np.geomspace(v.min() / pad, v.max() * pad, n)


def _representative(values: np.ndarray, k: int = 8) -> np.ndarray:
    """At most k distinct values, log-evenly picked, to draw one fitted curve each."""
    distinct = np.unique(np.asarray(values, dtype=float))
    if distinct.size <= k:
        return distinct
    return distinct[np.unique(np.round(np.linspace(0, distinct.size - 1, k)).astype(int))]


def _col(df: pl.DataFrame, name: str) -> np.ndarray:
    return df[name].cast(pl.Float64).to_numpy()


# --- loss laws -----------------------------------------------------------------------------------------------

def loss_law(points: pl.DataFrame, fit: FitResult | None = None, x: str = "D") -> go.Figure:
    """Loss against D (or C, or N) on log axes, points coloured by N, with the fitted law drawn per N.

    points: N, D, C = 6·N·D, loss. For a law of N and D against D or C the curve L(N, ·) is drawn for up to 8 of
    the points' N values (in their colour), over the D its points span; against N, L(·, D) for up to 8 of their D.
    L(N) and L(C) laws are drawn as one curve against their own input.
    """
    from analysis.laws.loglinear import prediction_interval
    from analysis.laws.loss import predict_loss

    if x not in ("D", "C", "N"):
        raise ValueError(f"x must be 'D', 'C' or 'N', got {x!r}")
    N, X, L = _col(points, "N"), _col(points, x), _col(points, "loss")
    fig = _figure(f"Loss against {x}" + (f": {fit.form}" if fit else ""), legend_below=True)
    fig.add_trace(go.Scatter(
        x=X, y=L, mode="markers", name="runs",
        marker={"color": np.log10(N), "colorscale": SCALE, "size": 8, "colorbar": {"title": "log10 N"}},
        customdata=np.column_stack([N, _col(points, "D")]),
        hovertemplate="N=%{customdata[0]:.3g}<br>D=%{customdata[1]:.3g}<br>L=%{y:.4f}<extra></extra>"))
    if fit is not None:
        if fit.inputs == ("N", "D") and x == "N":  # one curve L(·, D) per D, over the N its points span
            D = _col(points, "D")
            reps = _representative(D)
            for d_value, color in zip(reps, _colors(reps) if reps.size > 1 else ["#440154"]):
                at_d = points.filter(pl.col("D") == d_value)
                n = _grid(_col(at_d if at_d.height > 1 else points, "N"), pad=1.5)
                fig.add_trace(go.Scatter(x=n, y=predict_loss(fit, N=n, D=np.full(n.size, d_value)), mode="lines",
                                         line={"color": color, "dash": "dot"}, name=f"fit D={d_value:.3g}"))
        elif fit.inputs == ("N", "D"):
            reps = _representative(N)
            for n_value, color in zip(reps, _colors(reps) if reps.size > 1 else ["#440154"]):
                at_n = points.filter(pl.col("N") == n_value)
                d = _grid(_col(at_n if at_n.height else points, "D"), pad=2.0)
                xs = d if x == "D" else compute(n_value, d)
                fig.add_trace(go.Scatter(x=xs, y=predict_loss(fit, N=np.full(d.size, n_value), D=d), mode="lines",
                                         line={"color": color}, name=f"fit N={n_value:.3g}"))
        else:
            (column,) = fit.inputs
            grid = _grid(_col(points, column), pad=2.0)
            est, lo, hi = prediction_interval(fit, grid)
            xs = grid if column == x else None
            if xs is not None:
                _band(fig, xs, lo, hi, "#21918c", "95% interval")
                fig.add_trace(go.Scatter(x=xs, y=est, mode="lines", line={"color": "#21918c"}, name=fit.form))
    fig.update_xaxes(type="log", title=LABELS[x])
    fig.update_yaxes(type="log", title=LABELS["loss"])
    return fig


def residuals(points: pl.DataFrame, fit: FitResult, x: str = "C") -> go.Figure:
    """Log residuals ln L − ln L̂ of every point against x (log axis), coloured by N; 0 is a perfect fit."""
    from analysis.laws.loss import predict_loss

    inputs = {c: _col(points, c) for c in ("N", "D", "C") if c in points.columns}
    r = np.log(_col(points, "loss")) - np.log(predict_loss(fit, **inputs))
    fig = _figure(f"Residuals of {fit.form}", legend_below=True)
    fig.add_trace(go.Scatter(x=_col(points, x), y=r, mode="markers", name="runs",
                             marker={"color": np.log10(inputs["N"]), "colorscale": SCALE, "size": 8,
                                     "colorbar": {"title": "log10 N"}}))
    fig.add_hline(y=0.0, line={"dash": "dash", "color": "grey"})
    fig.update_xaxes(type="log", title=LABELS[x])
    fig.update_yaxes(title=LABELS["residual"])
    return fig


def holdout(frame: pl.DataFrame, C_threshold: float) -> go.Figure:
    """Predicted against observed loss of held-out runs (C >= C_threshold), with 95% intervals when present."""
    obs, pred = _col(frame, "loss"), _col(frame, "predicted")
    error_y = None
    if "predicted_lo" in frame.columns:
        error_y = {"type": "data", "symmetric": False, "array": _col(frame, "predicted_hi") - pred,
                   "arrayminus": pred - _col(frame, "predicted_lo")}
    fig = _figure(f"Extrapolation: fitted on C < {C_threshold:.3g}, predicting C ≥ {C_threshold:.3g}",
                  legend_below=True)
    fig.add_trace(go.Scatter(x=obs, y=pred, mode="markers", error_y=error_y, name="held-out runs",
                             marker={"color": np.log10(_col(frame, "C")), "colorscale": SCALE, "size": 9,
                                     "colorbar": {"title": "log10 C"}}))
    lim = [min(obs.min(), pred.min()) * 0.98, max(obs.max(), pred.max()) * 1.02]
    fig.add_trace(go.Scatter(x=lim, y=lim, mode="lines", line={"dash": "dash", "color": "grey"}, name="L̂ = L"))
    fig.update_xaxes(title="observed " + LABELS["loss"])
    fig.update_yaxes(title="predicted " + LABELS["loss"])
    return fig


def isoflop_profiles(points: pl.DataFrame, result: IsoflopResult | None = None,
                     rel_tol: float = 0.05) -> go.Figure:
    """Loss against N per compute budget (runs grouped as `fit_isoflop` groups them), each budget's parabola
    in ln N, and its minimum N*(C) with the 95% interval as a horizontal bar (from `result.budgets`)."""
    from analysis.laws.isoflop import assign_budgets

    grouped = assign_budgets(points, rel_tol)
    budgets = np.unique(_col(grouped, "budget_C"))
    fig = _figure("IsoFLOP profiles")
    for c, color in zip(budgets, _colors(budgets) if budgets.size > 1 else ["#440154"]):
        runs = grouped.filter(pl.col("budget_C") == c).sort("N")
        n, loss = _col(runs, "N"), _col(runs, "loss")
        fig.add_trace(go.Scatter(x=n, y=loss, mode="markers", marker={"color": color, "size": 8},
                                 name=f"C={c:.2g}", legendgroup=f"{c}"))
        if np.unique(n).size >= 3:
            # the same least-squares parabola in ln N as analysis.laws.isoflop, drawn over the sampled range
            q = np.polyfit(np.log(n), loss, 2)
            grid = _grid(n)
            fig.add_trace(go.Scatter(x=grid, y=np.polyval(q, np.log(grid)), mode="lines", line={"color": color},
                                     legendgroup=f"{c}", showlegend=False, hoverinfo="skip"))
    if result is not None:
        b = result.budgets.filter(pl.col("convex") & pl.col("in_range"))
        n_opt = _col(b, "N_opt")
        fig.add_trace(go.Scatter(
            x=n_opt, y=_col(b, "loss_opt"), mode="markers", name="minimum N*(C) ± 95%",
            marker={"symbol": "star", "size": 14, "color": "crimson"},
            error_x={"type": "data", "symmetric": False, "array": _col(b, "N_opt_hi") - n_opt,
                     "arrayminus": n_opt - _col(b, "N_opt_lo")}))
    fig.update_xaxes(type="log", title=LABELS["N"])
    fig.update_yaxes(title=LABELS["loss"])
    return fig


def compute_frontier(result: IsoflopResult | None = None, chinchilla: FitResult | None = None,
                     C_range: Sequence[float] | None = None, target_C: float | None = None) -> go.Figure:
    """N*(C) and D*(C) side by side with 95% bands: the IsoFLOP budgets' optima and their power laws, and/or
    the closed-form allocation of a chinchilla fit; `target_C` marks an extrapolation with its interval."""
    from analysis.laws.isoflop import predict_optimal
    from analysis.laws.loglinear import prediction_interval
    from analysis.laws.loss import compute_optimal

    if result is None and chinchilla is None:
        raise ValueError("compute_frontier needs an IsoflopResult, a chinchilla FitResult, or both")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("N*(C)", "D*(C)"))
    fig.update_layout(title="Compute-optimal frontier", template=TEMPLATE)
    lo_c, hi_c = C_range if C_range is not None else (None, None)
    if result is not None:
        c_pts = _col(result.budgets, "C")
        lo_c = lo_c or c_pts.min() / 3
        hi_c = hi_c or c_pts.max() * 3
    lo_c, hi_c = lo_c or 1e15, hi_c or 1e22
    if target_C:
        lo_c, hi_c = min(lo_c, target_C / 2), max(hi_c, target_C * 2)
    grid = np.geomspace(lo_c, hi_c, 100)
    if result is not None:
        used = result.budgets.filter(pl.col("convex") & pl.col("in_range"))
        for col, law, sym, color in ((1, result.N_law, "N", "#3b528b"), (2, result.D_law, "D", "#5ec962")):
            est, lo, hi = prediction_interval(law, grid)
            _band(fig, grid, lo, hi, color, f"{sym}* 95% ({result.approach})", row=1, col=col)
            p = law.params
            fig.add_trace(go.Scatter(x=grid, y=est, mode="lines", line={"color": color},
                                     name=f"{sym}* = {p['coef']:.3g}·C^{p['exp']:.3f} ({result.approach})"),
                          row=1, col=col)
            v = _col(used, f"{sym}_opt")
            fig.add_trace(go.Scatter(
                x=_col(used, "C"), y=v, mode="markers", marker={"color": color, "size": 8},
                name=f"budget optima {sym}*", error_y={"type": "data", "symmetric": False,
                                                        "array": _col(used, f"{sym}_opt_hi") - v,
                                                        "arrayminus": v - _col(used, f"{sym}_opt_lo")}),
                row=1, col=col)
    if chinchilla is not None:
        opt = compute_optimal(chinchilla, grid)
        for col, sym in ((1, "N"), (2, "D")):
            _band(fig, grid, _col(opt, f"{sym}_opt_lo"), _col(opt, f"{sym}_opt_hi"), "#fde725",
                  f"{sym}* 95% (approach 3)", row=1, col=col)
            fig.add_trace(go.Scatter(x=grid, y=_col(opt, f"{sym}_opt"), mode="lines",
                                     line={"color": "#b5a000", "dash": "dot"}, name=f"{sym}* (approach 3 fit)"),
                          row=1, col=col)
    if target_C:
        if result is not None:
            a = predict_optimal(result, target_C)
            marks = {"N": (a.N, *a.N_ci95), "D": (a.D, *a.D_ci95)}
        else:
            row = compute_optimal(chinchilla, [target_C]).row(0, named=True)
            marks = {sym: (row[f"{sym}_opt"], row[f"{sym}_opt_lo"], row[f"{sym}_opt_hi"]) for sym in ("N", "D")}
        for col, sym in ((1, "N"), (2, "D")):
            est, lo, hi = marks[sym]
            fig.add_trace(go.Scatter(x=[target_C], y=[est], mode="markers", name=f"target {sym}*",
                                     marker={"symbol": "diamond", "size": 13, "color": "crimson"},
                                     error_y={"type": "data", "symmetric": False, "array": [hi - est],
                                              "arrayminus": [est - lo]}), row=1, col=col)
    fig.update_xaxes(type="log", title=LABELS["C"])
    fig.update_yaxes(type="log", title=LABELS["N"], row=1, col=1)
    fig.update_yaxes(type="log", title=LABELS["D"], row=1, col=2)
    return fig


# --- runs ----------------------------------------------------------------------------------------------------

def _thin(g: pl.DataFrame, limit: int = MAX_CURVE_POINTS) -> pl.DataFrame:
    """Every k-th row (and the last) so a curve keeps at most `limit` points."""
    if g.height <= limit:
        return g
    k = int(np.ceil(g.height / limit))
    return g.with_row_index("_i").filter((pl.col("_i") % k == 0) | (pl.col("_i") == g.height - 1)).drop("_i")


def learning_curves(curves: pl.DataFrame, runs: pl.DataFrame | None = None, metric: str = Metric.VAL_LOSS,
                    x: str = "tokens", log_x: bool = True, log_y: bool = False, color_by: str | None = None,
                    smoothing: float = 0.0) -> go.Figure:
    """One line per run of `metric` against tokens, C (6·N·tokens spent) or step, named by run_name when `runs`
    (run_id, run_name) is given. Long curves are thinned to MAX_CURVE_POINTS points per run for drawing.

    color_by: a numeric column of `runs` (N, lr, a param): lines coloured on a log scale of it, as a sweep's runs
    are read. smoothing in [0, 1): an exponential moving average of the values (TensorBoard's slider), debiased."""
    if x not in CURVE_X:
        raise ValueError(f"x must be one of {', '.join(CURVE_X)}, got {x!r}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    names = ({rid: name for rid, name in zip(runs["run_id"].to_list(), runs["run_name"].to_list()) if name}
             if runs is not None else {})
    data = (curves.filter(pl.col("metric") == metric).drop_nulls(x)
            .with_columns(label=pl.col("run_id").replace_strict(names, default=pl.col("run_id").str.slice(0, 8)))
            .sort(["label", "run_id", "step"]))  # legend in run-name order
    colors: dict[str, str] = {}
    if color_by and runs is not None and color_by in runs.columns:
        values = runs.select("run_id", pl.col(color_by).cast(pl.Float64, strict=False)).drop_nulls()
        values = values.filter(pl.col(color_by) > 0)
        if values.height:
            logs = np.log10(values[color_by].to_numpy())
            span = np.ptp(logs) or 1.0
            shades = sample_colorscale(SCALE, list((logs - logs.min()) / span))
            colors = dict(zip(values["run_id"].to_list(), shades))
    fig = _figure(f"{metric} against {LABELS[x]}" + (f", coloured by {color_by}" if colors else ""))
    for (label, run_id), g in data.group_by(["label", "run_id"], maintain_order=True):
        g = _thin(g)
        y = _col(g, "value")
        if smoothing > 0:
            y = _ema(y, smoothing)
        line = {"color": colors[run_id]} if run_id in colors else {}
        fig.add_trace(go.Scatter(x=_col(g, x), y=y, mode="lines+markers" if g.height < 30 else "lines",
                                 name=label, line=line))
    fig.update_xaxes(type="log" if log_x else "linear", title=LABELS[x])
    fig.update_yaxes(type="log" if log_y else "linear", title=LABELS["loss"] if "loss" in metric else metric)
    return fig


def _ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average: out[i] = Σ w^(i-j)(1-w)·v[j] / (1 - w^(i+1))."""
    out, acc = np.empty_like(values, dtype=float), 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        out[i] = acc / (1 - weight ** (i + 1))
    return out


# --- hyperparameters -----------------------------------------------------------------------------------------

def lr_batch_heatmap(configs: pl.DataFrame, cell: dict[str, Any] | None = None) -> go.Figure:
    """Loss over the lr × B grid of one (N, D) cell (replicates averaged), in log10 coordinates; the cell's
    optimum (`landscape_cells` row: lr_opt/B_opt or lr_convex/B_convex), best run and plateau box marked."""
    mean = configs.group_by(["lr", "B"]).agg(pl.col("loss").mean())
    lrs, Bs = np.unique(_col(mean, "lr")), np.unique(_col(mean, "B"))
    z = np.full((Bs.size, lrs.size), np.nan)
    for lr, B, loss in mean.select("lr", "B", "loss").iter_rows():
        z[np.searchsorted(Bs, B), np.searchsorted(lrs, lr)] = loss
    title = "Loss over lr × B" + (f" at N={cell['N']:.3g}, D={cell['D']:.3g}" if cell else "")
    fig = _figure(title, legend_below=True)
    fig.add_trace(go.Heatmap(x=np.log10(lrs), y=np.log10(Bs), z=z, colorscale=SCALE, reversescale=True,
                             colorbar={"title": "L"}, hovertemplate="lr=10^%{x:.2f}<br>B=10^%{y:.2f}<br>"
                                                                    "L=%{z:.4f}<extra></extra>"))
    if cell:
        lr_opt, B_opt = cell.get("lr_opt", cell["lr_convex"]), cell.get("B_opt", cell["B_convex"])
        fig.add_shape(type="rect", x0=np.log10(cell["lr_plateau_min"]), x1=np.log10(cell["lr_plateau_max"]),
                      y0=np.log10(cell["B_plateau_min"]), y1=np.log10(cell["B_plateau_max"]),
                      line={"color": "white", "dash": "dash", "width": 2})
        fig.add_trace(go.Scatter(x=[np.log10(cell["lr_best"])], y=[np.log10(cell["B_best"])], mode="markers",
                                 marker={"symbol": "x", "size": 12, "color": "white"}, name="best run"))
        fig.add_trace(go.Scatter(x=[np.log10(lr_opt)], y=[np.log10(B_opt)], mode="markers",
                                 marker={"symbol": "star", "size": 16, "color": "crimson"},
                                 name=f"optimum lr={lr_opt:.3g}, B={B_opt:.3g}"))
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line={"color": "grey", "dash": "dash"},
                                 name=f"plateau (within tolerance, {cell['n_plateau']} configs)"))
    fig.update_xaxes(title="log10 " + LABELS["lr"])
    fig.update_yaxes(title="log10 " + LABELS["B"])
    return fig


def hparam_laws(result: HparamsResult) -> go.Figure:
    """lr*(N, D) against D, one fitted line (with 95% band) per N, and B*(D) with its band; cell optima as points."""
    from analysis.laws.loglinear import prediction_interval

    cells = result.cells
    fig = make_subplots(rows=1, cols=2, subplot_titles=("lr*(N, D)", "B*(D)"))
    fig.update_layout(title=f"Optimal hyperparameters (method: {result.method})", template=TEMPLATE)
    D = _col(cells, "D")
    grid = _grid(D, pad=2.0)
    Ns = np.unique(_col(cells, "N"))
    for n_value, color in zip(Ns, _colors(Ns) if Ns.size > 1 else ["#440154"]):
        at = cells.filter(pl.col("N") == n_value)
        est, lo, hi = prediction_interval(result.lr, np.full(grid.size, n_value), grid)
        _band(fig, grid, lo, hi, color, f"lr* 95% N={n_value:.3g}", row=1, col=1)
        fig.add_trace(go.Scatter(x=grid, y=est, mode="lines", line={"color": color}, name=f"lr* N={n_value:.3g}"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=_col(at, "D"), y=_col(at, "lr_opt"), mode="markers",
                                 marker={"color": color, "size": 9}, name=f"cells N={n_value:.3g}"), row=1, col=1)
    est, lo, hi = prediction_interval(result.batch, grid)
    _band(fig, grid, lo, hi, "#21918c", "B* 95%", row=1, col=2)
    p = result.batch.params
    fig.add_trace(go.Scatter(x=grid, y=est, mode="lines", line={"color": "#21918c"},
                             name=f"B* = {p['coef']:.3g}·D^{p['exp_D']:.3f}"), row=1, col=2)
    fig.add_trace(go.Scatter(x=D, y=_col(cells, "B_opt"), mode="markers", marker={"color": "#21918c", "size": 9},
                             name="cell optima B*"), row=1, col=2)
    fig.update_xaxes(type="log", title=LABELS["D"])
    fig.update_yaxes(type="log", title=LABELS["lr"], row=1, col=1)
    fig.update_yaxes(type="log", title=LABELS["B"], row=1, col=2)
    return fig


# --- critical batch size -------------------------------------------------------------------------------------

def noise_scale(curves: pl.DataFrame, runs: pl.DataFrame | None = None, x: str = "tokens") -> go.Figure:
    """Gradient noise scale B_simple (tokens, metric noise/b_simple) over training, one line per run."""
    fig = learning_curves(curves, runs, metric=Metric.B_SIMPLE, x=x, log_x=True, log_y=True)
    fig.update_layout(title="Gradient noise scale B_simple over training")
    fig.update_yaxes(title="B_simple (tokens)")
    return fig


def cbs(local: pl.DataFrame, fit: CbsFit | None = None, plan: BatchWarmupPlan | None = None,
        total_tokens: float | None = None) -> go.Figure:
    """Local CBS per checkpoint (bar: last passing to first failing B), the fitted CBS(D) laws with 95% bands,
    and a proposed stepwise batch warmup (batch in tokens against tokens)."""
    from analysis.laws.loglinear import prediction_interval

    fig = _figure("Critical batch size over training")
    ok = local.filter(pl.col("censored") == "none")
    above = local.filter(pl.col("censored") == "above")
    if ok.height:
        c = _col(ok, "cbs")
        fail = ok["B_fail"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        fig.add_trace(go.Scatter(x=_col(ok, "checkpoint_tokens"), y=c, mode="markers", name="local CBS",
                                 marker={"size": 10, "color": "#3b528b"},
                                 error_y={"type": "data", "symmetric": False, "array": np.nan_to_num(fail - c),
                                          "arrayminus": np.zeros(c.size)}))
    if above.height:
        fig.add_trace(go.Scatter(x=_col(above, "checkpoint_tokens"), y=_col(above, "cbs"), mode="markers",
                                 name="every B passed (lower bound)",
                                 marker={"symbol": "triangle-up", "size": 11, "color": "#3b528b"}))
    D_all = _col(local, "checkpoint_tokens")
    first = plan.milestones[0][0] if plan is not None and plan.milestones else D_all.min()
    end = max(D_all.max(), total_tokens or 0.0) * 1.2
    grid = np.geomspace(min(D_all.min(), first) / 2, end, 120)
    if fit is not None:
        forms = [("power", fit.power, "#5ec962")] + ([("saturating", fit.saturating, "#fde725")]
                                                     if fit.saturating is not None else [])
        for name, law, color in forms:
            est, lo, hi = prediction_interval(law, grid)
            _band(fig, grid, lo, hi, color, f"{name} 95%")
            best = " (best)" if name == fit.best else ""
            fig.add_trace(go.Scatter(x=grid, y=est, mode="lines", line={"color": color}, name=f"{law.form}{best}"))
    if plan is not None:
        # shape "hv": each batch holds from its milestone until the next one, the last until the run's end
        xs = [grid[0], *[t for t, _ in plan.milestones], total_tokens or end]
        ys = [plan.start_sequences, *[s for _, s in plan.milestones]]
        fig.add_trace(go.Scatter(x=xs, y=[b * plan.seq_len for b in [*ys, ys[-1]]], mode="lines",
                                 line={"color": "crimson", "shape": "hv", "width": 3}, name="proposed batch warmup"))
    fig.update_xaxes(type="log", title=LABELS["tokens"])
    fig.update_yaxes(type="log", title="critical batch size " + LABELS["B"])
    return fig


def schedule_curves(predictions: pl.DataFrame, names: dict[str, str] | None = None) -> go.Figure:
    """Schedule law (analysis.laws.schedule): each run's measured loss (markers) and the law's prediction (lines,
    dashed for the runs it was fitted on); `predictions` has run_id, step, loss, predicted, fitted."""
    fig = _figure("Observed vs predicted loss curves", xaxis_title=LABELS["step"], yaxis_title=LABELS["loss"])
    runs = predictions["run_id"].unique(maintain_order=True).to_list()
    colors = sample_colorscale(SCALE, list(np.linspace(0.0, 0.9, max(len(runs), 1))))
    for run_id, color in zip(runs, colors):
        g = predictions.filter(pl.col("run_id") == run_id).sort("step")
        label = (names or {}).get(run_id, run_id)
        fitted = bool(g["fitted"][0])
        fig.add_trace(go.Scatter(x=_col(g, "step"), y=_col(g, "loss"), mode="markers", marker={"color": color, "size": 4},
                                 name=f"{label} observed", legendgroup=run_id))
        fig.add_trace(go.Scatter(x=_col(g, "step"), y=_col(g, "predicted"), mode="lines", legendgroup=run_id,
                                 line={"color": color, "dash": "dash" if fitted else "solid"},
                                 name=f"{label} {'fitted' if fitted else 'predicted (held out)'}"))
    return fig


def schedule_choice(chosen: np.ndarray, compare: dict[str, np.ndarray], predicted_final: dict[str, float]
                    ) -> go.Figure:
    """The chosen lr schedule beside cosine and WSD of the same length (lr per step), each named with the
    schedule law's predicted final loss (analysis.laws.schedule_choose)."""
    fig = _figure("Chosen schedule vs cosine and WSD", xaxis_title=LABELS["step"], yaxis_title="lr")
    for name, lr in {"chosen": chosen, **compare}.items():
        x = np.arange(np.asarray(lr).size)
        keep = np.unique(np.linspace(0, x.size - 1, min(x.size, MAX_CURVE_POINTS)).astype(int))
        fig.add_trace(go.Scatter(x=x[keep], y=np.asarray(lr)[keep], mode="lines",
                                 name=f"{name}: predicted final L = {predicted_final.get(name, float('nan')):.4g}",
                                 line={"width": 3 if name == "chosen" else 1.5}))
    return fig
