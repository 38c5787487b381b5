"""The notebooks execute top to bottom (nbclient, a kernel of this venv's Python), on their fallback data and on
an MLflow store, and show fitted laws as rich tables with intervals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL = "lab-venv"
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28  # Hoffmann et al. 2022, approach 3


@pytest.fixture(autouse=True)
def venv_kernel(tmp_path, monkeypatch):
    """A kernelspec that runs ipykernel with this interpreter, found first on JUPYTER_PATH: a fresh clone needs
    no `ipykernel install`, and a user-wide `python3` kernel of another Python cannot be picked by mistake."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "scaling-lab venv", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("LAB_NOTEBOOK_BOOTSTRAP", "200")  # intervals still computed, in a third of the time
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("LAB_TRACKING_URI", raising=False)


def execute(name: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name=KERNEL,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()  # raises on any cell error
    return notebook


def outputs(notebook: nbformat.NotebookNode) -> tuple[str, list[str], int]:
    """(all printed text, every text/html output, number of plotly figures)."""
    text, html, figures = [], [], 0
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream":
                text.append(out["text"])
            data = out.get("data", {})
            html += [data["text/html"]] if "text/html" in data else []
            figures += "application/vnd.plotly.v1+json" in data
    return "".join(text), html, figures


def law_tables(html: list[str]) -> list[str]:
    return [h for h in html if "<th>95% interval</th>" in h]


def test_loss_laws_notebook_on_the_chinchilla_points():
    text, html, figures = outputs(execute("loss_laws.ipynb"))
    assert "Chinchilla points (Hoffmann et al. 2022): 245 points" in text
    assert "C = 1.3e+24 FLOPs: N* = " in text and "'mean_abs_rel_error'" in text
    tables = law_tables(html)
    assert len(tables) >= 3 and "<b>chinchilla</b>" in tables[0] and "200 bootstrap resamples" in tables[0]
    assert figures >= 5


def test_hparams_cbs_notebook_on_synthetic_data():
    text, html, figures = outputs(execute("hparams_cbs.ipynb"))
    assert "no store: synthetic data only" in text  # and the notebook asserts the Step Law exponents back
    assert "lab-train batch.schedule=stepwise" in text
    assert len(law_tables(html)) >= 4 and figures >= 3


def chinchilla_store(path: Path) -> str:
    """An MLflow store whose finished runs follow the Chinchilla law on three IsoFLOP budgets (0.2% noise),
    logged the way lab-train logs them (params N, B_tokens, optim.lr; metrics val/loss, tokens, flops)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    uri = f"sqlite:///{path}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("chinchilla", artifact_location=(path.parent / "art").as_uri())
    rng = np.random.default_rng(0)
    for C in (1e19, 1e20, 1e21):
        for N in np.geomspace(C ** 0.5 / 300, C ** 0.5 / 10, 5):
            D = C / (6 * N)
            loss = (E + A / N ** ALPHA + B / D ** BETA) * (1 + 0.002 * rng.normal())
            run = client.create_run(experiment, run_name=f"isoflop-C{C:.0e}-N{N:.2e}").info.run_id
            metrics = [Metric(key, value, 0, step) for step, frac in ((1, 0.5), (2, 1.0))
                       for key, value in (("tokens", D * frac), ("flops", C * frac),
                                          ("val/loss", loss * (1.05 if frac < 1 else 1.0)),
                                          ("noise/b_simple", 1e4 * frac))]
            client.log_batch(run, metrics=metrics, params=[Param("N", str(int(N))), Param("B_tokens", "524288"),
                                                           Param("optim.lr", "0.001")],
                             tags=[RunTag("sweep", "isoflop")])
            client.set_terminated(run)
    return uri


def test_loss_laws_notebook_on_a_store(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_TRACKING_URI", chinchilla_store(tmp_path / "mlflow.db"))
    text, html, _ = outputs(execute("loss_laws.ipynb"))
    assert "15 finished runs of sqlite:///" in text
    tables = law_tables(html)
    fitted = tables[0]
    assert "<b>chinchilla</b> — 15 points" in fitted
    # E within 0.1 of the law the runs follow, and the IsoFLOP law N* ∝ C^a with a = β/(α+β) ≈ 0.45
    e_row = fitted.split("<td>E</td><td>")[1]
    assert float(e_row.split("</td>")[0]) == pytest.approx(E, abs=0.1)
    iso = next(t for t in tables if "isoflop: N_opt" in t)
    a = float(iso.split("<td>exp</td><td>")[1].split("</td>")[0])
    assert a == pytest.approx(BETA / (ALPHA + BETA), abs=0.05)
