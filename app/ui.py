"""Pieces every page shares: the store box, run filters, law summaries and the export registry.

The store box (tracking URI, reload button, run count) is built by the entrypoint, app/Home.py, before it runs
the page, so it is one set of widgets on every page and keeps its state by itself; pages read what it opened
through `store()`. The run filters are drawn only by the pages that filter (not Home, Forecasts), so their values
are kept under a plain session key and copied into their widget's own key before it is drawn (`kept`):
Streamlit forgets the state of widgets that the page being shown does not draw.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import polars as pl
import streamlit as st

from analysis.load import LoadError
from analysis.points import training_runs
from app import data, default_uri
from tracking.record import Tag

if TYPE_CHECKING:  # type-only: the fitting code imports scipy, which Home and Runs do not need
    import plotly.graph_objects as go

    from analysis.fitting import FitResult

WIDE_INTERVAL = 10.0
EXTRAPOLATION_WARN = 10.0
PLAUSIBLE_TOKENS_PER_PARAM = (1.0, 1000.0)
JOB_POLL_S = 0.5
RUN_TABLE_COLUMNS = ("run_name", "experiment", "sweep", "status", "N", "D", "C", "B", "lr", "loss", "steps",
                     "start_time", "run_id")


def kept(widget: Callable[..., Any], label: str, key: str, default: Any, sanitize: Callable[[Any], Any] | None = None,
         **kwargs: Any) -> Any:
    """Draw `widget` whose value persists across pages under st.session_state[key]."""
    widget_key = f"_{key}"
    # Seeded on every run: a widget drawn by another page is another widget, and its state may be stale or
    # dropped; `key` (updated by on_change before the script runs) holds the value the user last chose.
    value = st.session_state.get(key, default)
    st.session_state[widget_key] = sanitize(value) if sanitize else value

    def copy() -> None:
        st.session_state[key] = st.session_state[widget_key]

    value = widget(label, key=widget_key, on_change=copy, **kwargs)
    st.session_state[key] = value
    return value


STORE_URI, STORE_RUNS = "store_uri", "store_runs"
"""Session keys under which the entrypoint's store box leaves the URI it opened and every run of that store."""


def store_box() -> None:
    """The tracking-URI box, reload button and run count, in the sidebar; called by app/Home.py before the page
    runs. Stops the script (no page drawn) until a store can be read, saying why."""
    uri = st.sidebar.text_input("MLflow tracking URI", default_uri(), key="tracking_uri",
                                help="sqlite:///path/to/mlflow.db, postgresql+psycopg://user@host/db or an http:// "
                                     "server")
    if not uri.strip():
        st.error("Enter the MLflow tracking URI of the store to open (e.g. sqlite:///mlflow.db).")
        st.stop()
    if st.sidebar.button("Reload data", help="Read the store again (cached for 10 minutes otherwise)"):
        data.clear_store_caches()
    try:
        runs = data.runs(uri)
    except LoadError as err:
        st.error(f"Cannot read the store: {err}")
        st.stop()
    st.sidebar.caption(f"{runs.height} runs in the store")
    st.session_state[STORE_URI], st.session_state[STORE_RUNS] = uri, runs


def store() -> tuple[str, pl.DataFrame]:
    """(uri, every run) of the store the sidebar's box opened in this script run (`store_box`)."""
    return st.session_state[STORE_URI], st.session_state[STORE_RUNS]


def _options(runs: pl.DataFrame, column: str) -> list[str]:
    return sorted(v for v in runs[column].unique().to_list() if v is not None)


def run_filters(runs: pl.DataFrame) -> pl.DataFrame:
    """Sidebar filters by experiment, sweep, status and one tag; returns the runs that pass them."""
    st.sidebar.subheader("Filter runs")
    for column, label in (("experiment", "Experiment"), ("sweep", "Sweep"), ("status", "Status")):
        options = _options(runs, column)
        chosen = kept(st.sidebar.multiselect, label, f"filter_{column}", [], options=options,
                      sanitize=lambda v, o=options: [x for x in v if x in o], placeholder="all")
        if chosen:
            runs = runs.filter(pl.col(column).is_in(chosen))
    tags = ["design", Tag.GIT_COMMIT, "parent_run_id", *sorted(c for c in runs.columns if c.startswith("tag."))]
    tags = [t for t in tags if t in runs.columns and runs[t].null_count() < runs.height]
    tag = kept(st.sidebar.selectbox, "Tag", "filter_tag", None, options=tags, index=None, placeholder="any",
               sanitize=lambda v: v if v in tags else None)
    if tag:
        values = _options(runs, tag)
        value = st.sidebar.selectbox(f"{tag} =", values, key="_filter_tag_value")
        runs = runs.filter(pl.col(tag) == value)
    text = st.sidebar.text_input("Run name contains", key="_filter_name")
    if text:
        runs = runs.filter(pl.col("run_name").str.contains(text, literal=True))
    st.sidebar.caption(f"{runs.height} runs pass the filters")
    return runs


def run_table(runs: pl.DataFrame) -> pl.DataFrame:
    return runs.select([c for c in RUN_TABLE_COLUMNS if c in runs.columns])


def run_labels(runs: pl.DataFrame) -> dict[str, str]:
    """run_id -> "run_name (short id)" for pickers."""
    return {rid: f"{name or '?'} ({rid[:6]})"
            for rid, name in zip(runs["run_id"].to_list(), runs["run_name"].to_list())}


def default_runs(runs: pl.DataFrame, k: int = 5) -> list[str]:
    """The k most recent finished training runs (curves are loaded only for the runs picked): no sweep parents, no
    recorded forecasts, which train nothing."""
    done = training_runs(runs)
    done = done.filter(pl.col("status") == "FINISHED") if "status" in done.columns else done
    return done.sort("start_time", descending=True, nulls_last=True)["run_id"].head(k).to_list()


def fmt(value: float) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.4g}"


def interval(estimate: float, ci: tuple[float, float]) -> str:
    """"1.817 (95%: 1.77–1.87)"; the interval is left out when there is none (no bootstrap), and flagged when it
    spans more than a decade (the estimate is then an order of magnitude at best)."""
    lo, hi = ci
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return fmt(estimate)
    wide = " ⚠ wider than a decade" if lo > 0 and hi / lo > WIDE_INTERVAL else ""
    return f"{fmt(estimate)} (95%: {fmt(lo)}–{fmt(hi)}{wide})"


def warn_extrapolation(target: float, fitted_max: float, what: str) -> None:
    """A warning beside a prediction made beyond the fitted range: how far beyond, in factors."""
    if fitted_max > 0 and target > fitted_max:
        factor = target / fitted_max
        say = st.warning if factor > EXTRAPOLATION_WARN else st.caption
        say(f"This {what} is {factor:.3g}× the largest fitted ({fmt(fitted_max)}): an extrapolation over "
            f"{np.log10(factor):.1f} decades; check it with the held-out test before trusting it")


def warn_tokens_per_param(ratio: float) -> None:
    """Compute-optimal D/N far outside what published laws find (≈ 20, Hoffmann et al. 2022) is suspect."""
    lo, hi = PLAUSIBLE_TOKENS_PER_PARAM
    if np.isfinite(ratio) and not lo <= ratio <= hi:
        st.warning(f"D*/N* = {fmt(ratio)} tokens per parameter lies outside {lo}–{hi} (Chinchilla finds ≈ 20): the "
                   "IsoFLOP minima may sit on the edge of the sizes swept; widen the size range")


def law_table(fit: FitResult) -> pl.DataFrame:
    """One row per parameter: estimate, bootstrap SE, 95% interval, at-bound flag."""
    nan = (float("nan"), float("nan"))
    return pl.DataFrame({
        "param": list(fit.params), "estimate": list(fit.params.values()),
        "SE": [fit.stderr.get(k, float("nan")) for k in fit.params],
        "95% low": [fit.ci95.get(k, nan)[0] for k in fit.params],
        "95% high": [fit.ci95.get(k, nan)[1] for k in fit.params],
        "at bound": [k in fit.at_bound for k in fit.params],
    })


def table(df: pl.DataFrame, **kwargs: Any) -> None:
    """st.dataframe with floats shown to 4 significant digits (N, D, C span many decades: `number_format`),
    integers with thousands separators."""
    formats = {c: st.column_config.NumberColumn(format=number_format(df[c])) for c, t in df.schema.items()
               if t.is_numeric()}
    st.dataframe(df, hide_index=True, column_config=formats, **kwargs)


def number_format(column: pl.Series) -> str:
    """A column's display format: 4 significant digits, in scientific notation where the values span beyond
    1e-3..1e5 (Streamlit's "%.4g" prints 6.728e10 as 67280000000), thousands separators for integers."""
    if not column.dtype.is_float():
        return "localized"
    values = column.drop_nulls().abs()
    values = values.filter(values.is_finite() & (values > 0))
    if values.len() and (values.max() >= 1e5 or values.min() < 1e-3):
        return "%.3e"
    return "%.4g"


def show_law(fit: FitResult, title: str) -> None:
    """The law's name, every parameter with its interval in one line, and the table with SEs."""
    title = title.replace("*", "\\*")  # lr*, B*: not markdown emphasis
    st.markdown(f"**{title}** — `{fit.form}`, {fit.n_points} points, {fit.n_resamples} bootstrap resamples")
    st.markdown(" · ".join(f"**{k}** = {interval(v, fit.ci95.get(k, (np.nan, np.nan)))}"
                           for k, v in fit.params.items()))
    if fit.at_bound:
        st.warning(f"{', '.join(fit.at_bound)} ended on a bound of the fit: the optimum is not interior and its "
                   "interval is not trustworthy; add points or widen the bounds")
    table(law_table(fit))


def rerun_when_done(job: Future) -> None:
    """Rerun the page once `job` (a computation in a worker thread, app/fits.py) has finished, so its result
    replaces what the page shows in the meantime; polled from a fragment, which reruns alone until then."""

    @st.fragment(run_every=JOB_POLL_S)
    def poll() -> None:
        if job.done():
            st.rerun()

    poll()


def chart(fig: go.Figure, key: str) -> None:
    st.plotly_chart(fig, key=key, width="stretch")


def begin_exports(section: str) -> None:
    """Forget what this page registered on its previous run: only what it registers now is exportable."""
    st.session_state.setdefault("exports", {})[section] = {"laws": {}, "figures": {}, "tables": {}, "provenance": {}}


def begin_page_exports(sections: tuple[str, ...], signature: Any) -> None:
    """Forget what the page's sections (tabs) registered when what they all rest on (points, shared settings:
    `signature`) changed since: a tab not open now keeps its exports only while they still describe the page."""
    seen = st.session_state.setdefault("export_signatures", {})
    if seen.get(sections[0]) != repr(signature):
        for section in sections:
            begin_exports(section)
        seen[sections[0]] = repr(signature)


def current_filters() -> dict[str, Any]:
    """The sidebar's filters in force (kept under filter_* session keys)."""
    return {k.removeprefix("filter_"): v for k, v in sorted(st.session_state.items())
            if isinstance(k, str) and k.startswith("filter_") and v}


def provenance(uri: str, chosen: Any, source: str) -> dict[str, Any]:
    """Where a page's numbers come from: the store (or table), sweep, filters and run ids (app.selection)."""
    if chosen is None:
        return {"store": None, "table": source, "sweep": None, "filters": {}, "run_ids": []}
    return {**chosen.provenance(uri), "filters": current_filters()}


def register(section: str, laws: dict[str, Any] | None = None, figures: dict[str, go.Figure] | None = None,
             tables: dict[str, pl.DataFrame] | None = None, provenance: dict[str, Any] | None = None) -> None:
    """Offer this page's fitted laws (JSON-able dicts), figures and tables on the Export page, each with the
    provenance of its points (store, sweep, filters, run ids, settings)."""
    section_exports = st.session_state.setdefault("exports", {}).setdefault(
        section, {"laws": {}, "figures": {}, "tables": {}, "provenance": {}})
    for kind, items in (("laws", laws), ("figures", figures), ("tables", tables)):
        section_exports[kind].update(items or {})
        for name in items or {}:
            section_exports["provenance"][f"{kind}/{name}"] = provenance or {}


def read_table(path: str, required: tuple[str, ...]) -> pl.DataFrame:
    """The table at `path` (app.data.table); a path that cannot be read stops the page with one clear error."""
    try:
        return data.table(path, required)
    except (LoadError, OSError) as err:
        st.error(f"Cannot read the table {path!r}: {err}")
        st.stop()
        raise  # not reached: st.stop ends the script run


def source_picker(key: str, table_columns: tuple[str, ...], example: str) -> str:
    """Radio "runs in the store" / "table file"; returns "store" or the table path."""
    choice = st.radio("Points from", ["runs in the store", "a CSV/Parquet table"], key=f"{key}_source",
                      horizontal=True)
    if choice == "runs in the store":
        return "store"
    path = st.text_input(f"Table path (columns {', '.join(table_columns)})", key=f"{key}_path", placeholder=example)
    if not path:
        st.info("Enter the path of a CSV or Parquet table.")
        st.stop()
    return path
