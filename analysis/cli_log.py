"""`lab-fit … --log`: the fitted law goes onto the sweep it was fitted to, where MLflow users look for it.

    lab-fit loss --tracking-uri sqlite:///mlflow.db --sweep grid-1 --form chinchilla --log

The sweep's parent run (the run tagged ``sweep_parent=<--sweep>``, made by lab-sweep and lab-study) receives, under
``fits/<law>/`` (``<law>`` is the subcommand, and the form for ``loss``: ``fits/loss-chinchilla/``):

- ``law.json``: the same strict JSON as ``--out`` (NaN as null);
- one self-contained plotly HTML file per figure (``analysis.plots``), viewable in MLflow's artifact browser.

A later fit of the same law replaces these files. The parent is looked up before anything is fitted, so a wrong
--sweep fails at once; a failure to write (a server that stops answering) is one ``error:`` line, as for bad input.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import polars as pl

from analysis.cli_input import CliError, Progress
from analysis.serialize import jsonable
from tracking.record import Artifact, Tag

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from analysis.fitting import FitResult
    from analysis.laws.cbs import BatchWarmupPlan, CbsFit
    from analysis.laws.hparams import HparamsResult
    from analysis.laws.isoflop import IsoflopResult

Figures = dict[str, Callable[[], "go.Figure"]]
"""Figure name -> a function drawing it: figures are drawn only when --log asks for them (plotly is not free)."""

FITS_DIR = "fits"


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", action="store_true",
                        help="store only: log the law's JSON and figures onto the --sweep's parent run")


def sweep_parent(args: argparse.Namespace) -> str:
    """The run id of the parent of --sweep; CliError when --log cannot know where to write."""
    if args.tracking_uri is None or not args.sweep:
        raise CliError("--log writes the law onto the parent run of the sweep it was fitted to: give --tracking-uri "
                       "and --sweep ID (or drop --log and use --out FILE)")
    from mlflow import MlflowClient  # ~3 s to import: only with --log
    from mlflow.exceptions import MlflowException

    try:
        client = MlflowClient(args.tracking_uri)
        if args.experiment:
            experiment = client.get_experiment_by_name(args.experiment)
            ids = [experiment.experiment_id] if experiment is not None else []
        else:
            ids = [e.experiment_id for e in client.search_experiments()]
        parents = client.search_runs(ids, f"tags.{Tag.SWEEP_PARENT} = '{args.sweep}'") if ids else []
    except MlflowException as err:
        raise CliError(f"--log: cannot read {args.tracking_uri}: {err}; check the URI and the server") from err
    where = f"{args.tracking_uri}" + (f" experiment {args.experiment!r}" if args.experiment else "")
    if not parents:
        raise CliError(f"--log: no parent run of sweep {args.sweep!r} (tag {Tag.SWEEP_PARENT}={args.sweep}) in "
                       f"{where}; --sweep takes the id lab-sweep printed (e.g. isoflop-2f15d30a)")
    if len(parents) > 1:
        experiments = sorted({r.info.experiment_id for r in parents})
        raise CliError(f"--log: {len(parents)} parent runs of sweep {args.sweep!r} in experiments {experiments}; "
                       "choose one with --experiment NAME")
    return parents[0].info.run_id


def law_dir(args: argparse.Namespace) -> str:
    """``fits/<command>`` (``fits/loss-<form>`` for loss laws, the form's symbols dropped: L(N) -> LN)."""
    form = getattr(args, "form", None)
    name = args.command if args.command != "loss" else f"loss-{re.sub(r'[^A-Za-z0-9]+', '', form)}"
    return f"{FITS_DIR}/{name}"


def log_law(args: argparse.Namespace, parent_run_id: str, payload: dict[str, Any], figures: Figures,
            say: Progress) -> list[str]:
    """Log the law's JSON and its figures onto the parent run; returns the artifact paths written."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    directory = law_dir(args)
    written = []
    try:
        client = MlflowClient(args.tracking_uri)
        text = json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n"
        client.log_text(parent_run_id, text, f"{directory}/{Artifact.LAW}")
        written.append(f"{directory}/{Artifact.LAW}")
        for name, draw in figures.items():
            # Self-contained (plotly.js inlined, as the dashboard's HTML export): opens without a network.
            client.log_text(parent_run_id, draw().to_html(include_plotlyjs=True, full_html=True),
                            f"{directory}/{name}.html")
            written.append(f"{directory}/{name}.html")
    except MlflowException as err:
        raise CliError(f"--log: writing onto run {parent_run_id} in {args.tracking_uri} failed after "
                       f"{written or 'nothing'}: {err}; check the server and rerun") from err
    say(f"logged {', '.join(written)} onto the parent run {parent_run_id} of sweep {args.sweep}")
    return written


# --- the figures of each law (analysis.plots draws them) -----------------------------------------------------

def _plots() -> Any:
    from analysis import plots  # plotly: imported when a figure is drawn, not when lab-fit starts

    return plots


def loss_figures(points: pl.DataFrame, fit: FitResult, holdout: pl.DataFrame | None = None,
                 holdout_above: float | None = None) -> Figures:
    x = fit.inputs[0] if len(fit.inputs) == 1 else "D"  # a one-input law is drawn against its input
    figures: Figures = {"loss": lambda: _plots().loss_law(points, fit, x=x),
                        "residuals": lambda: _plots().residuals(points, fit, x="C" if "C" in points.columns else "N")}
    if holdout is not None and holdout_above is not None:
        figures["holdout"] = lambda: _plots().holdout(holdout, holdout_above)
    return figures


def isoflop_figures(points: pl.DataFrame, result: IsoflopResult, rel_tol: float) -> Figures:
    return {"profiles": lambda: _plots().isoflop_profiles(points, result, rel_tol=rel_tol),
            "frontier": lambda: _plots().compute_frontier(result)}


def hparams_figures(result: HparamsResult) -> Figures:
    return {"laws": lambda: _plots().hparam_laws(result)}


def cbs_figures(local: pl.DataFrame, curve: CbsFit, plan: BatchWarmupPlan | None,
                total_tokens: float | None) -> Figures:
    return {"cbs": lambda: _plots().cbs(local, curve, plan, total_tokens=total_tokens)}
