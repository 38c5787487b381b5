"""`lab-fit … --log`: the law's JSON and figures land on the sweep's parent run of a real store (a smoke sweep in
tmp_path, trained for real), and a --log that cannot know where to write fails before fitting, writing nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import polars as pl
import pytest
from mlflow import MlflowClient

from analysis import cli_log
from analysis.cli import main as lab_fit
from analysis.laws.cbs import fit_cbs_curve, local_cbs
from analysis.laws.hparams import fit_hparams
from analysis.laws.isoflop import fit_isoflop
from sweeps.cli import run_sweep
from tracking.record import Artifact, Tag

SWEEP = "logfit"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, MlflowClient, str]:
    """A smoke IsoFLOP sweep of 6 runs (2 budgets x 3 sizes): (uri, client, parent run id)."""
    work = tmp_path_factory.mktemp("logfit")
    uri = f"sqlite:///{work}/mlflow.db"
    cwd = os.getcwd()
    os.chdir(work)  # MLflow's default artifact root is ./mlruns
    try:
        summary = run_sweep(["experiment=smoke_sweep", "hydra.sweeper.design.k=3", f"hydra.sweeper.id={SWEEP}",
                             "trainer.progress_bar=false", f"tracking.uri={uri}", f"checkpoint_dir={work}/ckpt",
                             f"data.cache_dir={work}/corpus", f"hydra.sweep.dir={work}/multirun"])
    finally:
        os.chdir(cwd)
    assert summary.counts()["finished"] == 6, summary.table()
    return uri, MlflowClient(uri), summary.parent_run_id


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_log_puts_the_law_json_and_figures_on_the_sweep_parent(store, tmp_path):
    uri, client, parent = store
    out = tmp_path / "fit.json"
    assert lab_fit(["loss", "--tracking-uri", uri, "--sweep", SWEEP, "--form", "kaplan", "--bootstrap", "0",
                    "--out", str(out), "--log", "--quiet"]) == 0
    assert client.get_run(parent).data.tags[Tag.SWEEP_PARENT] == SWEEP
    law_dir = "fits/loss-kaplan"
    assert artifacts(client, parent, law_dir) == {f"{law_dir}/{Artifact.LAW}", f"{law_dir}/loss.html",
                                                  f"{law_dir}/residuals.html"}
    logged = Path(client.download_artifacts(parent, f"{law_dir}/{Artifact.LAW}", str(tmp_path)))
    assert json.loads(logged.read_text()) == json.loads(out.read_text())  # the same law as --out
    assert json.loads(logged.read_text())["form"] == "kaplan"
    page = Path(client.download_artifacts(parent, f"{law_dir}/loss.html", str(tmp_path))).read_text()
    assert "Loss against D: kaplan" in page and "plotly" in page  # self-contained: plotly.js inlined
    # the runs the law was fitted to are left alone
    children = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.{Tag.SWEEP} = '{SWEEP}'")
    assert len(children) == 6 and all("fits" not in artifacts(client, r.info.run_id) for r in children)

    # a second form goes beside the first; a refit of the same form replaces its files
    assert lab_fit(["loss", "--tracking-uri", uri, "--sweep", SWEEP, "--form", "L(N)", "--bootstrap", "0",
                    "--log", "--quiet"]) == 0
    assert {"fits/loss-kaplan", "fits/loss-LN"} <= artifacts(client, parent, "fits")


@pytest.mark.parametrize("args, message", [
    (["--sweep", "no-such-sweep"], f"no parent run of sweep 'no-such-sweep' (tag {Tag.SWEEP_PARENT}=no-such-sweep)"),
    ([], "give --tracking-uri and --sweep ID"),
    (["--sweep", SWEEP, "--experiment", "other"], "no parent run of sweep 'logfit'"),
])
def test_log_that_cannot_find_the_parent_fails_before_fitting(store, tmp_path, capsys, args, message):
    uri, client, parent = store
    before = artifacts(client, parent)
    out = tmp_path / "fit.json"
    status = lab_fit(["loss", "--tracking-uri", uri, *args, "--form", "kaplan", "--bootstrap", "0", "--out",
                      str(out), "--log", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1].startswith("error: --log") and message in err[-1], err
    assert not out.exists() and artifacts(client, parent) == before


def test_log_needs_a_store(tmp_path, capsys):
    table = tmp_path / "runs.csv"
    pl.DataFrame({"N": [1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7], "D": [1e9] * 6, "loss": [3.0, 2.9, 2.8, 2.75, 2.7, 2.68]}
                 ).write_csv(table)
    assert lab_fit(["loss", "--input", str(table), "--form", "L(N)", "--bootstrap", "0", "--log", "--quiet"]) == 2
    assert "give --tracking-uri and --sweep ID" in capsys.readouterr().err


def _drawn(figures: cli_log.Figures, names: set[str]) -> None:
    assert set(figures) == names
    for draw in figures.values():
        fig = draw()
        assert isinstance(fig, go.Figure) and len(fig.data) > 0


def test_every_law_has_figures_to_log():
    # synthetic points of each law (the smoke sweep has too few budgets for IsoFLOP and no lr x B grid)
    rows = []
    for C in (1e15, 1e16, 1e17):
        n_star = 0.1 * C ** 0.5
        for u in np.linspace(-1.2, 1.2, 5):
            N = n_star * np.exp(u)
            rows.append({"N": N, "D": C / (6 * N), "C": C, "loss": 2.0 + 40 * C ** -0.08 + 0.05 * u ** 2})
    iso = pl.DataFrame(rows)
    _drawn(cli_log.isoflop_figures(iso, fit_isoflop(iso, bootstrap=10), 0.05), {"profiles", "frontier"})

    rows = []
    for i, (N, D) in enumerate([(1e6, 2e8), (3e6, 4e8), (9e6, 8e8), (1e6, 1.6e9)]):
        for lr in (1e-3, 3e-3, 1e-2):
            for B in (2.0 ** 15, 2.0 ** 16, 2.0 ** 17):
                rows.append({"N": N, "D": D, "lr": lr, "B": B,
                             "loss": 3 + np.log(lr / 3e-3 / (1 + i)) ** 2 + np.log(B / 2 ** 16) ** 2 / 4})
    _drawn(cli_log.hparams_figures(fit_hparams(pl.DataFrame(rows), method="convex", bootstrap=10)), {"laws"})

    cbs = 2.0 ** 20 * -np.expm1(-(np.geomspace(1e7, 2e10, 8) / 2e9) ** 0.7)
    branches = pl.DataFrame([{"checkpoint_tokens": D, "B": B, "loss": 3.0 * (1 + 0.01 * B / c)}
                             for D, c in zip(np.geomspace(1e7, 2e10, 8), cbs) for B in 2.0 ** np.arange(12, 22)])
    local = local_cbs(branches, tolerance=0.01)
    _drawn(cli_log.cbs_figures(local, fit_cbs_curve(local, bootstrap=10), None, None), {"cbs"})
